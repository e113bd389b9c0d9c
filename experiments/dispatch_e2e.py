"""Exact vs FaMUS over whole training runs: ms per iteration from the
training loop's own log, the programs that ran, final accuracy.

Reads finished run workdirs (`metrics.jsonl`, `summary.json`) and writes one
JSON. A log row's `step_time_s` is its wall time per iteration; the first row
(first compilations) and any row in which a program compiled (host dispatch
compiles a scope program when first chosen) are left out of the mean and
counted separately.

  python -m famus_jax.main --config=configs/digits.py --workdir=/tmp/d_exact \\
      --config.meta.sampler=all
  python -m famus_jax.main --config=configs/digits.py --workdir=/tmp/d_famus \\
      --config.meta.prune_levels=4
  python -m experiments.dispatch_e2e --run exact=/tmp/d_exact --run famus=/tmp/d_famus \\
      --out=dispatch_e2e_digits.json
"""

import argparse
import json
import os
import statistics

from experiments import common


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


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--run', action='append', required=True,
                      help='NAME=WORKDIR of a finished run (repeat)')
  parser.add_argument('--out', required=True, help='result JSON file name')
  parser.add_argument('--note', default='', help='conditions of the measurement')
  args = parser.parse_args(argv)
  runs = {}
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
             'note': args.note, 'runs': runs}
  print('wrote', common.write_json(args.out, payload))
  return payload


if __name__ == '__main__':
  main()
