"""Noisy-label study on real 28×28 images: Fashion-MNIST, every method, 3 noise settings.

Rows (same model, batch, optimiser, learning rate, schedule shape and number
of iterations; only the method changes, all fixed before the runs):
  CE on the noisy labels; CE on the true labels of the same images (upper
  bound); CE on the 1,000 clean meta images only (`data.train_split='meta'`,
  the baseline every meta method must beat; same number of iterations, so it
  cycles over its 10 batches); MW-Net (exact meta gradient); MW-Net + FaMUS;
  L2R; MLC — through `famus_jax.train.train_and_evaluate` with
  configs/fashion_mnist.py — and Algorithm 2 (no clean labels: all training
  images noisy, pseudo-clean meta sets from GMM co-training, MW-Net + FaMUS,
  semi-supervised term) through `famus_jax.train.train_and_evaluate` with
  configs/fashion_mnist_alg2.py.
Columns: 40 % and 60 % symmetric, 40 % asymmetric (the Fashion-MNIST class
map: T-shirt/top↔shirt, pullover→coat, sandal→sneaker, sneaker→ankle boot;
half the classes flip, so ~20 % of the labels are wrong).

Sized for a 2-core CPU: a per-class subset of the 59,000 noisy training
images (`data.train_per_class`, drawn with the seed after the meta draw; the
meta set and the 10,000 test images are whole) and a few epochs of it, lr ÷10
at 90 % and 95 % of the run. Alg. 2 has no meta set: it draws 100 more noisy
images per class in their place (e.g. 5,100 instead of 5,000 + 1,000 clean).

  python -m experiments.paper.fashion_mnist_study --quick   # 500/class × 4 epochs, 2 seeds
  python -m experiments.paper.fashion_mnist_study           # 2000/class × 3 epochs, 2 seeds
  python -m experiments.paper.fashion_mnist_study --smoke --set data.data_dir='"DIR"'

Per (method, setting): mean ± std over seeds of the final clean test accuracy,
steady-state ms per iteration (Alg. 2: per co-training iteration of both
networks, its GMM passes included) and wall time of the whole call (data,
compilation from a warm persistent cache, training, evaluation, checkpoint).
Also the mean MW-Net weight of clean- and of noisy-labelled training examples
over training (relative to uniform), for the methods that weight examples.
Writes experiments/results/fashion_mnist_study[_quick].{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from experiments import common
from experiments import digits_lab as lab
from experiments.paper import digits_study as study
from famus_jax.alg2 import analysis
from famus_jax.training import config as config_lib
from famus_jax.training import metrics as metrics_lib

# The exact meta gradient over every layer (FaMUS's candidates are every layer too).
EXACT = {'meta.sampler': 'all', 'meta.candidate_layers': 'all'}
METHODS = {
    'ce': ('CE (noisy labels)', {'meta.method': 'ce', 'meta.sampler': 'all'}),
    'ce_true': ('CE (true labels, upper bound)',
                {'meta.method': 'ce', 'meta.sampler': 'all', 'data.noise_type': 'none'}),
    'ce_meta': ('CE (1,000 clean meta images only)',
                {'meta.method': 'ce', 'meta.sampler': 'all', 'data.train_split': 'meta'}),
    'mwnet': ('MW-Net (exact)', {'meta.method': 'mwnet', **EXACT}),
    'mwnet_famus': ('MW-Net + FaMUS', {'meta.method': 'mwnet', 'meta.sampler': 'famus'}),
    'l2r': ('L2R (exact)', {'meta.method': 'l2r', **EXACT}),
    # Official MLC's loss is a batch sum: lr ÷ batch (100) for CE's step per example.
    'mlc': ('MLC (exact)', {'meta.method': 'mlc', **EXACT,
                            'optim.lr': 0.05 / 100}),
    'mlc_transition': ('MLC transition (ours)', {'meta.method': 'mlc_transition', **EXACT}),
    'alg2': ('Alg. 2 (pseudo-clean, FaMUS; no clean labels)', {}),
}
SETTINGS = {
    'sym40': ('symmetric', 0.4, 'sym. 40 %'),
    'sym60': ('symmetric', 0.6, 'sym. 60 %'),
    'asym40': ('asymmetric', 0.4, 'asym. 40 %'),
}
# The configs of the single-network rows and of Alg. 2.
CONFIG_FILES = ('fashion_mnist.py', 'fashion_mnist_alg2.py')
# (train images per class, epochs, seeds) of each mode.
MODES = {'full': (2000, 3, (0, 1)), 'quick': (500, 4, (0, 1)), 'smoke': (20, 1, (0,))}
# Methods whose per-example weights are meta-learned (the weights panel); MLC
# corrects labels instead, its logged weights are constant.
WEIGHTED = ('mwnet', 'mwnet_famus', 'l2r')


def _epoch_schedule(c, epochs: float) -> None:
  """Run length `epochs`, lr ÷10 at 90 % and 95 % of it."""
  c.optim.unit, c.optim.num_steps, c.optim.num_epochs = 'epoch', 0, epochs
  c.optim.boundaries = (0.9 * epochs, 0.95 * epochs)


def make_config(method: str, setting: str, seed: int, per_class: int, epochs: int,
                smoke: bool, overrides: dict, config_files=CONFIG_FILES):
  """One run's config: `config_files` (configs/fashion_mnist[_alg2].py), the
  setting, the budget (Alg. 2's warm-up and ramp-up scaled from the config's
  run length to `epochs`)."""
  noise_type, noise_rate, _ = SETTINGS[setting]
  c = study.load_config_file(config_files[1] if method == 'alg2' else config_files[0])
  c.seed = int(seed)
  c.data.noise_type, c.data.noise_rate = noise_type, float(noise_rate)
  c.data.train_per_class = int(per_class)
  c.train.progress = False
  if method == 'alg2':
    # no clean meta set: the images that are the others' meta set are noisy
    # training images here (as in the paper, all of the training set)
    others = study.load_config_file(config_files[0])
    c.data.train_per_class = int(per_class) + int(others.data.meta_per_class)
    epochs = max(int(epochs), 2)
    full = c.optim.num_epochs  # configs/fashion_mnist_alg2.py: 1 warm-up epoch of 4
    c.alg2.warmup_epochs = max(1, int(round(c.alg2.warmup_epochs * epochs / full)))
    c.alg2.ssl.rampup_epochs = max(1.0, float(c.alg2.ssl.rampup_epochs) * epochs / full)
    c.alg2.eval_every_epochs = c.alg2.checkpoint_every_epochs = 0
    _epoch_schedule(c, epochs)
  else:
    for k, v in METHODS[method][1].items():
      config_lib.set_field(c, k, v)
    _epoch_schedule(c, epochs)
    steps_per_epoch = 10 * int(per_class) // int(c.data.batch_size)
    if c.data.train_split == 'meta':  # as many iterations as the others
      steps = int(epochs * steps_per_epoch)
      c.optim.unit, c.optim.num_epochs, c.optim.num_steps = 'step', 0, steps
      c.optim.boundaries = tuple(sorted({b for b in (int(0.9 * steps), int(0.95 * steps))
                                         if 0 < b < steps}))
    c.train.eval_every = c.train.checkpoint_every = 0
    c.train.log_every = max(1, int(epochs * steps_per_epoch) // 20)
  if smoke:
    c.model.kwargs.width = 4
  apply_overrides(c, method, overrides)
  return c


def apply_overrides(c, method: str, overrides: dict) -> None:
  """The command line's `--set` fields (`alg2.*` only on Alg. 2's config)."""
  for k, v in overrides.items():
    if method == 'alg2' or not k.startswith('alg2.'):
      config_lib.set_field(c, k, v)


def collect(workdir: str, summary: dict) -> dict:
  """Weights over training (metrics.jsonl) or Alg. 2's epoch times."""
  if summary.get('algorithm') == 'alg2':
    rows = analysis.EpochLog.read(workdir)
    warm = int(summary.get('warmup_epochs') or 0)
    per_step = [r['epoch_time_s'] / summary['steps_per_epoch'] for r in rows
                if r.get('epoch', 0) >= warm and 'epoch_time_s' in r]
    return {'alg2_ms_per_iteration': 1e3 * float(np.median(per_step)) if per_step else None}
  rows = metrics_lib.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  keep = [r for r in rows if 'weight_clean' in r and 'weight_noisy' in r]
  out = {'program_counts': summary.get('program_counts') or {}}
  if keep:
    out['weights_over_training'] = {
        'step': [int(r['step']) for r in keep],
        'clean': [float(r['weight_clean']) for r in keep],
        'noisy': [float(r['weight_noisy']) for r in keep]}
  return out


