"""Exact vs FaMUS over whole training runs: ms per iteration from the
training loop's own log, the programs that ran, final accuracy.

Reads finished run workdirs (`metrics.jsonl`, `summary.json`) and writes one
JSON. A log row's `step_time_s` is its wall time per iteration; the first row
(first compilations) and any row in which a program compiled (host dispatch
compiles a scope program when first chosen) are left out of the mean and
counted separately.

  python -m famus_jax.main --config=configs/digits.py --workdir=/tmp/d_exact \\
      --config.meta.sampler=all
  python -m famus_jax.main --config=configs/digits.py --workdir=/tmp/d_famus
  python -m experiments.benchmarks.dispatch_e2e --run exact=/tmp/d_exact --run famus=/tmp/d_famus \\
      --out=dispatch_e2e_digits.json

Or let it run a plan itself, in one process, seeds interleaved (exact, the
config's FaMUS, its gates drawn ahead, one scope instead of the run-time
scopes, and the paper's Table 3 loss ablation over every layer with 4 scopes):

  python -m experiments.benchmarks.dispatch_e2e --plan=fashion_mnist --seeds=0,1
  python -m experiments.benchmarks.dispatch_e2e --plan=digits --seeds=0,1,2 \
      --variants=exact,famus,famus_one_scope
"""

import argparse
import json
import os
import shutil
import statistics
import tempfile

from experiments import common
from experiments import digits_lab
from experiments.paper import digits_study as study
from famus_jax import train
from famus_jax.training import config as config_lib


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def summarize(workdir: str) -> dict:
  """Iteration time, program histogram and accuracy of one finished run."""
  rows = read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  steady, compiling = [], 0
  for prev, row in zip(rows, rows[1:]):
    if row.get('compiled') != prev.get('compiled'):
      compiling += 1
      continue
    steady.append(row['step_time_s'] * 1e3)
  levels = [r['scope_level'] for r in rows if 'scope_level' in r]
  selected = [r['num_selected'] for r in rows if 'num_selected' in r]
  meta = config['meta']
  return {
      'workdir': workdir, 'seed': config['seed'], 'sampler': meta['sampler'],
      'meta': {k: meta.get(k) for k in ('k', 'lambda1', 'lambda2', 'prune_levels',
                                        'dispatch', 'gate_grad', 'rate_cost',
                                        'candidate_layers')},
      'steps': summary['step'],
      'mean_ms_per_iteration': statistics.mean(steady) if steady else None,
      'median_row_ms_per_iteration': statistics.median(steady) if steady else None,
      'rows_used': len(steady), 'rows_with_compilation': compiling + 1,
      'program_counts': summary.get('program_counts'),
      'mean_scope_level': statistics.mean(levels) if levels else None,
      'mean_num_selected': statistics.mean(selected) if selected else None,
      'final_test_accuracy': summary['final_test_accuracy'],
      'wall_time_s': summary.get('wall_time_s'),
  }


# Table 3 of the paper over every layer (P = 4 nested scopes): the time column's
# ordering is the claim (L_c only ≈ exact; + L_r clearly faster).
ABLATION = {
    'famus_all_layers_Lc': {'meta.candidate_layers': 'all', 'meta.prune_levels': 4,
                            'meta.lambda1': 0.0, 'meta.lambda2': 0.0},
    'famus_all_layers_Lc+Lr': {'meta.candidate_layers': 'all', 'meta.prune_levels': 4,
                               'meta.lambda1': 0.1, 'meta.lambda2': 0.0},
    'famus_all_layers_all': {'meta.candidate_layers': 'all', 'meta.prune_levels': 4,
                             'meta.lambda1': 0.1, 'meta.lambda2': 0.1},
    # ours: L_r counts each layer by the FLOPs of the smallest scope holding it
    'famus_all_layers_all_flops': {'meta.candidate_layers': 'all', 'meta.prune_levels': 4,
                                   'meta.lambda1': 0.1, 'meta.lambda2': 0.1,
                                   'meta.rate_cost': 'flops'},
    # ours: (Σ r − K)² + Σ m_l r_l, m_l the marginal cost of l's scope (one-sided)
    'famus_all_layers_Lc+Lr_scope': {'meta.candidate_layers': 'all', 'meta.prune_levels': 4,
                                     'meta.lambda1': 0.1, 'meta.lambda2': 0.0,
                                     'meta.rate_cost': 'scope'},
    'famus_all_layers_all_scope': {'meta.candidate_layers': 'all', 'meta.prune_levels': 4,
                                   'meta.lambda1': 0.1, 'meta.lambda2': 0.1,
                                   'meta.rate_cost': 'scope'},
}
# plan -> (config file, budget overrides): a reduced budget of the config's own
# recipe (lr ÷10 at 90 % / 95 % of the run).
PLANS = {
    'digits': ('digits.py', {'optim.num_epochs': 20, 'optim.boundaries': (18, 19)}),
    'fashion_mnist': ('fashion_mnist.py', {
        'data.train_per_class': 1000, 'optim.num_epochs': 3,
        'optim.boundaries': (2.7, 2.85), 'train.eval_every': 0,
        'train.checkpoint_every': 0, 'train.log_every': 10}),
}
VARIANTS = {'exact': {'meta.sampler': 'all', 'meta.candidate_layers': 'all'}, 'famus': {},
            'famus_ahead': {'meta.dispatch': 'ahead'},
            'famus_one_scope': {'meta.prune_levels': 1}, **ABLATION}


