"""Fashion-MNIST where label noise hurts: every method in the memorisation regime.

configs/fashion_mnist_long.py (a `fashion_resnet` of width 16 trained for many
epochs of 500 noisy images per class, batch 100, lr 0.05 ÷10 at 90 % and 95 %
of the run) is long enough for cross-entropy to memorise the wrong labels: its
test accuracy rises for a few epochs, then falls. Rows, all from that config
with only the method and the noise changed (as in experiments/paper/
fashion_mnist_study.py, whose method definitions they reuse):
  ce           CE on the noisy labels
  ce_true      CE on the true labels of the same images (upper bound)
  clean_only   CE on the clean meta images only, as many iterations
  mwnet_exact  MW-Net, exact meta gradient over every layer
  mwnet_famus  MW-Net + FaMUS, the config's FaMUS as shipped
  l2r, mlc     L2R and official MLC, exact
  alg2         Algorithm 2 (configs/fashion_mnist_long_alg2.py): no clean labels
Settings: sym60 (first: the headline), sym40, asym40 (the Fashion-MNIST class
map). ce_true and clean_only see no noisy label: they run once per seed
(setting 'none') and fill every column.

Each run is evaluated after every epoch (test accuracy and clean meta-set
accuracy); a row is {method, setting, seed, final, selected, best,
ms_per_iteration, ...}: final test accuracy, the test accuracy at the
evaluation with the best meta-set accuracy (model selection without the test
set; none for Alg. 2, which has no clean labels), the best test accuracy (an
oracle), and the per-epoch curves.

Resumable: the results are rewritten after every run; a call skips the rows
its results JSON already holds (`--rerun` repeats them), and a run that was
stopped resumes from its last checkpoint (every 5 epochs, under `--workdirs`).

  python -m experiments.studies.fashion_mnist_long                  # every row, 3 settings
  python -m experiments.studies.fashion_mnist_long --methods=ce,ce_true --settings=sym60
  python -m experiments.studies.fashion_mnist_long --timing         # ms/iteration, one process
  python -m experiments.studies.fashion_mnist_long --smoke --set data.data_dir='"DIR"'

`--timing` re-measures ms/iteration of chosen methods (default exact MW-Net,
MW-Net + FaMUS, CE) over whole sym60 runs, interleaved in one process, for a
quiet machine: the study's own ms/iteration are measured while it shares the
CPU. Writes experiments/results/fashion_mnist_long[_timing].{json,md,png}.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import sys
import tempfile
import time

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from experiments import common
from experiments import digits_lab as lab
from experiments.paper import digits_study as study
from experiments.paper import fashion_mnist_study as short
from famus_jax.alg2 import analysis
from famus_jax.training import metrics as metrics_lib

CONFIG_FILES = ('fashion_mnist_long.py', 'fashion_mnist_long_alg2.py')
# name -> (label, the fashion_mnist_study method it runs, seeds in the full study)
METHODS = {
    'ce': ('CE (noisy labels)', 'ce', 3),
    'ce_true': ('CE (true labels, upper bound)', 'ce_true', 3),
    'clean_only': ('CE (the clean meta images only)', 'ce_meta', 2),
    'mwnet_exact': ('MW-Net (exact)', 'mwnet', 3),
    'mwnet_famus': ('MW-Net + FaMUS', 'mwnet_famus', 3),
    'l2r': ('L2R (exact)', 'l2r', 2),
    'mlc': ('MLC (exact)', 'mlc', 2),
    'alg2': ('Alg. 2 (pseudo-clean, FaMUS; no clean labels)', 'alg2', 1),
}
NOISE_FREE = ('ce_true', 'clean_only')  # no noisy label seen: one run per seed
SETTINGS = ('sym60', 'sym40', 'asym40')
WEIGHTED = ('mwnet_exact', 'mwnet_famus', 'l2r')  # per-example meta-weights
TIMING_METHODS = ('mwnet_exact', 'mwnet_famus', 'ce')
CHECKPOINT_EPOCHS = 5


def budget(smoke: bool) -> dict:
  """The run length and model of the study (the config's; smoke: tiny)."""
  c = study.load_config_file(CONFIG_FILES[0])
  per_class = 20 if smoke else int(c.data.train_per_class)
  return {'train_per_class': per_class, 'epochs': 2 if smoke else int(c.optim.num_epochs),
          'batch_size': int(c.data.batch_size), 'lr': float(c.optim.lr),
          'steps_per_epoch': 10 * per_class // int(c.data.batch_size),
          'width': 4 if smoke else int(c.model.kwargs.width),
          'stage_sizes': list(c.model.kwargs.stage_sizes)}


def make_config(method: str, setting: str, seed: int, b: dict, smoke: bool,
                overrides: dict):
  """One run's config: configs/fashion_mnist_long[_alg2].py, the setting, an
  evaluation after every epoch, a checkpoint every few."""
  name = METHODS[method][1]
  c = short.make_config(name, 'sym40' if setting == 'none' else setting, seed,
                        b['train_per_class'], b['epochs'], smoke, {},
                        config_files=CONFIG_FILES)
  if method == 'alg2':
    c.alg2.eval_every_epochs, c.alg2.checkpoint_every_epochs = 1, CHECKPOINT_EPOCHS
  else:
    spe = b['steps_per_epoch']
    c.train.eval_every, c.train.log_every = spe, max(1, spe // 5)
    c.train.checkpoint_every = CHECKPOINT_EPOCHS * spe
  short.apply_overrides(c, name, overrides)
  return c


def collect(workdir: str, summary: dict, steps_per_epoch: int) -> dict:
  """fashion_mnist_study's weights and times, plus the accuracy curves over
  epochs of the noisy training set (`steps_per_epoch` iterations; the clean-only
  row runs as many iterations on its smaller set)."""
  out = short.collect(workdir, summary)
  if summary.get('algorithm') == 'alg2':
    rows = [r for r in analysis.EpochLog.read(workdir) if 'test_accuracy' in r]
    epochs = [int(r['epoch']) + 1 for r in rows]
  else:
    rows = [r for r in metrics_lib.read_jsonl(os.path.join(workdir, 'eval.jsonl'))
            if 'test_accuracy' in r]
    epochs = [r['step'] / steps_per_epoch for r in rows]
  out['curve'] = {'epoch': epochs, 'test': [float(r['test_accuracy']) for r in rows],
                  'meta': [float(r['meta_accuracy']) for r in rows if 'meta_accuracy' in r]}
  out['resumed_from'] = summary.get('resumed_from')
  out['data'] = summary.get('data')
  return out


def run_row(method: str, setting: str, seed: int, config, b: dict, workdirs: str) -> dict:
  """One run as a result row; its workdir (named by the config) is resumed if a
  stopped call left it."""
  digest = hashlib.sha1(config.to_json(sort_keys=True).encode()).hexdigest()[:10]
  workdir = os.path.join(workdirs, f'{method}_{setting}_s{seed}_{digest}')
  load0, cpu0 = os.getloadavg()[0], time.process_time()
  r = study.run_one(METHODS[method][1], config,
                    functools.partial(collect, steps_per_epoch=b['steps_per_epoch']),
                    workdir=workdir)
  return {'method': method, 'setting': setting, 'seed': seed,
          'final': r['final_test_accuracy'], 'selected': r['selected_test_accuracy'],
          'best': r['best_test_accuracy'],
          'ms_per_iteration': r.get('alg2_ms_per_iteration') or r['ms_per_iteration'],
          'cpu_s': time.process_time() - cpu0,  # all threads of this process
          'load_average': [load0, os.getloadavg()[0]],
          **{k: r[k] for k in ('wall_s', 'num_steps', 'realised_noise_rate',
                               'train_weight_auc')},
          **{k: v for k, v in r.items() if k in ('curve', 'weights_over_training',
                                                'program_counts', 'resumed_from',
                                                'data')}}


def plan(methods, settings, seeds) -> list[tuple[str, str, int]]:
  """(method, setting, seed) of every run, setting by setting, seed by seed."""
  jobs = []
  for setting in settings:
    for seed in range(max(METHODS[m][2] for m in methods)) if seeds is None else seeds:
      for m in methods:
        s = 'none' if m in NOISE_FREE else setting
        if (seeds is not None or seed < METHODS[m][2]) and (m, s, seed) not in jobs:
          jobs.append((m, s, seed))
  return jobs


# -- tables ----------------------------------------------------------------------------


def cell_runs(runs, method: str, setting: str) -> list[dict]:
  s = 'none' if method in NOISE_FREE else setting
  return [r for r in runs if r['method'] == method and r['setting'] == s]


def aggregate(runs, methods, settings) -> dict:
  """method -> setting -> mean / std of final, selected, best; median ms/it."""
  table = {}
  for m in methods:
    for s in settings:
      rs = cell_runs(runs, m, s)
      if not rs:
        continue
      cell = {'seeds': [r['seed'] for r in rs],
              'ms_per_iteration': _median([r['ms_per_iteration'] for r in rs]),
              'cpu_s_mean': float(np.mean([r['cpu_s'] for r in rs]))}
      for key in ('final', 'selected', 'best'):
        vals = [r[key] for r in rs if r.get(key) is not None]
        cell[key] = vals
        cell[key + '_mean'] = float(np.mean(vals)) if vals else None
        cell[key + '_std'] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
      table.setdefault(m, {})[s] = cell
  return table


def _median(values):
  values = [v for v in values if v]
  return float(np.median(values)) if values else None


def targets(table) -> list[str]:
  """The sym60 targets, as far as the rows exist."""
  get = lambda m, k='final_mean': (table.get(m, {}).get('sym60') or {}).get(k)
  out = []
  ce, true, exact, famus = get('ce'), get('ce_true'), get('mwnet_exact'), get('mwnet_famus')
  if ce is not None and true is not None:
    out.append(f'CE (noisy) {100 * (true - ce):.1f} points below CE (true labels): '
               f"{'met' if true - ce >= 0.08 else 'missed'} (target ≥ 8)")
  if famus is not None and ce is not None:
    out.append(f'MW-Net + FaMUS − CE: {100 * (famus - ce):+.1f} points: '
               f"{'met' if famus - ce >= 0.05 else 'missed'} (target ≥ +5)")
  if famus is not None and exact is not None:
    out.append(f'MW-Net + FaMUS − exact MW-Net: {100 * (famus - exact):+.1f} points: '
               f"{'met' if famus - exact >= -0.01 else 'missed'} (target ≥ −1)")
  fm, em = get('mwnet_famus', 'ms_per_iteration'), get('mwnet_exact', 'ms_per_iteration')
  if fm and em:
    out.append(f'FaMUS / exact ms per iteration in this study: {fm / em:.2f}× (target '
               f'≤ 0.7×; measured while the CPU was shared: see `--timing`)')
  return out


def _pm(cell, key):
  """'mean ± std' in %, the mean alone from one seed, '—' without a run."""
  if not cell or cell.get(key + '_mean') is None:
    return '—'
  if len(cell['seeds']) == 1:
    return f"{100 * cell[key + '_mean']:.1f}"
  return f"{100 * cell[key + '_mean']:.1f} ± {100 * cell[key + '_std']:.1f}"


def _seed_counts(cells) -> str:
  """The seeds column: one number where every setting ran as many seeds,
  else the count per setting ('3 / 1 / —')."""
  counts = [len(c['seeds']) if c else 0 for c in cells]
  ran = {n for n in counts if n}
  if len(ran) == 1 and all(counts):
    return str(ran.pop())
  return ' / '.join(str(n) if n else '—' for n in counts)


def markdown(payload) -> str:
  table, settings, b = payload['table'], payload['settings'], payload['budget']
  head = ' | '.join(short.SETTINGS[s][2] for s in settings)
  lines = [f'| method | {head} | seeds | ms / iteration | CPU min / run |',
           '|' + '---|' * (len(settings) + 4)]
  for m in payload['methods']:
    if m not in table:
      continue
    cells = [table[m].get(s) for s in settings]
    got = [c for c in cells if c]
    ms = _median([c['ms_per_iteration'] for c in got])
    lines.append(f'| {METHODS[m][0]} | ' + ' | '.join(_pm(c, 'final') for c in cells)
                 + f" | {_seed_counts(cells)} | "
                 + (f'{ms:.0f}' if ms else '—')
                 + f" | {np.mean([c['cpu_s_mean'] for c in got]) / 60:.1f} |")
  lines += ['', f'Selected (test accuracy at the best clean meta-set accuracy) / best '
            f'(oracle) test accuracy, mean over seeds:', '',
            f'| method | {head} |', '|' + '---|' * (len(settings) + 1)]
  for m in payload['methods']:
    if m in table:
      cells = [table[m].get(s) for s in settings]
      lines.append(f'| {METHODS[m][0]} | ' + ' | '.join(
          '—' if not c else (f"{100 * c['selected_mean']:.1f}" if c['selected_mean']
                             is not None else '—') + f" / {100 * c['best_mean']:.1f}"
          for c in cells) + ' |')
  runs, mach = payload['runs'], payload['machine']
  loads = [x for r in runs for x in r['load_average']]
  sizes = {k: max(r['data'][k] for r in runs) for k in ('num_test', 'num_meta')}
  lines += ['', (
      f"Final clean test accuracy (%) on the {sizes['num_test']:,} Fashion-MNIST test "
      f"images, mean ± std over seeds. {b['train_per_class']} noisy training images per "
      f"class ({10 * b['train_per_class']:,}), {b['epochs']} epochs × "
      f"{b['steps_per_epoch']} iterations of {b['batch_size']}, lr {b['lr']} ÷10 at 90 % "
      f"and 95 % of the run; {sizes['num_meta']:,} clean meta images (Alg. 2: noisy, in its "
      f"training set); `fashion_resnet` "
      f"width {b['width']}. CE on the true labels and on the clean images only see no "
      f"noisy label: the same runs fill every column. ms / iteration: the training "
      f"loop's steady-state rate, median over runs; CPU: this process, all threads. "
      f"{mach['device_kind']} ({mach['cpu_count']} cores), jax {mach['jax_version']}, "
      f"shared with other jobs (1-min load average {min(loads):.1f}–{max(loads):.1f} "
      f"during the runs); {len(runs)} runs, "
      f"{sum(r['cpu_s'] for r in runs) / 3600:.1f} h CPU in all."
      + ('' if payload['complete'] else ' **Incomplete.**'))]
  goals = targets(table)
  if goals:
    lines += ['', 'At sym. 60 %:', ''] + [f'- {g}' for g in goals]
  return '\n'.join(lines) + '\n'


# -- figure ----------------------------------------------------------------------------


def plot(path, payload, setting: str = 'sym60'):
  matplotlib.use('Agg')
  runs, spe = payload['runs'], payload['budget']['steps_per_epoch']
  fig, (acc, wts) = plt.subplots(1, 2, figsize=(12, 4.8))
  for i, m in enumerate(payload['methods']):
    curves = [r['curve'] for r in cell_runs(runs, m, setting) if r.get('curve', {}).get('test')]
    if curves:
      n = min(len(c['test']) for c in curves)
      acc.plot(curves[0]['epoch'][:n], 100 * np.mean([c['test'][:n] for c in curves], 0),
               '-o', ms=2.5, color=f'C{i}', label=f'{METHODS[m][0]} ({len(curves)})')
    series = [r['weights_over_training'] for r in cell_runs(runs, m, setting)
              if m in WEIGHTED and r.get('weights_over_training')]
    if series:
      short.plot_weights(wts, series, f'C{i}', METHODS[m][0], per=spe)
  acc.set(xlabel='epoch', ylabel='clean test accuracy (%)',
          title=f'test accuracy over training, {short.SETTINGS[setting][2]} (mean of seeds)')
  wts.set(xlabel='epoch', ylabel='mean weight (× uniform)',
          title=f'meta-weights of clean vs noisy labels, {short.SETTINGS[setting][2]}')
  for ax in (acc, wts):
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=7)
  common.save_figure(fig, path, f"Fashion-MNIST, memorisation regime: "
                     f"{payload['budget']['train_per_class']} noisy images/class × "
                     f"{payload['budget']['epochs']} epochs", payload['machine'])


# -- the study -------------------------------------------------------------------------


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--smoke', action='store_true',
                      help='20 images/class, 2 epochs, tiny model (tests)')
  parser.add_argument('--methods', default=None, help=f'comma-separated: {",".join(METHODS)}')
  parser.add_argument('--settings', default=None, help=f'comma-separated: {",".join(SETTINGS)}')
  parser.add_argument('--seeds', default=None,
                      help='comma-separated, for every method (default: per method, '
                      + ', '.join(f'{m} {v[2]}' for m, v in METHODS.items()) + ')')
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                      help='config override for every run (JSON values)')
  parser.add_argument('--rerun', action='store_true',
                      help='repeat the chosen rows that the results JSON already holds')
  parser.add_argument('--timing', action='store_true',
                      help='only measure ms/iteration (whole sym60 runs, one process)')
  parser.add_argument('--rounds', type=int, default=3, help='--timing: rounds per method')
  parser.add_argument('--results-dir', default=None)
  parser.add_argument('--workdirs', default=None,
                      help='where runs live until their row is written (default: in the '
                      'system temporary directory)')
  parser.add_argument('--xla-cache', default=None)
  args = parser.parse_args(argv)
  default = TIMING_METHODS if args.timing else ('ce', 'ce_true', 'mwnet_exact') \
      if args.smoke else METHODS
  args.methods = args.methods.split(',') if args.methods else list(default)
  args.settings = (args.settings.split(',') if args.settings
                   else ['sym60'] if args.smoke or args.timing else list(SETTINGS))
  args.seeds = ([int(s) for s in args.seeds.split(',')] if args.seeds
                else [0] if args.smoke or args.timing else None)
  for name, given, known in (('methods', args.methods, METHODS),
                             ('settings', args.settings, SETTINGS)):
    bad = set(given) - set(known)
    if bad:
      parser.error(f'unknown {name} {sorted(bad)}; known: {", ".join(known)}')
  args.overrides = {k: study.parse_value(v) for k, v in
                    (item.split('=', 1) for item in args.set)}
  args.stem = 'fashion_mnist_long' + ('_smoke' if args.smoke else '') + (
      '_timing' if args.timing else '')
  args.results_dir = args.results_dir or common.RESULTS_DIR
  args.workdirs = args.workdirs or os.path.join(tempfile.gettempdir(),
                                                f'famus_{args.stem}_runs')
  return args


