"""Meta-weights of clean and of noisy training examples during training.

The seed's supplementary Figure 1 shows, for CIFAR-10/100 with 60 % noise, the
distribution of MW-Net's weights of the *clean* training examples at 8K, 12K,
16K and 20K of 20K iterations, for MW-Net, Random MW-Net (4 random layers) and
MW-Net + FaMUS: FaMUS gives the clean examples larger weights. Here on digits
(60 % symmetric noise by default) at 40/60/80/100 % of the run, with the noisy
examples' distribution beside the clean ones. The weight of an example is the
meta model's output Ψ(ℓ_i; θ) ∈ (0, 1) (before the batch normalisation) at its
current eval-mode training loss; every training example is scored.

Per method and point (JSON): mean and median weight of clean / noisy examples,
mean relative weight (Ψ / mean Ψ over the training set, scale-free), the AUC of
Ψ for telling clean from noisy, histograms; and the clean test accuracy.

  python -m experiments.paper.weights_clean_vs_noisy --quick   # 600 its, 3 seeds: ~3 min on 2 cores
  python -m experiments.paper.weights_clean_vs_noisy           # 2000 its, 3 seeds

Writes experiments/results/weights_clean_vs_noisy[_quick].{json,png}.
"""

from __future__ import annotations

import argparse
import sys
import time

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_auc_score

from experiments import common
from experiments import digits_lab as lab

METHODS = {
    'mwnet': ('MW-Net', dict(sampler='all')),
    'random_s4': ('Random MW-Net (s=4)', dict(sampler='random', s=4)),
    'famus': ('MW-Net + FaMUS (K=4)', dict(sampler='famus', k=4, lambda2=0.0)),
}
BINS = np.linspace(0.0, 1.0, 41)


def describe(weights: np.ndarray, is_clean: np.ndarray) -> dict:
  rel = weights / (weights.mean() + 1e-30)
  clean, noisy = weights[is_clean], weights[~is_clean]
  both = 0 < is_clean.sum() < is_clean.size
  return {
      'clean_mean': float(clean.mean()) if clean.size else float('nan'),
      'noisy_mean': float(noisy.mean()) if noisy.size else float('nan'),
      'clean_median': float(np.median(clean)) if clean.size else float('nan'),
      'noisy_median': float(np.median(noisy)) if noisy.size else float('nan'),
      'clean_relative_mean': float(rel[is_clean].mean()) if clean.size else float('nan'),
      'noisy_relative_mean': float(rel[~is_clean].mean()) if noisy.size else float('nan'),
      'auc': float(roc_auc_score(is_clean, weights)) if both else float('nan'),
      'clean_hist': np.histogram(clean, BINS)[0].tolist(),
      'noisy_hist': np.histogram(noisy, BINS)[0].tolist(),
  }