def markdown(payload) -> str:
  table, settings = payload['table'], payload['settings']
  lines = ['| method | ' + ' | '.join(SETTINGS[s][2] for s in settings)
           + ' | ms / iteration | wall time per run (s) |',
           '|' + '---|' * (len(settings) + 3)]
  for m in payload['methods']:
    if m not in table:
      continue
    cells = [f"{100 * c['accuracy_mean']:.1f} ± {100 * c['accuracy_std']:.1f}"
             if (c := table[m].get(s)) else '—' for s in settings]
    ms = [table[m][s]['ms_per_iteration'] for s in settings
          if s in table[m] and table[m][s]['ms_per_iteration']]
    walls = [table[m][s]['wall_s_mean'] for s in settings if s in table[m]]
    lines.append(f'| {METHODS[m][0]} | ' + ' | '.join(cells)
                 + f" | {f'{np.median(ms):.0f}' if ms else '—'} | {np.mean(walls):.0f} |")
  mach, b = payload['machine'], payload['budget']
  lines += ['', (
      f"Clean test accuracy (%) on the 10,000 Fashion-MNIST test images, mean ± std over "
      f"seeds {payload['seeds']}. Training: {b['train_per_class']} images per class "
      f"({10 * b['train_per_class']:,}) with noisy labels, {b['epochs']} epochs × "
      f"{b['steps_per_epoch']} iterations of {b['batch_size']}, lr {b['lr']} ÷10 at 90 % "
      f"and 95 % of the run, the same for every method; 1,000 clean meta images (100 per "
      f"class; Alg. 2: noisy and in its training set). Model `fashion_resnet` (width "
      f"{b['width']}). ms / iteration: steady-state training rate, median over runs "
      f"(Alg. 2: both networks and the GMM passes, per iteration); wall time: one "
      f"`train_and_evaluate` call, mean over runs. {mach['device_kind']} "
      f"({mach['cpu_count']} cores), jax {mach['jax_version']}; "
      + (f"runs of a later call replaced the same (method, setting, seed) of an earlier "
         f"one (`--merge`); the runs' wall times add up to "
         f"{sum(r['wall_s'] for r in payload['runs']) / 60:.0f} min."
         if payload.get('merged') else
         f"total {payload['total_wall_s'] / 60:.0f} min wall, "
         f"{payload['cpu_s_total'] / 60:.0f} min CPU time of this process.")
      + ('' if payload['complete'] else
         f" **Incomplete: {len(payload['runs'])} runs so far.**"))]
  return '\n'.join(lines) + '\n'