def run_plan(plan: str, seeds, variants, overrides: dict) -> dict:
  """Runs every variant for every seed (seeds outermost) in temporary workdirs."""
  digits_lab.enable_compilation_cache()
  config_file, budget = PLANS[plan]
  runs = {}
  for seed in seeds:
    for variant in variants:
      c = study.load_config_file(config_file)
      for k, v in {**budget, **VARIANTS[variant], **overrides, 'seed': seed}.items():
        config_lib.set_field(c, k, v)
      c.train.progress = False
      workdir = tempfile.mkdtemp(prefix=f'e2e_{variant}_')
      try:
        train.train_and_evaluate(c, workdir)
        runs[f'{variant}_s{seed}'] = {'variant': variant, **summarize(workdir)}
      finally:
        shutil.rmtree(workdir, ignore_errors=True)
      r = runs[f'{variant}_s{seed}']
      print(f"{variant:<24s} seed {seed}: {r['mean_ms_per_iteration'] or 0:.1f} ms/it, "
            f"acc {r['final_test_accuracy']:.4f}, {r['program_counts']}", flush=True)
  return runs


def by_variant(runs: dict) -> dict:
  """Mean over seeds per variant, with ratios to `exact` (ms per iteration)."""
  table = {}
  for name in dict.fromkeys(r['variant'] for r in runs.values()):
    rs = [r for r in runs.values() if r['variant'] == name]
    ms = [r['mean_ms_per_iteration'] for r in rs]
    known = [x for x in ms if x is not None]  # None: no log row without compilation
    table[name] = {'ms_per_iteration': statistics.mean(known) if known else None,
                   'accuracy': statistics.mean(r['final_test_accuracy'] for r in rs),
                   'seeds': [r['seed'] for r in rs], 'ms_per_seed': ms,
                   'full_scope_fraction': _full_scope_fraction(rs)}
  exact = table.get('exact', {}).get('ms_per_iteration')
  for row in table.values():
    ms = row['ms_per_iteration']
    row['x_exact'] = ms / exact if exact and ms else None
  return table


def _full_scope_fraction(rs) -> float | None:
  """Fraction of meta iterations that ran the largest scope's program."""
  fractions = []
  for r in rs:
    counts = r.get('program_counts') or {}
    scoped = {k: v for k, v in counts.items() if k[-1].isdigit()}
    if scoped:
      top = max(scoped, key=lambda k: int(''.join(filter(str.isdigit, k))))
      fractions.append(scoped[top] / sum(scoped.values()))
  return statistics.mean(fractions) if fractions else None


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--run', action='append', default=[],
                      help='NAME=WORKDIR of a finished run (repeat)')
  parser.add_argument('--plan', choices=sorted(PLANS), help='run the plan\'s runs here')
  parser.add_argument('--seeds', default='0,1')
  parser.add_argument('--variants', default=','.join(VARIANTS))
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                      help='config override for every planned run (JSON value)')
  parser.add_argument('--out', default=None, help='result JSON file name')
  parser.add_argument('--note', default='', help='conditions of the measurement')
  args = parser.parse_args(argv)
  if not args.run and not args.plan:
    parser.error('give --plan or at least one --run NAME=WORKDIR')
  runs = {}
  if args.plan:
    unknown = set(args.variants.split(',')) - set(VARIANTS)
    if unknown:
      parser.error(f'unknown variants {sorted(unknown)}; known: {", ".join(VARIANTS)}')
    overrides = {k: study.parse_value(v) for k, v in (x.split('=', 1) for x in args.set)}
    runs = run_plan(args.plan, [int(x) for x in args.seeds.split(',')],
                    args.variants.split(','), overrides)
    args.out = args.out or f'dispatch_e2e_{args.plan}_{common.machine()["device_kind"]}.json'
  elif not args.out:
    parser.error('--out is required with --run')
  for spec in args.run:
    name, _, workdir = spec.partition('=')
    runs[name] = summarize(workdir)
  print(f'{"run":<16s}{"ms/it":>8s}{"level":>7s}{"r":>6s}{"acc":>8s}  programs')
  for name, r in runs.items():
    fmt = lambda x, f, w: ('—' if x is None else format(x, f)).rjust(w)
    print(f'{name:<16s}{fmt(r["mean_ms_per_iteration"], ".1f", 8)}'
          f'{fmt(r["mean_scope_level"], ".2f", 7)}{fmt(r["mean_num_selected"], ".1f", 6)}'
          f'{r["final_test_accuracy"]:8.4f}  {r["program_counts"]}')
  payload = {'machine': common.machine(), 'load_average': os.getloadavg(),
             'note': args.note, 'plan': args.plan, 'runs': runs}
  if args.plan:
    payload['by_variant'] = by_variant(runs)
    print(f'{"variant":<24s}{"ms/it":>8s}{"× exact":>9s}{"full scope":>12s}{"acc":>8s}')
    for name, row in payload['by_variant'].items():
      full = row['full_scope_fraction']
      print(f"{name:<24s}{row['ms_per_iteration'] or 0:8.1f}{row['x_exact'] or 0:9.2f}"
            f"{'—' if full is None else f'{full:.2f}':>12s}{row['accuracy']:8.4f}")
  print('wrote', common.write_json(args.out, payload))
  return payload


if __name__ == '__main__':
  main()