def previous(args, b: dict) -> list[dict]:
  """The rows of the existing results JSON, if it is of the same study."""
  path = os.path.join(args.results_dir, args.stem + '.json')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    old = json.load(f)
  if (old['budget'], old['overrides']) != (b, args.overrides):
    sys.exit(f'{path} holds runs of another budget or overrides '
             f"({old['budget']}, {old['overrides']}); move it away or use --results-dir")
  return old['runs']


def write_results(args, b, runs, complete: bool) -> dict:
  """JSON, Markdown and figure of the rows so far."""
  methods = [m for m in METHODS if m in args.methods or any(r['method'] == m for r in runs)]
  settings = [s for s in SETTINGS if s in args.settings or any(r['setting'] == s for r in runs)]
  payload = {
      'script': 'fashion_mnist_long', 'stem': args.stem, 'complete': complete,
      'budget': b, 'overrides': args.overrides, 'methods': methods, 'settings': settings,
      'method_labels': {m: METHODS[m][0] for m in methods},
      'runs': runs, 'table': aggregate(runs, methods, settings),
      'machine': common.machine()}
  path = common.write_json(args.stem + '.json', payload, args.results_dir)
  with open(path[:-5] + '.md', 'w') as f:
    f.write(markdown(payload))
  plot(path[:-5] + '.png', payload)
  return payload


