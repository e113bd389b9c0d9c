"""Which layers does FaMUS select over training, and how does that change with K?

Trains MW-Net + FaMUS (L_r with λ1 = 0.1, so K matters) on digits with label
noise for each K and records the gates r ∈ {0,1}^L of every iteration (the
`gates` metric of `jit_meta_train_step`). Output, as in the seed's
supplementary Figure 2 (statistics of the sampled layers, CIFAR-100 60 %):

- a heat map layer × iteration (fraction of iterations in each bin that
  selected the layer) for the main K;
- the bar chart of selection counts per layer (main K);
- selection frequency per layer for every K, and the mean number of selected
  layers and the mean relative depth of the selected layers (0 = first layer,
  1 = last; 0.5 for uniform selection) per K.

  python -m experiments.paper.layer_selection --quick   # K = 1, 2, 4, 8; 600 its, 3 seeds: ~4 min
  python -m experiments.paper.layer_selection           # 2000 its

A run of the training loop (e.g. CIFAR-100, 60 % noise, on a GPU) logs the
per-layer selection frequency of every log interval (`layer_frequency` in
metrics.jsonl); the same figure from it:

  python -m experiments.paper.layer_selection --from-workdir=runs/c100_n60_famus

Writes experiments/results/layer_selection[_quick].{json,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import matplotlib
import matplotlib.pyplot as plt
import ml_collections
import numpy as np

from experiments import common
from experiments import digits_lab as lab
from famus_jax.training import build as build_lib


def run_one(k, seed, steps, model, lambda1, noise_type, noise_rate):
  """(capture, gates (steps, L), test accuracy) of one MW-Net + FaMUS run."""
  config = lab.digits_config(
      steps=steps, model=model, seed=seed,
      meta=dict(sampler='famus', k=k, lambda1=lambda1, lambda2=0.0),
      data=dict(noise_type=noise_type, noise_rate=noise_rate))
  capture = lab.Capture(keys=('gates',))
  summary = lab.run(config, capture)
  gates = np.asarray(jax.device_get(capture.metrics['gates']), np.float64)
  return capture, gates, summary['final_test_accuracy']


def summarize(gates: np.ndarray, bins: int) -> dict:
  steps, num_layers = gates.shape
  depth = np.linspace(0.0, 1.0, num_layers) if num_layers > 1 else np.zeros(1)
  selected = gates.sum(1)
  edges = np.linspace(0, steps, min(bins, steps) + 1).astype(int)
  heat = np.stack([gates[a:b].mean(0) for a, b in zip(edges[:-1], edges[1:]) if b > a], 1)
  half = steps // 2
  return {
      'counts': gates.sum(0).tolist(),
      'frequency': gates.mean(0).tolist(),
      'frequency_first_half': gates[:max(half, 1)].mean(0).tolist(),
      'frequency_second_half': gates[half:].mean(0).tolist(),
      'mean_selected': float(selected.mean()),
      'std_selected': float(selected.std()),
      'mean_relative_depth': float((gates @ depth).sum() / max(selected.sum(), 1.0)),
      'heatmap': heat.tolist(),             # (L, bins)
      'heatmap_bin_edges': edges.tolist(),
  }


def plot(path, payload):
  matplotlib.use('Agg')
  layers = payload['layers']
  main_k = str(payload['main_k'])
  main = payload['per_k'][main_k]
  fig = plt.figure(figsize=(14, 8.5))
  grid = fig.add_gridspec(2, 2, width_ratios=(1.6, 1))
  ax = fig.add_subplot(grid[0, 0])
  heat = np.asarray(main['heatmap'])
  edges = main['heatmap_bin_edges']
  im = ax.imshow(heat, aspect='auto', cmap='viridis', vmin=0, vmax=1, origin='lower',
                 extent=(edges[0], edges[-1], -0.5, len(layers) - 0.5),
                 interpolation='nearest')
  ax.set_yticks(range(len(layers)), layers, fontsize=7)
  ax.set(xlabel='iteration', title=f'FaMUS gates over training (K={main_k}): '
         'fraction of iterations selecting each layer')
  fig.colorbar(im, ax=ax, fraction=0.03)
  ax = fig.add_subplot(grid[0, 1])
  ax.barh(range(len(layers)), main['counts'], color='C0')
  ax.set_yticks(range(len(layers)), layers, fontsize=7)
  ax.set(xlabel='times selected', title=f'selection counts per layer (K={main_k})')
  ax = fig.add_subplot(grid[1, 0])
  for i, (k, row) in enumerate(sorted(payload['per_k'].items(), key=lambda kv: int(kv[0]))):
    ax.plot(range(len(layers)), row['frequency'], marker='o', color=f'C{i}',
            label=f"K={k}: {row['mean_selected']:.1f} selected, depth "
            f"{row['mean_relative_depth']:.2f}"
            + (f", acc {row['test_accuracy']:.3f}" if row['test_accuracy'] is not None else ''))
  ax.set_xticks(range(len(layers)), layers, rotation=70, fontsize=7)
  ax.set(ylabel='selection frequency', ylim=(-0.02, 1.02),
         title='selection frequency per layer for each K (forward order →)')
  ax.legend(fontsize=7)
  ax = fig.add_subplot(grid[1, 1])
  ks = sorted(int(k) for k in payload['per_k'])
  ax.plot(ks, [payload['per_k'][str(k)]['mean_selected'] for k in ks], 'o-',
          label='mean selected layers')
  ax.plot(ks, ks, ls='--', color='gray', label='K')
  ax.set(xlabel='K', ylabel='layers per iteration', title='L_r keeps about K layers on')
  ax.legend()
  m = payload['machine']
  fig.suptitle(f"FaMUS layer selection — MW-Net on digits, {payload['noise_rate']:.0%} "
               f"{payload['noise_type']} noise, {payload['steps']} iterations, seeds "
               f"{payload['seeds']} ({m['device_kind']})")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# Input shape and classes of the data sets, to name the layers of a logged run.
DATA_SHAPES = {'digits': ((8, 8, 1), 10), 'cifar10': ((32, 32, 3), 10),
               'cifar100': ((32, 32, 3), 100), 'cifar10_lt': ((32, 32, 3), 10),
               'cifar100_lt': ((32, 32, 3), 100), 'cnwl': ((32, 32, 3), 100),
               'clothing1m': ((224, 224, 3), 14), 'webvision': ((299, 299, 3), 50)}


def layer_names_of_run(config: dict, num_layers: int) -> list[str]:
  """Candidate layer names of a logged run (config.json); indices if unknown."""
  try:
    c = ml_collections.ConfigDict(config)
    shape, classes = DATA_SHAPES[c.data.name]
    if c.data.get('crop_size'):
      shape = (int(c.data.crop_size), int(c.data.crop_size), 3)
    parts = build_lib.build(c, num_classes=int(c.model.num_classes or classes),
                            image_shape=shape)
    names = parts.layer_names or []
    if len(names) == num_layers:
      return names
  except Exception as e:  # pylint: disable=broad-except
    print(f'layer names unavailable ({e}); using indices', file=sys.stderr)
  return [f'layer {i}' for i in range(num_layers)]


def from_workdir(workdir: str) -> dict:
  """Per-K summary from a training run's metrics.jsonl (`layer_frequency` rows)."""
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  rows = []
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      row = json.loads(line)
      if 'layer_frequency' in row:
        rows.append(row)
  if not rows:
    raise SystemExit(f'{workdir}/metrics.jsonl has no layer_frequency rows '
                     '(not a FaMUS run, or nothing logged yet)')
  steps = np.array([r['step'] for r in rows])
  freq = np.array([r['layer_frequency'] for r in rows])        # (rows, L)
  span = np.diff(np.concatenate([[0], steps]))                 # iterations per row
  meta_steps = np.array([r.get('meta_steps', s) for r, s in zip(rows, span)])
  counts = (freq * meta_steps[:, None]).sum(0)
  depth = np.linspace(0.0, 1.0, freq.shape[1])
  row = {
      'counts': counts.tolist(), 'frequency': (counts / max(meta_steps.sum(), 1)).tolist(),
      'mean_selected': float((freq * meta_steps[:, None]).sum() / max(meta_steps.sum(), 1)),
      'mean_relative_depth': float(counts @ depth / max(counts.sum(), 1e-9)),
      'heatmap': freq.T.tolist(), 'heatmap_bin_edges': [0] + steps.tolist(),
      'test_accuracy': None, 'test_accuracies': []}
  summary_path = os.path.join(workdir, 'summary.json')
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      row['test_accuracy'] = json.load(f).get('final_test_accuracy')
  k = int(config['meta']['k'])
  return {'script': 'experiments.paper.layer_selection', 'from_workdir': os.path.abspath(workdir),
          'steps': int(steps[-1]), 'seeds': [config.get('seed')], 'ks': [k], 'main_k': k,
          'lambda1': config['meta'].get('lambda1'),
          'noise_type': config['data']['noise_type'],
          'noise_rate': config['data']['noise_rate'], 'model': config['model'],
          'layers': layer_names_of_run(config, freq.shape[1]), 'per_k': {str(k): row},
          'machine': common.machine()}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  lab.add_common_flags(parser, steps=2000, quick_steps=600, smoke_steps=5)
  parser.add_argument('--ks', default=None, help='comma-separated K (default 1,2,4,8)')
  parser.add_argument('--main-k', type=int, default=4)
  parser.add_argument('--seeds', default=None, help='default 0,1,2 (smoke 0)')
  parser.add_argument('--lambda1', type=float, default=0.1)
  parser.add_argument('--noise-rate', type=float, default=0.6)
  parser.add_argument('--noise-type', default='symmetric')
  parser.add_argument('--bins', type=int, default=50)
  parser.add_argument('--from-workdir', default=None,
                      help='summarise a FaMUS training run (its metrics.jsonl) instead')
  args = parser.parse_args(argv)
  results_dir = args.results_dir or common.RESULTS_DIR
  if args.from_workdir:
    payload = from_workdir(args.from_workdir)
    stem = f"layer_selection_{args.tag or os.path.basename(os.path.normpath(args.from_workdir))}"
    path = common.write_json(stem + '.json', payload, results_dir)
    plot(path[:-5] + '.png', payload)
    print('wrote', path, 'and', path[:-5] + '.png')
    return payload
  steps = lab.resolve_steps(args)
  model = lab.SMOKE_MODEL if args.smoke else None
  ks = [int(k) for k in (args.ks or ('2' if args.smoke else '1,2,4,8')).split(',')]
  main_k = args.main_k if args.main_k in ks else ks[len(ks) // 2]
  seeds = [int(s) for s in (args.seeds or ('0' if args.smoke else '0,1,2')).split(',')]
  lab.enable_compilation_cache(args.xla_cache)

  start = time.perf_counter()
  per_k, layers = {}, None
  for k in ks:
    all_gates, accs = [], []
    for seed in seeds:
      t0 = time.perf_counter()
      capture, gates, accuracy = run_one(k, seed, steps, model, args.lambda1,
                                         args.noise_type, args.noise_rate)
      layers = capture.layer_names
      all_gates.append(gates)
      accs.append(accuracy)
      print(f'K={k} seed={seed}: mean selected {gates.sum(1).mean():.2f}, test accuracy '
            f'{accs[-1]:.3f} ({time.perf_counter() - t0:.0f} s)', file=sys.stderr, flush=True)
    row = summarize(np.concatenate(all_gates), args.bins) if len(seeds) > 1 else \
        summarize(all_gates[0], args.bins)
    if len(seeds) > 1:  # heat map over iterations: average the seeds bin by bin
      row['heatmap'] = np.mean([summarize(g, args.bins)['heatmap'] for g in all_gates],
                               0).tolist()
      row['heatmap_bin_edges'] = summarize(all_gates[0], args.bins)['heatmap_bin_edges']
    row['test_accuracy'] = float(np.mean(accs))
    row['test_accuracies'] = accs
    per_k[str(k)] = row

  payload = {
      'script': 'experiments.paper.layer_selection', 'quick': args.quick, 'smoke': args.smoke,
      'steps': steps, 'seeds': seeds, 'ks': ks, 'main_k': main_k,
      'lambda1': args.lambda1, 'noise_type': args.noise_type,
      'noise_rate': args.noise_rate, 'model': {'name': model[0], **model[1]},
      'layers': layers, 'per_k': per_k, 'wall_s': time.perf_counter() - start,
      'machine': common.machine(),
  }
  path = common.write_json(f'layer_selection{lab.suffix(args)}.json', payload, results_dir)
  plot(path[:-5] + '.png', payload)
  for k, row in per_k.items():
    top = np.argsort(row['frequency'])[::-1][:3]
    print(f"K={k}: mean selected {row['mean_selected']:.2f}, relative depth "
          f"{row['mean_relative_depth']:.2f}, most selected "
          f"{[layers[i] for i in top]}, test accuracy {row['test_accuracy']:.3f}")
  print('wrote', path, 'and', path[:-5] + '.png')
  return payload


if __name__ == '__main__':
  main()
