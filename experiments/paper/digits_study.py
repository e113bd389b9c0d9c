"""The real-data study that fits a 2-core CPU: every method on digits, 4 noise settings.

Methods (same model, data split, batch, schedule and budget in epochs; only the
method changes, except official MLC's lr ÷ 64 for its batch-sum loss): CE, MW-Net
(exact meta gradient), MW-Net + FaMUS, L2R ± FaMUS, MLC ± FaMUS (the official step),
our `mlc_transition` — all through `famus_jax.train.train_and_evaluate` with
configs/digits.py — and Algorithm 2 (pseudo-clean meta sets from GMM
co-training, MW-Net + FaMUS, semi-supervised term; no clean labels at all)
through the same entry point with configs/digits_alg2.py (`algorithm='alg2'`).

Noise: 20/40/60 % symmetric, and 40 % asymmetric. The data module defines
class-dependent asymmetric noise only for CIFAR; on digits we use its
pair-flip noise (class i → i+1 with probability 0.4), the usual asymmetric
variant for data sets without a semantic class map.

For each (method, setting), ≥ 3 seeds (the seed draws the noise, the meta set,
the initialisation and the batch order): mean ± std of the final clean test
accuracy and of the run's wall time (the whole `train_and_evaluate` call:
data, compilation — mostly served by the persistent XLA cache after the first
run of a method —, training, evaluation, checkpoint). Alg. 2 trains two
networks (and an SSL step), so it costs more than twice a single run.

  python -m experiments.paper.digits_study --quick      # 20 epochs per run; < 30 min on 2 cores
  python -m experiments.paper.digits_study              # 40 epochs (configs/digits.py), 3 seeds

Writes experiments/results/digits_study[_quick].{json,md,png}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from experiments import common
from experiments import digits_lab as lab
from famus_jax import train
from famus_jax.training import config as config_lib

ROOT = common.REPO_ROOT

# Official MLC trains on the batch *sum* of its corrected CE: the base rate is divided
# by the batch size (64) so that its step per example is CE's (lr 0.05 on the mean).
MLC_LR = {'optim.lr': 0.05 / 64}
METHODS = {
    'ce': ('CE', {'meta.method': 'ce', 'meta.sampler': 'all'}),
    'mwnet': ('MW-Net (exact)', {'meta.method': 'mwnet', 'meta.sampler': 'all'}),
    'mwnet_famus': ('MW-Net + FaMUS', {'meta.method': 'mwnet', 'meta.sampler': 'famus'}),
    'l2r': ('L2R (exact)', {'meta.method': 'l2r', 'meta.sampler': 'all'}),
    'l2r_famus': ('L2R + FaMUS', {'meta.method': 'l2r', 'meta.sampler': 'famus'}),
    'mlc': ('MLC (exact)', {'meta.method': 'mlc', 'meta.sampler': 'all', **MLC_LR}),
    'mlc_famus': ('MLC + FaMUS', {'meta.method': 'mlc', 'meta.sampler': 'famus', **MLC_LR}),
    'mlc_transition': ('MLC transition (ours)', {'meta.method': 'mlc_transition',
                                                 'meta.sampler': 'all'}),
    'alg2': ('Alg. 2 (pseudo-clean, FaMUS)', {}),
}
SETTINGS = {
    'sym20': ('symmetric', 0.2, 'sym. 20 %'),
    'sym40': ('symmetric', 0.4, 'sym. 40 %'),
    'sym60': ('symmetric', 0.6, 'sym. 60 %'),
    'asym40': ('pairflip', 0.4, 'asym. 40 % (pair-flip)'),
}


def load_config_file(name: str):
  path = os.path.join(ROOT, 'configs', name)
  spec = importlib.util.spec_from_file_location('famus_study_' + name[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def parse_value(text: str):
  try:
    value = json.loads(text)
  except json.JSONDecodeError:
    return text
  return tuple(value) if isinstance(value, list) else value


def make_config(method: str, setting: str, seed: int, epochs: int, smoke: bool,
                overrides: dict):
  """The config of one run: configs/digits.py (or digits_alg2.py) at `epochs`."""
  noise_type, noise_rate, _ = SETTINGS[setting]
  if method == 'alg2':
    c = load_config_file('digits_alg2.py')
    full = c.optim.num_epochs  # rescale the Alg. 2 schedule to `epochs`
    scale = epochs / full
    c.alg2.warmup_epochs = max(1, int(round(c.alg2.warmup_epochs * scale)))
    c.alg2.ssl.rampup_epochs = max(1.0, float(c.alg2.ssl.rampup_epochs) * scale)
    c.alg2.eval_every_epochs = 0
    c.alg2.checkpoint_every_epochs = 0
    c.optim.boundaries = tuple(sorted({max(1, min(epochs - 1, int(round(b * scale))))
                                       for b in c.optim.boundaries})) if epochs > 1 else ()
  else:
    c = load_config_file('digits.py')
    for k, v in METHODS[method][1].items():
      config_lib.set_field(c, k, v)
    full = c.optim.num_epochs
    c.optim.boundaries = tuple(sorted({max(1, min(epochs - 1, int(round(b * epochs / full))))
                                       for b in c.optim.boundaries})) if epochs > 1 else ()
    c.train.eval_every = 0
    c.train.checkpoint_every = 0
    c.train.log_every = 19
  c.optim.unit, c.optim.num_steps, c.optim.num_epochs = 'epoch', 0, int(epochs)
  if smoke:
    c.model.kwargs.width, c.model.kwargs.depth = 4, 1
    c.data.batch_size = 128
  c.seed = int(seed)
  c.data.noise_type, c.data.noise_rate = noise_type, float(noise_rate)
  c.train.progress = False
  for k, v in overrides.items():
    if method == 'alg2' or not k.startswith('alg2.'):
      config_lib.set_field(c, k, v)
  return c


def run_one(method: str, config, collect=None, workdir: str | None = None) -> dict:
  """One `train_and_evaluate` call; its workdir is removed once it is read.

  `collect(workdir, summary) -> dict` adds what it reads from the workdir
  (e.g. metrics.jsonl) to the result, before the workdir goes. `workdir`:
  default a temporary one, removed whatever happens; a given one is kept when
  the run fails or is interrupted, so the same call resumes it from its last
  checkpoint.
  """
  keep_on_error = workdir is not None
  workdir = workdir or tempfile.mkdtemp(prefix=f'study_{method}_')
  extra = {}
  try:
    start = time.perf_counter()
    summary = train.train_and_evaluate(config, workdir)  # config.algorithm picks
    wall = time.perf_counter() - start
    if collect is not None:
      extra = collect(workdir, summary)
  except BaseException:
    if not keep_on_error:
      shutil.rmtree(workdir, ignore_errors=True)
    raise
  shutil.rmtree(workdir, ignore_errors=True)
  final = summary.get('final') or {}
  rate = summary.get('steps_per_s')
  return {'final_test_accuracy': float(summary['final_test_accuracy']),
          'ms_per_iteration': 1e3 / rate if rate else None,
          'best_test_accuracy': float(summary.get('best_test_accuracy') or float('nan')),
          # at the evaluation with the best clean meta-set accuracy (None without one)
          'selected_test_accuracy': (summary.get('selected_by_meta_set') or {}).get(
              'test_accuracy'),
          'wall_s': wall, 'num_steps': int(summary.get('num_steps') or 0),
          'first_step_s': summary.get('first_step_s', summary.get('first_epoch_s')),
          'train_weight_auc': final.get('train_weight_auc'),
          'realised_noise_rate': (summary.get('data') or {}).get('realised_noise_rate'),
          **extra}


def aggregate(runs: list[dict], methods, settings) -> dict:
  table = {}
  for m in methods:
    for s in settings:
      rs = [r for r in runs if r['method'] == m and r['setting'] == s]
      if not rs:
        continue
      acc = np.array([r['final_test_accuracy'] for r in rs])
      wall = np.array([r['wall_s'] for r in rs])
      ms = [r['ms_per_iteration'] for r in rs if r.get('ms_per_iteration')]
      table.setdefault(m, {})[s] = {
          'ms_per_iteration': float(np.median(ms)) if ms else None,
          'accuracy_mean': float(acc.mean()), 'accuracy_std': float(acc.std(ddof=1))
          if len(acc) > 1 else 0.0, 'wall_s_mean': float(wall.mean()),
          'wall_s_std': float(wall.std(ddof=1)) if len(wall) > 1 else 0.0,
          'seeds': [r['seed'] for r in rs], 'accuracies': acc.tolist()}
  return table


def markdown(payload) -> str:
  table, methods, settings = payload['table'], payload['methods'], payload['settings']
  head = ('| method | ' + ' | '.join(SETTINGS[s][2] for s in settings)
          + ' | wall time per run (s) | ms per iteration |')
  lines = [head, '|' + '---|' * (len(settings) + 3)]
  for m in methods:
    if m not in table:
      continue
    cells = []
    for s in settings:
      c = table[m].get(s)
      cells.append(f"{100 * c['accuracy_mean']:.1f} ± {100 * c['accuracy_std']:.1f}"
                   if c else '—')
    walls = [table[m][s]['wall_s_mean'] for s in settings if s in table[m]]
    wall_std = [table[m][s]['wall_s_std'] for s in settings if s in table[m]]
    ms = [table[m][s]['ms_per_iteration'] for s in settings
          if s in table[m] and table[m][s]['ms_per_iteration']]
    lines.append(f'| {METHODS[m][0]} | ' + ' | '.join(cells)
                 + f' | {np.mean(walls):.1f} ± {np.mean(wall_std):.1f} | '
                 + (f'{np.median(ms):.1f}' if ms else '—') + ' |')
  m = payload['machine']
  lines.append('')
  lines.append(f"Clean test accuracy (%), mean ± std over seeds {payload['seeds']}, "
               f"{payload['epochs']} epochs per run; digits (1,247 noisy training images "
               f"+ 100 clean meta images; Alg. 2: 1,347 noisy, no clean meta set), 450 "
               f"test images. Wall time: one `train_and_evaluate` call (data, compilation "
               f"from a warm persistent cache, training, evaluation), mean over the "
               f"settings of the mean ± std over seeds; ms per iteration: the training "
               f"loop's steady-state rate (median; Alg. 2's loop does not report it). "
               f"{m['device_kind']} ({m['cpu_count']} cores), jax {m['jax_version']}.")
  return '\n'.join(lines) + '\n'


def plot(path, payload):
  matplotlib.use('Agg')
  table, settings = payload['table'], payload['settings']
  fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 4),
                           squeeze=False, sharey=False)
  markers = 'osD^v<>P*X'
  for j, s in enumerate(settings):
    ax = axes[0, j]
    for i, m in enumerate(payload['methods']):
      c = table.get(m, {}).get(s)
      if not c:
        continue
      ax.errorbar(c['wall_s_mean'], 100 * c['accuracy_mean'], xerr=c['wall_s_std'],
                  yerr=100 * c['accuracy_std'], fmt=markers[i % len(markers)],
                  color=f'C{i}', capsize=2, label=METHODS[m][0])
    ax.set(xlabel='wall time per run (s)', title=SETTINGS[s][2])
    if j == 0:
      ax.set_ylabel('clean test accuracy (%)')
    ax.grid(alpha=0.3)
  axes[0, -1].legend(fontsize=7, loc='lower right')
  mach = payload['machine']
  fig.suptitle(f"digits: accuracy vs time, {payload['epochs']} epochs, seeds "
               f"{payload['seeds']} ({mach['device_kind']}, {mach['cpu_count']} cores)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  """The study (see the module docstring); the run loggers quiet meanwhile."""
  with common.quiet_logs():
    return _main(argv)


def _main(argv):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--quick', action='store_true', help='20 epochs per run (CPU)')
  parser.add_argument('--smoke', action='store_true',
                      help='1 epoch, tiny model, CE / MW-Net + FaMUS / Alg. 2 (tests)')
  parser.add_argument('--epochs', type=int, default=None,
                      help='epochs per run (full 40, quick 20, smoke 1; Alg. 2 ≥ 2)')
  parser.add_argument('--methods', default=None, help=f'comma-separated: {",".join(METHODS)}')
  parser.add_argument('--settings', default=None, help=f'comma-separated: {",".join(SETTINGS)}')
  parser.add_argument('--seeds', default=None, help='comma-separated (default 0,1,2)')
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                      help='config override for every run (JSON values)')
  parser.add_argument('--no-warmup-run', dest='warmup_run', action='store_false',
                      help='skip the discarded first run of each method (it fills the '
                      'compilation cache so that every timed run finds it warm)')
  parser.add_argument('--results-dir', default=None)
  parser.add_argument('--xla-cache', default=None)
  args = parser.parse_args(argv)
  if args.smoke:
    args.warmup_run = False
  epochs = args.epochs or (1 if args.smoke else 20 if args.quick else 40)
  methods = (args.methods or ('ce,mwnet_famus,alg2' if args.smoke else ','.join(METHODS))
             ).split(',')
  settings = (args.settings or ('sym40' if args.smoke else ','.join(SETTINGS))).split(',')
  seeds = [int(s) for s in (args.seeds or ('0' if args.smoke else '0,1,2')).split(',')]
  for name, given, known in (('methods', methods, METHODS),
                             ('settings', settings, SETTINGS)):
    bad = set(given) - set(known)
    if bad:
      parser.error(f'unknown {name} {sorted(bad)}; known: {", ".join(known)}')
  overrides = dict(item.split('=', 1) for item in args.set)
  overrides = {k: parse_value(v) for k, v in overrides.items()}
  cache = lab.enable_compilation_cache(args.xla_cache)

  start = time.perf_counter()
  runs = []
  for method in methods:
    run_epochs = max(epochs, 2) if method == 'alg2' else epochs
    if args.warmup_run and cache is not None:
      t0 = time.perf_counter()
      run_one(method, make_config(method, settings[0], seeds[0], run_epochs, args.smoke,
                                  overrides))
      print(f'{method:<12s} warm-up run (discarded): {time.perf_counter() - t0:.1f} s',
            file=sys.stderr, flush=True)
    for setting in settings:
      for seed in seeds:
        config = make_config(method, setting, seed, run_epochs, args.smoke, overrides)
        row = {'method': method, 'setting': setting, 'seed': seed, 'epochs': run_epochs,
               **run_one(method, config)}
        runs.append(row)
        print(f"{method:<12s} {setting:<7s} seed {seed}: accuracy "
              f"{row['final_test_accuracy']:.4f}  wall {row['wall_s']:.1f} s  "
              f"(total {time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)

  payload = {
      'script': 'experiments.paper.digits_study', 'quick': args.quick, 'smoke': args.smoke,
      'epochs': epochs, 'methods': methods, 'settings': settings, 'seeds': seeds,
      'setting_defs': {s: SETTINGS[s] for s in settings},
      'method_labels': {m: METHODS[m][0] for m in methods},
      'overrides': {k: v for k, v in overrides.items()}, 'xla_cache': cache is not None,
      'warmup_run': bool(args.warmup_run and cache is not None),
      'runs': runs, 'table': aggregate(runs, methods, settings),
      'total_wall_s': time.perf_counter() - start, 'machine': common.machine(),
  }
  results_dir = args.results_dir or common.RESULTS_DIR
  stem = f'digits_study{lab.suffix(args)}'
  path = common.write_json(stem + '.json', payload, results_dir)
  md = markdown(payload)
  with open(os.path.join(results_dir, stem + '.md'), 'w') as f:
    f.write(md)
  plot(path[:-5] + '.png', payload)
  print(md)
  print(f"total {payload['total_wall_s']:.0f} s; wrote {path}, {stem}.md, {stem}.png")
  return payload


if __name__ == '__main__':
  common.run_study(main)
