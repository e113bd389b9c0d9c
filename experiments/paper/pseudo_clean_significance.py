"""Supplementary Table 2 on digits: is FaMUS better than MW-Net on the same pseudo-clean sets?

Both arms run Algorithm 2 (`famus_jax.train.train_and_evaluate`, configs/
digits_alg2.py: two co-trained networks, each one's GMM split is the other's
meta set, the semi-supervised term on the pseudo-noisy part) and differ only
in the Meta-Train step: "MW-Net + Pseudo-clean" uses the exact meta gradient
(`meta.sampler=all`), "FaMUS" the learned layer samplers (`meta.sampler=famus`,
K=4). For each noise rate, 3 seeds per arm: mean ± std of the final clean test
accuracy (the networks' ensemble, as Alg. 2 reports it) and a one-tailed
unpaired t-test (scipy, H1: FaMUS > MW-Net; Student's, and Welch's beside it).

The paper (CIFAR-10/100, PreAct ResNet-18, 300 epochs) reports FaMUS ahead
at p < 0.05 in all four columns, e.g. CIFAR-10 40 %: 93.64 ± 0.35 vs 95.37 ± 0.15.

  python -m experiments.paper.pseudo_clean_significance --quick     # 20 epochs; ~15 min on 2 cores
  python -m experiments.paper.pseudo_clean_significance             # 40 epochs (the config)

Writes experiments/results/pseudo_clean_significance[_quick].{json,md,png}.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from scipy import stats

from experiments import common
from experiments import digits_lab as lab
from experiments.paper import digits_study as study

ARMS = {'mwnet_pseudo_clean': ('MW-Net + Pseudo-clean', {'meta.sampler': 'all'}),
        'famus_pseudo_clean': ('FaMUS (ours) + Pseudo-clean', {'meta.sampler': 'famus'})}
PAPER = {  # supplementary Table 2 (mean, std)
    'CIFAR-10 40 %': {'mwnet_pseudo_clean': (93.64, 0.35), 'famus_pseudo_clean': (95.37, 0.15)},
    'CIFAR-10 60 %': {'mwnet_pseudo_clean': (92.91, 0.15), 'famus_pseudo_clean': (94.97, 0.11)},
    'CIFAR-100 40 %': {'mwnet_pseudo_clean': (74.61, 0.25), 'famus_pseudo_clean': (75.91, 0.19)},
    'CIFAR-100 60 %': {'mwnet_pseudo_clean': (70.55, 0.57), 'famus_pseudo_clean': (73.58, 0.28)},
}


def t_test(famus: list[float], mwnet: list[float]) -> dict:
  """One-tailed unpaired t-tests, H1: mean(famus) > mean(mwnet)."""
  out = {}
  if len(famus) < 2 or len(mwnet) < 2:
    return {'student_p': None, 'welch_p': None, 'student_t': None, 'welch_t': None}
  for name, equal in (('student', True), ('welch', False)):
    res = stats.ttest_ind(famus, mwnet, equal_var=equal, alternative='greater')
    t, p = float(res.statistic), float(res.pvalue)
    out[f'{name}_t'] = t if np.isfinite(t) else None
    out[f'{name}_p'] = p if np.isfinite(p) else None
  return out


def summarize(runs: list[dict], rates: list[float]) -> dict:
  """Per noise rate: each arm's mean, std (n − 1) and accuracies, and the t-tests."""
  table = {}
  for rate in rates:
    row = {}
    for arm in ARMS:
      acc = [r['final_test_accuracy'] for r in runs if r['arm'] == arm and r['noise_rate'] == rate]
      row[arm] = {'mean': float(np.mean(acc)),
                  'std': float(np.std(acc, ddof=1)) if len(acc) > 1 else 0.0,
                  'accuracies': acc}
    row['test'] = t_test(row['famus_pseudo_clean']['accuracies'],
                         row['mwnet_pseudo_clean']['accuracies'])
    table[str(rate)] = row
  return table


def paper_p_values() -> dict:
  """The paper's Table 2 t-tests recomputed from its means and stds (n = 3)."""
  out = {}
  for col, arms in PAPER.items():
    (m1, s1), (m2, s2) = arms['famus_pseudo_clean'], arms['mwnet_pseudo_clean']
    res = stats.ttest_ind_from_stats(m1, s1, 3, m2, s2, 3, equal_var=True,
                                     alternative='greater')
    out[col] = float(res.pvalue)
  return out


def markdown(payload) -> str:
  lines = ['| noise | MW-Net + Pseudo-clean | FaMUS + Pseudo-clean | one-tailed p (Student) '
           '| p (Welch) |', '|---|---|---|---|---|']
  for rate, row in payload['table'].items():
    a, b = row['mwnet_pseudo_clean'], row['famus_pseudo_clean']
    p1, p2 = row['test']['student_p'], row['test']['welch_p']
    fmt = lambda p: '—' if p is None else f'{p:.3f}'
    lines.append(f"| digits sym. {float(rate):.0%} | {100 * a['mean']:.2f} ± {100 * a['std']:.2f} "
                 f"| {100 * b['mean']:.2f} ± {100 * b['std']:.2f} | {fmt(p1)} | {fmt(p2)} |")
  for col, arms in PAPER.items():
    (m1, s1), (m2, s2) = arms['mwnet_pseudo_clean'], arms['famus_pseudo_clean']
    lines.append(f"| paper {col} | {m1:.2f} ± {s1:.2f} | {m2:.2f} ± {s2:.2f} | "
                 f"{payload['paper_p_values'][col]:.4f} (from the table) | — |")
  m = payload['machine']
  lines.append('')
  lines.append(f"Clean test accuracy (%), mean ± std (ddof 1) over seeds {payload['seeds']}, "
               f"{payload['epochs']} epochs of Alg. 2 on digits; {m['device_kind']} "
               f"({m['cpu_count']} cores).")
  return '\n'.join(lines) + '\n'