def plot(path, payload):
  matplotlib.use('Agg')
  methods = payload['methods']
  points = payload['points']
  fig, axes = plt.subplots(len(methods), len(points), figsize=(3.3 * len(points),
                                                               2.5 * len(methods)),
                           sharex=True, squeeze=False)
  centers = 0.5 * (BINS[1:] + BINS[:-1])
  for i, name in enumerate(methods):
    for j, step in enumerate(points):
      ax = axes[i, j]
      per_seed = payload['results'][name]['points'][j]['per_seed']
      clean = np.sum([s['clean_hist'] for s in per_seed], 0).astype(float)
      noisy = np.sum([s['noisy_hist'] for s in per_seed], 0).astype(float)
      clean /= max(clean.sum(), 1)
      noisy /= max(noisy.sum(), 1)
      ax.bar(centers, clean, width=BINS[1] - BINS[0], color='C0', alpha=0.7, label='clean')
      ax.step(centers, noisy, where='mid', color='C3', label='noisy')
      agg = payload['results'][name]['points'][j]
      ax.set_title(f"{METHODS[name][0]}, it {step}\nclean {agg['clean_mean']:.2f} | "
                   f"noisy {agg['noisy_mean']:.2f} | AUC {agg['auc']:.2f}", fontsize=8)
      if j == 0:
        ax.set_ylabel('fraction of examples')
      if i == len(methods) - 1:
        ax.set_xlabel('weight Ψ(ℓ; θ)')
      if i == 0 and j == 0:
        ax.legend(fontsize=7)
  m = payload['machine']
  fig.suptitle(f"Meta-weights of clean vs noisy training examples — digits, "
               f"{payload['noise_rate']:.0%} {payload['noise_type']} noise, seeds "
               f"{payload['seeds']} ({m['device_kind']})", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  lab.add_common_flags(parser, steps=2000, quick_steps=600, smoke_steps=4)
  parser.add_argument('--methods', default=','.join(METHODS))
  parser.add_argument('--seeds', default=None, help='default 0,1,2 (smoke 0)')
  parser.add_argument('--noise-rate', type=float, default=0.6)
  parser.add_argument('--noise-type', default='symmetric')
  args = parser.parse_args(argv)
  steps = lab.resolve_steps(args)
  model = lab.SMOKE_MODEL if args.smoke else None
  methods = args.methods.split(',')
  unknown = set(methods) - set(METHODS)
  if unknown:
    parser.error(f'unknown methods {sorted(unknown)}; known: {", ".join(METHODS)}')
  seeds = [int(s) for s in (args.seeds or ('0' if args.smoke else '0,1,2')).split(',')]
  # The paper's 8K/12K/16K/20K of 20K iterations.
  points = sorted({max(1, int(round(f * steps))) for f in (0.4, 0.6, 0.8, 1.0)})
  lab.enable_compilation_cache(args.xla_cache)

  start = time.perf_counter()
  results = {}
  for name in methods:
    per_point = [[] for _ in points]
    accs = []
    for seed in seeds:
      if name == 'random_s4' and args.smoke:
        meta = dict(METHODS[name][1], s=2)
      else:
        meta = METHODS[name][1]
      config = lab.digits_config(
          steps=steps, model=model, seed=seed, meta=meta,
          data=dict(noise_type=args.noise_type, noise_rate=args.noise_rate))

      def at(capture, step):
        if step in points:
          per_point[points.index(step)].append(describe(capture.raw_weights(),
                                                        capture.is_clean))
      t0 = time.perf_counter()
      accs.append(lab.run(config, lab.Capture(at))['final_test_accuracy'])
      last = per_point[-1][-1]
      print(f"{name} seed {seed}: final clean {last['clean_mean']:.3f} noisy "
            f"{last['noisy_mean']:.3f} AUC {last['auc']:.3f}, test accuracy {accs[-1]:.3f} "
            f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    agg_points = []
    for step, runs in zip(points, per_point):
      agg = {'step': step, 'per_seed': runs}
      for key in ('clean_mean', 'noisy_mean', 'clean_median', 'noisy_median',
                  'clean_relative_mean', 'noisy_relative_mean', 'auc'):
        vals = [r[key] for r in runs]
        agg[key] = float(np.mean(vals))
        agg[key + '_std'] = float(np.std(vals))
      agg_points.append(agg)
    results[name] = {'label': METHODS[name][0], 'points': agg_points,
                     'test_accuracy': float(np.mean(accs)), 'test_accuracies': accs}

  payload = {
      'script': 'experiments.paper.weights_clean_vs_noisy',
      'quick': args.quick, 'smoke': args.smoke,
      'steps': steps, 'points': points, 'seeds': seeds, 'methods': methods,
      'noise_type': args.noise_type, 'noise_rate': args.noise_rate,
      'model': {'name': model[0], **model[1]}, 'bins': BINS.tolist(),
      'results': results, 'wall_s': time.perf_counter() - start,
      'machine': common.machine(),
  }
  results_dir = args.results_dir or common.RESULTS_DIR
  path = common.write_json(f'weights_clean_vs_noisy{lab.suffix(args)}.json', payload,
                           results_dir)
  plot(path[:-5] + '.png', payload)
  print(f"{'method':<24s}" + ''.join(f'{"it " + str(p):>22s}' for p in points) + '   test acc')
  for name, res in results.items():
    cells = ''.join(f"{p['clean_mean']:7.3f}/{p['noisy_mean']:.3f} {p['auc']:5.2f}"
                    for p in res['points'])
    print(f"{res['label']:<24s}{cells}   {res['test_accuracy']:.3f}")
  print('(cells: mean weight clean/noisy, AUC)')
  print('wrote', path, 'and', path[:-5] + '.png')
  return payload


if __name__ == '__main__':
  main()
