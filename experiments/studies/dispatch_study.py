"""FaMUS over every layer on Fashion-MNIST: which gates, which L_r, what it costs.

configs/fashion_mnist.py (MW-Net + FaMUS, every layer a candidate, run-time
scopes at block boundaries, the scope price on L_r) with Algorithm 1's gates,
each row changing only what it names:

  exact           MW-Net, exact meta gradient over every layer (meta.sampler=all)
  famus           Algorithm 1's gates (meta.dispatch='host'); the rows below too
  famus_ahead     the shipped config: gates drawn one meta iteration ahead
                  (meta.dispatch='ahead', the default)
  famus_gate_grad_all  L_c's gate gradient on every layer, as Algorithm 1
                  (meta.gate_grad='all'; default 'scope': 0 below the running scope)
  famus_paper_lr  the paper's L_r (meta.rate_cost='count'): Table 3 "L_c + L_r + L_g"
  lc              L_c only (λ1 = λ2 = 0): Table 3 "L_c"
  lc_lr           L_c + the paper's L_r (λ2 = 0): Table 3 "+ L_r"

at 40 % symmetric and 40 % asymmetric noise, seeds 0-2 (42 runs). Columns: final clean
test accuracy, test accuracy at the best clean meta-set accuracy (model
selection without the test set), ms per iteration (median of the training
log's rows without a compilation) and ratio to exact, the fraction of meta
iterations that ran each scope's program.

Rows are written after every run; the same command continues an interrupted
study (runs already in the JSON are kept, `--fresh` starts over).

  python -m experiments.studies.dispatch_study            # full: 59,000 images × 4 epochs, 42 runs
  python -m experiments.studies.dispatch_study --quick    # 1,000 images/class × 3 epochs, seed 0
  python -m experiments.studies.dispatch_study --smoke    # 40 images/class, tiny model (tests)

Writes experiments/results/dispatch_study[_quick|_smoke].{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

from experiments import common
from experiments import digits_lab as lab
from experiments.benchmarks import dispatch_e2e
from experiments.paper import digits_study as study
from famus_jax.training import config as config_lib

# Every FaMUS row but `famus_ahead` (the shipped default) runs Algorithm 1's
# gates (meta.dispatch='host'), so each ablation changes only what it names.
HOST = {'meta.dispatch': 'host'}
ROWS = {
    'exact': ('MW-Net (exact, every layer)', {'meta.sampler': 'all'}),
    'famus': ("+ FaMUS, Algorithm 1's gates (scope price)", HOST),
    'famus_ahead': ('+ FaMUS as shipped: gates drawn ahead (scope price)',
                    {'meta.dispatch': 'ahead'}),
    'famus_gate_grad_all': ("+ FaMUS, Algorithm 1's gate gradient on every layer",
                            {**HOST, 'meta.gate_grad': 'all'}),
    'famus_paper_lr': ("+ FaMUS, the paper's L_r (L_c + L_r + L_g)",
                       {**HOST, 'meta.rate_cost': 'count'}),
    'lc': ('+ FaMUS, L_c only', {**HOST, 'meta.lambda1': 0.0, 'meta.lambda2': 0.0}),
    'lc_lr': ("+ FaMUS, L_c + the paper's L_r",
              {**HOST, 'meta.rate_cost': 'count', 'meta.lambda2': 0.0}),
}
SETTINGS = {'sym40': ('symmetric', 0.4, 'sym. 40 %'), 'asym40': ('asymmetric', 0.4, 'asym. 40 %')}
# mode -> (train images per class (None: all), epochs, seeds)
MODES = {'full': (None, 4, (0, 1, 2)), 'quick': (1000, 3, (0,)), 'smoke': (40, 1, (0,))}


def make_config(row: str, setting: str, seed: int, mode: str, overrides: dict):
  """configs/fashion_mnist.py with the row's and the setting's fields."""
  per_class, epochs, _ = MODES[mode]
  c = study.load_config_file('fashion_mnist.py')
  c.seed = int(seed)
  c.data.noise_type, c.data.noise_rate = SETTINGS[setting][:2]
  c.train.progress = False
  if per_class is not None:
    c.data.train_per_class = per_class
    steps = epochs * 10 * per_class // int(c.data.batch_size)
    c.optim.num_epochs, c.optim.boundaries = epochs, (0.9 * epochs, 0.95 * epochs)
    c.train.log_every = max(1, steps // 20)
    c.train.eval_every = c.train.checkpoint_every = max(1, steps // 4)
  if mode == 'smoke':
    c.model.kwargs.width = 4
  return config_lib.with_fields(c, {**ROWS[row][1], **overrides})


def collect(workdir: str, summary: dict) -> dict:
  """What a run's workdir tells beyond its summary: steady-state ms per
  iteration, the programs run, meta-set selection."""
  del summary
  s = dispatch_e2e.summarize(workdir)
  with open(os.path.join(workdir, 'summary.json')) as f:
    selected = json.load(f).get('selected_by_meta_set') or {}
  return {'steady_ms': s['median_row_ms_per_iteration'], 'program_counts': s['program_counts'],
          'mean_num_selected': s['mean_num_selected'],
          'selected_test_accuracy': selected.get('test_accuracy')}


def scope_fractions(counts: dict) -> dict:
  """Program name -> fraction of the meta iterations (the scope programs:
  'meta_scope<j>' / 'meta_ahead<j>', or the one 'meta' program)."""
  total = sum(counts.values())
  return {k: v / total for k, v in sorted(counts.items())} if total else {}


QUIET_LOAD = 3.0  # a 2-thread run alone keeps the 1-minute load average near 2


def _quiet(run: dict) -> bool:
  return run.get('load_average', QUIET_LOAD) < QUIET_LOAD


def timed_runs(runs: list[dict]) -> list[dict]:
  """The runs whose ms per iteration count: those of the (setting, seed)
  groups whose every run ended with the load average below QUIET_LOAD, so
  each ratio to exact compares runs of the same conditions (all runs when
  no group did)."""
  groups = {}
  for r in runs:
    groups.setdefault((r['setting'], r['seed']), []).append(r)
  quiet = [r for g in groups.values() if all(map(_quiet, g)) for r in g]
  return quiet or runs


def _timed_note(runs: list[dict]) -> str:
  timed = timed_runs(runs)
  return (f'from the {len(timed)} runs of the seeds whose every run ended with the load '
          f'average below {QUIET_LOAD}' if timed is not runs else
          f'from all runs (no seed ran with the load average below {QUIET_LOAD} throughout)')


def aggregate(runs: list[dict]) -> dict:
  """(row, setting) -> means over seeds; ms per iteration and its ratio to
  exact (same seed) from the quiet runs only."""
  table = {}
  for row in ROWS:
    for setting in SETTINGS:
      rs = [r for r in runs if r['row'] == row and r['setting'] == setting]
      if not rs:
        continue
      timed = timed_runs([r for r in runs if r['setting'] == setting])
      exact = {r['seed']: r['steady_ms'] for r in timed if r['row'] == 'exact'}
      ratios = [r['steady_ms'] / exact[r['seed']] for r in timed
                if r['row'] == row and r['steady_ms'] and exact.get(r['seed'])]
      ms = [r['steady_ms'] for r in timed if r['row'] == row and r['steady_ms']]
      fractions = [scope_fractions(r['program_counts']) for r in rs]
      names = sorted({k for f in fractions for k in f})
      selected = [r['selected_test_accuracy'] for r in rs
                  if r.get('selected_test_accuracy') is not None]
      table.setdefault(row, {})[setting] = {
          'seeds': [r['seed'] for r in rs],
          'accuracy': statistics.mean(r['final_test_accuracy'] for r in rs),
          'accuracy_std': statistics.stdev([r['final_test_accuracy'] for r in rs])
                          if len(rs) > 1 else 0.0,
          'selected_accuracy': statistics.mean(selected) if selected else None,
          'ms_per_iteration': statistics.mean(ms) if ms else None,
          'x_exact': statistics.mean(ratios) if ratios else None,
          'scope_fractions': {n: statistics.mean(f.get(n, 0.0) for f in fractions)
                              for n in names},
          'layers_selected': statistics.mean(r['mean_num_selected'] for r in rs)
                             if all(r.get('mean_num_selected') is not None for r in rs)
                             else None}
  return table


def markdown(payload: dict) -> str:
  lines = ['| row | setting | final acc. (%) | meta-selected acc. (%) | ms / it. | × exact '
           '| meta iterations per scope program |', '|---|---|---|---|---|---|---|']
  for row, by_setting in payload['table'].items():
    for setting, c in by_setting.items():
      fractions = ', '.join(f'{k.replace("meta_", "")} {100 * v:.0f} %'
                            for k, v in c['scope_fractions'].items())
      sel = '—' if c['selected_accuracy'] is None else f"{100 * c['selected_accuracy']:.2f}"
      ratio = '—' if c['x_exact'] is None else f"{c['x_exact']:.2f}"
      lines.append(f"| {ROWS[row][0]} | {SETTINGS[setting][2]} | "
                   f"{100 * c['accuracy']:.2f} ± {100 * c['accuracy_std']:.2f} | {sel} | "
                   f"{c['ms_per_iteration'] or float('nan'):.1f} | {ratio} | "
                   f"{fractions or '—'} |")
  m = payload['machine']
  lines += ['', (f"configs/fashion_mnist.py ({payload['mode']} mode: "
                 f"{payload['budget']}), means over seeds {payload['seeds']}; ms per "
                 f"iteration: median of the training log's rows without a compilation, "
                 f"{_timed_note(payload['runs'])}; "
                 f"{m['device_kind']} ({m['cpu_count']} cores), load average "
                 f"{payload['load_average'][0]:.1f} at the end. "
                 + ('' if payload['complete'] else
                    f"**Incomplete: {len(payload['runs'])} runs so far.**"))]
  return '\n'.join(lines) + '\n'


def plot(path: str, payload: dict) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  table = payload['table']
  settings = [s for s in SETTINGS if any(s in t for t in table.values())]
  fig, axes = plt.subplots(1, len(settings) + 1, figsize=(5 * (len(settings) + 1), 4.5),
                           squeeze=False)
  for j, setting in enumerate(settings):
    ax = axes[0, j]
    for i, (row, by_setting) in enumerate(table.items()):
      c = by_setting.get(setting)
      if c and c['ms_per_iteration']:
        ax.errorbar(c['ms_per_iteration'], 100 * c['accuracy'], yerr=100 * c['accuracy_std'],
                    fmt='osD^v<'[i % 6], color=f'C{i}', capsize=2, label=ROWS[row][0])
    ax.set(xlabel='ms per iteration', ylabel='final clean test accuracy (%)',
           title=SETTINGS[setting][2])
    ax.grid(alpha=0.3)
  fig.legend(*axes[0, 0].get_legend_handles_labels(), loc='lower center', ncol=3, fontsize=8)
  ax = axes[0, -1]
  rows = [r for r in table if r != 'exact']
  bottom = np.zeros(len(rows))
  levels = sorted({k[-1] for r in rows for c in table[r].values()
                   for k in c['scope_fractions'] if k[-1].isdigit()})
  for level in levels:
    heights = np.asarray([statistics.mean(
        sum(v for k, v in c['scope_fractions'].items() if k.endswith(level))
        for c in table[r].values()) for r in rows])
    ax.bar(range(len(rows)), heights, bottom=bottom, label=f'scope {level}')
    bottom += heights
  ax.set_xticks(range(len(rows)), rows, rotation=30, ha='right', fontsize=8)
  ax.set(ylabel='fraction of meta iterations', title='scope programs run (0: smallest)')
  ax.legend(fontsize=7)
  common.save_figure(fig, path, f"FaMUS over every layer, Fashion-MNIST ({payload['mode']} "
                     f"mode), seeds {payload['seeds']}", rect=(0, 0.14, 1, 1))


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--smoke', action='store_true')
  parser.add_argument('--rows', default=','.join(ROWS))
  parser.add_argument('--settings', default=','.join(SETTINGS))
  parser.add_argument('--seeds', default=None, help='comma-separated (full: 0,1,2)')
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                      help='config override for every run (JSON value)')
  parser.add_argument('--fresh', action='store_true', help='ignore runs already in the JSON')
  parser.add_argument('--results-dir', default=None)
  parser.add_argument('--xla-cache', default=None)
  args = parser.parse_args(argv)
  args.mode = 'smoke' if args.smoke else 'quick' if args.quick else 'full'
  args.rows, args.settings = args.rows.split(','), args.settings.split(',')
  for name, given, known in (('rows', args.rows, ROWS), ('settings', args.settings, SETTINGS)):
    if set(given) - set(known):
      parser.error(f'unknown {name} {sorted(set(given) - set(known))}; known: {", ".join(known)}')
  args.seeds = ([int(s) for s in args.seeds.split(',')] if args.seeds
                else list(MODES[args.mode][2]))
  args.overrides = {k: study.parse_value(v) for k, v in (x.split('=', 1) for x in args.set)}
  return args


def write(args, runs: list[dict], complete: bool) -> dict:
  per_class, epochs, _ = MODES[args.mode]
  stem = 'dispatch_study' + ('' if args.mode == 'full' else f'_{args.mode}')
  payload = {'script': 'experiments.studies.dispatch_study', 'mode': args.mode,
             'complete': complete,
             'budget': f"{'all 59,000' if per_class is None else f'{per_class}/class'} "
                       f"noisy training images × {epochs} epochs",
             'seeds': sorted({r['seed'] for r in runs}), 'overrides': args.overrides,
             'rows': {k: v[0] for k, v in ROWS.items()}, 'runs': runs,
             'table': aggregate(runs), 'machine': common.machine(),
             'load_average': os.getloadavg()}
  results_dir = args.results_dir or common.RESULTS_DIR
  path = common.write_json(stem + '.json', payload, results_dir)
  with open(path[:-5] + '.md', 'w') as f:
    f.write(markdown(payload))
  if complete:
    plot(path[:-5] + '.png', payload)
  return payload


def previous_runs(args) -> list[dict]:
  stem = 'dispatch_study' + ('' if args.mode == 'full' else f'_{args.mode}')
  path = os.path.join(args.results_dir or common.RESULTS_DIR, stem + '.json')
  if args.fresh or not os.path.exists(path):
    return []
  with open(path) as f:
    payload = json.load(f)
  if payload.get('overrides', {}) != args.overrides:
    raise SystemExit(f'{path} holds runs with other --set overrides '
                     f'({payload.get("overrides")}); use --fresh or another --results-dir')
  return payload['runs']


def main(argv=None):
  args = _parse(argv)
  lab.enable_compilation_cache(args.xla_cache)
  with common.quiet_logs():
    runs = run_rows(args, previous_runs(args))
  payload = write(args, runs, complete=True)
  print(markdown(payload))
  return payload


def run_rows(args, runs: list) -> list:
  """`runs` and every (row, setting, seed) not among them, run and written as it ends."""
  done = {(r['row'], r['setting'], r['seed']) for r in runs}
  start = time.perf_counter()
  # seeds outermost, rows interleaved: a load change hits every row alike
  for setting in args.settings:
    for seed in args.seeds:
      for row in args.rows:
        if (row, setting, seed) in done:
          continue
        config = make_config(row, setting, seed, args.mode, args.overrides)
        result = {'row': row, 'setting': setting, 'seed': seed,
                  **study.run_one(row, config, collect),
                  'load_average': os.getloadavg()[0]}
        runs.append(result)
        print(f"{row:<15s} {setting:<7s} seed {seed}: accuracy "
              f"{result['final_test_accuracy']:.4f} (meta-selected "
              f"{result['selected_test_accuracy'] or float('nan'):.4f}), "
              f"{result['steady_ms'] or float('nan'):.1f} ms/it, "
              f"{result['program_counts']}  (total {time.perf_counter() - start:.0f} s)",
              file=sys.stderr, flush=True)
        write(args, runs, complete=False)
  return runs


if __name__ == '__main__':
  common.run_study(main)