def plot(path, payload):
  matplotlib.use('Agg')
  rates = list(payload['table'])
  fig, ax = plt.subplots(figsize=(2.8 + 2.2 * len(rates), 4))
  width = 0.35
  for i, arm in enumerate(ARMS):
    means = [100 * payload['table'][r][arm]['mean'] for r in rates]
    stds = [100 * payload['table'][r][arm]['std'] for r in rates]
    x = np.arange(len(rates)) + (i - 0.5) * width
    ax.bar(x, means, width, yerr=stds, capsize=3, color=f'C{i}', alpha=0.8,
           label=ARMS[arm][0])
    for xi, r in zip(x, rates):
      pts = 100 * np.asarray(payload['table'][r][arm]['accuracies'])
      ax.plot(np.full(pts.shape, xi), pts, 'k.', ms=4)
  lo = min(100 * min(payload['table'][r][a]['accuracies']) for r in rates for a in ARMS)
  hi = max(100 * max(payload['table'][r][a]['accuracies']) for r in rates for a in ARMS)
  ax.set_ylim(max(0, lo - 5), min(100, hi + 4))
  for j, r in enumerate(rates):
    p = payload['table'][r]['test']['student_p']
    ax.text(j, min(100, hi + 1.5), 'p = —' if p is None else f'p = {p:.3f}', ha='center',
            fontsize=8)
  ax.set_xticks(range(len(rates)), [f'sym. {float(r):.0%}' for r in rates])
  ax.set_ylabel('clean test accuracy (%)')
  m = payload['machine']
  ax.set_title(f"Alg. 2 on digits, {payload['epochs']} epochs, seeds {payload['seeds']}\n"
               f"one-tailed unpaired t-test, H1: FaMUS > MW-Net ({m['device_kind']})",
               fontsize=9)
  ax.legend(fontsize=7, loc='lower left')
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
  parser.add_argument('--quick', action='store_true', help='20 epochs per run')
  parser.add_argument('--smoke', action='store_true', help='2 epochs, tiny model, 1 rate')
  parser.add_argument('--epochs', type=int, default=None, help='full 40, quick 20, smoke 2')
  parser.add_argument('--noise-rates', default=None, help='symmetric; default 0.4,0.6')
  parser.add_argument('--seeds', default=None, help='default 0,1,2 (smoke 0,1)')
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE')
  parser.add_argument('--results-dir', default=None)
  parser.add_argument('--xla-cache', default=None)
  args = parser.parse_args(argv)
  epochs = args.epochs or (2 if args.smoke else 20 if args.quick else 40)
  rates = [float(r) for r in (args.noise_rates or ('0.4' if args.smoke else '0.4,0.6')
                              ).split(',')]
  seeds = [int(s) for s in (args.seeds or ('0,1' if args.smoke else '0,1,2')).split(',')]
  overrides = {k: study.parse_value(v) for k, v in (i.split('=', 1) for i in args.set)}
  lab.enable_compilation_cache(args.xla_cache)

  start = time.perf_counter()
  runs = []
  for rate in rates:
    for arm, (_, arm_overrides) in ARMS.items():
      for seed in seeds:
        config = study.make_config('alg2', 'sym40', seed, epochs, args.smoke,
                                   {**overrides, **arm_overrides})
        config.data.noise_type, config.data.noise_rate = 'symmetric', rate
        row = {'arm': arm, 'noise_rate': rate, 'seed': seed, **study.run_one('alg2', config)}
        runs.append(row)
        print(f"{arm:<20s} {rate:.0%} seed {seed}: accuracy {row['final_test_accuracy']:.4f} "
              f"wall {row['wall_s']:.0f} s (total {time.perf_counter() - start:.0f} s)",
              file=sys.stderr, flush=True)
  table = summarize(runs, rates)
  payload = {
      'script': 'experiments.paper.pseudo_clean_significance',
      'quick': args.quick, 'smoke': args.smoke,
      'epochs': epochs, 'noise_rates': rates, 'seeds': seeds, 'overrides': overrides,
      'arms': {a: v[0] for a, v in ARMS.items()}, 'runs': runs, 'table': table,
      'paper': {c: {a: list(v) for a, v in arms.items()} for c, arms in PAPER.items()},
      'paper_p_values': paper_p_values(),
      'total_wall_s': time.perf_counter() - start, 'machine': common.machine(),
  }
  results_dir = args.results_dir or common.RESULTS_DIR
  stem = f'pseudo_clean_significance{lab.suffix(args)}'
  path = common.write_json(stem + '.json', payload, results_dir)
  md = markdown(payload)
  with open(os.path.join(results_dir, stem + '.md'), 'w') as f:
    f.write(md)
  plot(path[:-5] + '.png', payload)
  print(md)
  print(f"total {payload['total_wall_s']:.0f} s; wrote {path}, {stem}.md, {stem}.png")
  return payload


if __name__ == '__main__':
  main()