def main(argv=None):
  """The study (see the module docstring); the run loggers quiet meanwhile."""
  with common.quiet_logs():
    return _main(argv)


def _main(argv):
  args = _parse(argv)
  lab.enable_compilation_cache(args.xla_cache)
  if args.timing:
    return timing(args)
  b = budget(args.smoke)
  runs = previous(args, b)
  done = {(r['method'], r['setting'], r['seed']) for r in runs}
  todo = [j for j in plan(args.methods, args.settings, args.seeds)
          if args.rerun or j not in done]
  print(f'{len(todo)} runs to do ({len(runs)} rows kept); runs live in {args.workdirs}',
        file=sys.stderr, flush=True)
  start = time.perf_counter()
  for i, (method, setting, seed) in enumerate(todo):
    row = run_row(method, setting, seed, make_config(method, setting, seed, b, args.smoke,
                                                     args.overrides), b, args.workdirs)
    runs = common.replace_run(runs, row)
    write_results(args, b, runs, complete=False)
    print(f"[{i + 1}/{len(todo)}] {method:<12s} {setting:<6s} seed {seed}: final "
          f"{row['final']:.4f} best {row['best']:.4f}  ms/it "
          f"{row['ms_per_iteration'] or 0:.0f}  cpu {row['cpu_s']:.0f} s  load "
          f"{row['load_average'][1]:.1f}  (total {time.perf_counter() - start:.0f} s)",
          file=sys.stderr, flush=True)
  payload = write_results(args, b, runs, complete=True)
  print(markdown(payload))
  return payload