def plot(path, payload):
  matplotlib.use('Agg')
  table, settings, runs = payload['table'], payload['settings'], payload['runs']
  fig, axes = plt.subplots(1, len(settings) + 1, figsize=(4.3 * (len(settings) + 1), 4.6),
                           squeeze=False)
  for j, s in enumerate(settings):
    ax = axes[0, j]
    for i, m in enumerate(payload['methods']):
      c = table.get(m, {}).get(s)
      if c and c['ms_per_iteration']:
        ax.errorbar(c['ms_per_iteration'], 100 * c['accuracy_mean'],
                    yerr=100 * c['accuracy_std'], fmt='osD^v<>P*X'[i % 10], color=f'C{i}',
                    capsize=2, label=METHODS[m][0])
    ax.set(xlabel='ms per iteration (log scale)', title=SETTINGS[s][2])
    ax.set_xscale('log')
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(alpha=0.3)
  axes[0, 0].set_ylabel('clean test accuracy (%)')
  handles, labels = axes[0, 0].get_legend_handles_labels()
  fig.legend(handles, labels, loc='lower center', ncol=5, fontsize=7, frameon=False)
  ax = axes[0, -1]
  s0 = settings[0]
  for i, m in enumerate(payload['methods']):
    series = [r['weights_over_training'] for r in runs if r['method'] == m in WEIGHTED
              and r['setting'] == s0 and r.get('weights_over_training')]
    if series:
      plot_weights(ax, series, f'C{i}', METHODS[m][0])
  ax.set(xlabel='iteration', ylabel='mean weight (× uniform)',
         title=f'meta-weights over training, {SETTINGS[s0][2]}')
  ax.grid(alpha=0.3)
  if ax.lines:
    ax.legend(fontsize=6)
  common.save_figure(fig, path, f"Fashion-MNIST: accuracy vs cost, "
                     f"{payload['budget']['train_per_class']} images/class × "
                     f"{payload['epochs']} epochs, seeds {payload['seeds']}",
                     payload['machine'], rect=(0, 0.1, 1, 1))