# -- quiet-machine timing --------------------------------------------------------------


def timing(args) -> dict:
  """ms/iteration of whole runs, methods interleaved round by round in one process."""
  b = budget(args.smoke)
  start, rows = time.perf_counter(), []
  for rnd in range(args.rounds):
    for method in args.methods:
      setting = 'none' if method in NOISE_FREE else args.settings[0]
      at_end = {'alg2.eval_every_epochs': 0} if method == 'alg2' else {'train.eval_every': 0}
      row = run_row(method, setting, args.seeds[0],
                    make_config(method, setting, args.seeds[0], b, args.smoke,
                                {**at_end, **args.overrides}), b, args.workdirs)
      rows.append({'round': rnd, **row})
      print(f"round {rnd} {method:<12s} {row['ms_per_iteration']:.1f} ms/it  load "
            f"{row['load_average'][1]:.1f}", file=sys.stderr, flush=True)
  ms = {m: float(np.median([r['ms_per_iteration'] for r in rows if r['method'] == m]))
        for m in args.methods}
  ref = ms.get('mwnet_exact')
  payload = {'script': 'fashion_mnist_long', 'mode': 'timing', 'budget': b,
             'overrides': args.overrides, 'rounds': args.rounds, 'runs': rows,
             'ms_per_iteration': ms,
             'vs_exact': {m: v / ref for m, v in ms.items()} if ref else None,
             'total_wall_s': time.perf_counter() - start, 'machine': common.machine()}
  path = common.write_json(args.stem + '.json', payload, args.results_dir)
  loads = [x for r in rows for x in r['load_average']]
  md = '\n'.join(['| method | ms / iteration (median of rounds) | × exact MW-Net |',
                  '|---|---|---|'] + [
      f"| {METHODS[m][0]} | {v:.1f} | {f'{v / ref:.2f}' if ref else '—'} |"
      for m, v in ms.items()] + ['', (
          f"Whole sym. 60 % runs of seed {args.seeds[0]} ({b['epochs']} epochs × "
          f"{b['steps_per_epoch']} iterations, evaluated at the end only), {args.rounds} "
          f"rounds, methods interleaved in one process; 1-min load average "
          f"{min(loads):.1f}–{max(loads):.1f}; {payload['total_wall_s'] / 60:.0f} min. "
          f"{payload['machine']['device_kind']} ({payload['machine']['cpu_count']} cores).")])
  with open(path[:-5] + '.md', 'w') as f:
    f.write(md + '\n')
  print(md)
  return payload


if __name__ == '__main__':
  common.run_study(main)