def plot_weights(ax, series: list[dict], color: str, label: str, per: int = 1) -> None:
  """Mean over runs of the clean- and of the noisy-label meta-weights
  (`weights_over_training`), against iteration / `per`."""
  n = min(len(w['step']) for w in series)
  x = np.asarray(series[0]['step'][:n]) / per
  for kind, style in (('clean', '-'), ('noisy', '--')):
    ax.plot(x, np.mean([w[kind][:n] for w in series], 0), style, color=color,
            label=f'{label}: {kind} labels')


def replot(json_path: str) -> str:
  """Redraws the figure of a results JSON; returns the PNG path."""
  with open(json_path) as f:
    payload = json.load(f)
  plot(json_path[:-5] + '.png', payload)
  return json_path[:-5] + '.png'


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--quick', action='store_true', help='500 images/class (CPU, ~20 min)')
  parser.add_argument('--smoke', action='store_true',
                      help='20 images/class, 1 epoch, tiny model (tests)')
  parser.add_argument('--per-class', type=int, default=None,
                      help='noisy training images per class (full 2000, quick 500)')
  parser.add_argument('--epochs', type=int, default=None, help='epochs per run (Alg. 2 ≥ 2)')
  parser.add_argument('--methods', default=None, help=f'comma-separated: {",".join(METHODS)}')
  parser.add_argument('--settings', default=None, help=f'comma-separated: {",".join(SETTINGS)}')
  parser.add_argument('--seeds', default=None, help='comma-separated (default 0,1)')
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                      help='config override for every run (JSON values)')
  parser.add_argument('--results-dir', default=None)
  parser.add_argument('--merge', action='store_true',
                      help='keep the runs of the existing results JSON that this call '
                           'does not repeat (same method, setting and seed)')
  parser.add_argument('--xla-cache', default=None)
  args = parser.parse_args(argv)
  mode = 'smoke' if args.smoke else 'quick' if args.quick else 'full'
  per_class, epochs, seeds = MODES[mode]
  args.per_class = args.per_class or per_class
  args.epochs = args.epochs or epochs
  args.methods = (args.methods or ('ce,ce_meta,mwnet_famus,alg2' if args.smoke
                                   else ','.join(METHODS))).split(',')
  args.settings = (args.settings or ('sym40' if args.smoke else ','.join(SETTINGS))
                   ).split(',')
  args.seeds = [int(s) for s in args.seeds.split(',')] if args.seeds else list(seeds)
  for name, given, known in (('methods', args.methods, METHODS),
                             ('settings', args.settings, SETTINGS)):
    bad = set(given) - set(known)
    if bad:
      parser.error(f'unknown {name} {sorted(bad)}; known: {", ".join(known)}')
  args.overrides = {k: study.parse_value(v) for k, v in
                    (item.split('=', 1) for item in args.set)}
  return args


def main(argv=None):
  """The study (see the module docstring); the run loggers quiet meanwhile."""
  with common.quiet_logs():
    return _main(argv)


def _main(argv):
  args = _parse(argv)
  cache = lab.enable_compilation_cache(args.xla_cache)
  build = lambda m, s, seed, per_class: make_config(
      m, s, seed, per_class, args.epochs, args.smoke, args.overrides)
  start = time.perf_counter()
  runs = previous_runs(args) if args.merge else []
  for method in args.methods if cache is not None and not args.smoke else ():
    # Fills the compilation cache on a 2-batch run, so timed runs find it warm.
    t0 = time.perf_counter()
    study.run_one(method, build(method, args.settings[0], args.seeds[0], 20))
    print(f'{method:<12s} compile run (discarded): {time.perf_counter() - t0:.1f} s',
          file=sys.stderr, flush=True)
  # Setting by setting (the first one complete first); results rewritten after
  # every run, so an interrupted study keeps what it finished.
  for setting in args.settings:
    for seed in args.seeds:
      for method in args.methods:
        config = build(method, setting, seed, args.per_class)
        cpu0 = time.process_time()
        row = {'method': method, 'setting': setting, 'seed': seed,
               **study.run_one(method, config, collect)}
        row['cpu_s'] = time.process_time() - cpu0  # all threads of this process
        if row.get('alg2_ms_per_iteration'):
          row['ms_per_iteration'] = row['alg2_ms_per_iteration']
        runs = common.replace_run(runs, row)
        print(f"{method:<12s} {setting:<7s} seed {seed}: accuracy "
              f"{row['final_test_accuracy']:.4f}  wall {row['wall_s']:.1f} s  "
              f"cpu {row['cpu_s']:.1f} s  ms/it {row.get('ms_per_iteration') or 0:.0f}  "
              f"(total {time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
        payload = write_results(args, runs, start, cache, complete=False)
  payload = write_results(args, runs, start, cache, complete=True)
  print(markdown(payload))
  print(f"total {payload['total_wall_s']:.0f} s; wrote {payload['stem']}.{{json,md,png}} "
        f"in {args.results_dir or common.RESULTS_DIR}")
  return payload


def previous_runs(args) -> list[dict]:
  """The runs of this mode's existing results JSON (none if it is absent)."""
  stem = 'fashion_mnist_study' + ('_smoke' if args.smoke else '_quick' if args.quick else '')
  return common.load_runs(os.path.join(args.results_dir or common.RESULTS_DIR, stem + '.json'))


def write_results(args, runs, start, cache, complete: bool) -> dict:
  """JSON + Markdown (+ the figure when complete) of the runs so far."""
  base = make_config('ce', args.settings[0], 0, args.per_class, args.epochs, args.smoke,
                     args.overrides)
  stem = 'fashion_mnist_study' + ('_smoke' if args.smoke else '_quick' if args.quick else '')
  # With --merge the table covers the kept runs too.
  methods = [m for m in METHODS if m in args.methods or any(r['method'] == m for r in runs)]
  settings = [s for s in SETTINGS
              if s in args.settings or any(r['setting'] == s for r in runs)]
  payload = {
      'stem': stem, 'complete': complete, 'cpu_s_total': time.process_time(),
      'script': 'experiments.paper.fashion_mnist_study', 'quick': args.quick, 'smoke': args.smoke,
      'epochs': args.epochs, 'methods': methods, 'settings': settings,
      'seeds': sorted(set(args.seeds) | {r['seed'] for r in runs}),
      'setting_defs': {s: SETTINGS[s] for s in settings},
      'method_labels': {m: METHODS[m][0] for m in methods},
      'budget': {'train_per_class': args.per_class, 'epochs': args.epochs,
                 'batch_size': int(base.data.batch_size), 'lr': float(base.optim.lr),
                 'steps_per_epoch': 10 * args.per_class // int(base.data.batch_size),
                 'width': int(base.model.kwargs.width)},
      'overrides': args.overrides, 'xla_cache': cache is not None,
      'runs': runs, 'table': study.aggregate(runs, methods, settings),
      'total_wall_s': time.perf_counter() - start, 'machine': common.machine(),
      'merged': bool(args.merge),
  }
  results_dir = args.results_dir or common.RESULTS_DIR
  path = common.write_json(stem + '.json', payload, results_dir)
  with open(os.path.join(results_dir, stem + '.md'), 'w') as f:
    f.write(markdown(payload))
  if complete:
    plot(path[:-5] + '.png', payload)
  return payload


if __name__ == '__main__':
  common.run_study(main)
