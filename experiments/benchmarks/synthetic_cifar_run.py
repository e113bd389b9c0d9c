"""A short CIFAR-shaped training run on synthetic data: end-to-end time per method.

The public CIFAR sets cannot be downloaded on the machines this project runs
on, so this measures what `iteration_time` cannot: consecutive training
iterations (data, host→device copies, the jitted step, metrics) of the real
backbone on CIFAR-shaped data (32×32×3, 10 classes): 5,000 training images
drawn around 10 random class prototypes, 40 % symmetric label noise, a clean
meta set of 10 per class, 1,000 test images. Per method: steady-state time per
iteration (median, after the first, compiling, one), iterations per second,
training loss and clean test accuracy after the run.

  python -m experiments.benchmarks.synthetic_cifar_run --quick   # CPU: PreActResNet-18 at width 8
  python -m experiments.benchmarks.synthetic_cifar_run --model=wrn28_10 --batch=100
      # GPU: 300 iterations

Writes experiments/results/synthetic_cifar_<host>[_quick].{json,png}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from experiments import common
from experiments import digits_lab as lab
from famus_jax import data as data_lib
from famus_jax.data import noise as noise_lib

METHODS = {
    'ce': ('CE', 'ce', {}),
    'mwnet': ('MW-Net (exact)', 'mwnet', {}),
    'mwnet_famus': ('MW-Net + FaMUS (K=4)', 'mwnet', {'sampler': 'famus', 'lambda2': 0.1}),
    'mwnet_famus_top8': ('MW-Net + FaMUS, top-8 scope', 'mwnet',
                         {'sampler': 'famus', 'lambda2': 0.1, 'candidate_layers': 'top:8'}),
}


def synthetic_cifar(seed: int = 0, num_train: int = 5000, num_test: int = 1000,
                    per_class_meta: int = 10, size: int = 32, noise: float = 0.4,
                    num_classes: int = 10) -> data_lib.DataSplits:
  """Gaussian clusters around random class prototypes, CIFAR-shaped, noisy labels."""
  rng = np.random.default_rng(seed)
  protos = rng.uniform(0.0, 1.0, size=(num_classes, size, size, 3)).astype(np.float32)

  def draw(n):
    y = rng.integers(0, num_classes, n).astype(np.int32)
    x = 0.5 * protos[y] + 0.5 * rng.uniform(0.0, 1.0, (n, size, size, 3)).astype(np.float32)
    return x, y

  x, y = draw(num_train + per_class_meta * num_classes)
  meta_idx = np.concatenate([np.flatnonzero(y == c)[:per_class_meta] for c in range(num_classes)])
  rest = np.setdiff1d(np.arange(len(y)), meta_idx)
  noisy, report = noise_lib.apply_noise(y[rest], num_classes, 'symmetric', noise, seed)
  xt, yt = draw(num_test)
  return data_lib.DataSplits(
      train=data_lib.ArraySource(x[rest], noisy, y[rest]),
      meta=data_lib.ArraySource(x[meta_idx], y[meta_idx]),
      test=data_lib.ArraySource(xt, yt), num_classes=num_classes,
      image_shape=(size, size, 3),
      info={'name': 'synthetic_cifar', 'realised_noise_rate': report.get('realised_noise_rate')})


class Timing(lab.Capture):
  """The time of each training iteration, from the end of the one before
  (the first: from the start of the run, with its compilation)."""

  def __init__(self):
    super().__init__(keys=('loss',))
    self.times, self.last = [], None

  def on_start(self, trainer):
    super().on_start(trainer)
    self.last = time.perf_counter()

  def after_iteration(self, trainer, member, step, host, metrics):
    jax.block_until_ready(metrics['loss'])
    now = time.perf_counter()
    self.times.append(now - self.last)
    super().after_iteration(trainer, member, step, host, metrics)
    self.last = time.perf_counter()  # the capture's own work left out


def run(name, data, args, model):
  label, method, meta = METHODS[name]
  config = lab.digits_config(
      steps=args.steps, method=method, meta={'sampler': 'all', **meta}, model=model,
      data=dict(batch_size=args.batch, meta_batch_size=args.batch), optim=dict(lr=args.lr))
  timing = Timing()
  start = time.perf_counter()
  summary = lab.run(config, timing, splits=data)
  wall = time.perf_counter() - start
  times, losses = timing.times, [float(v) for v in jax.device_get(timing.metrics['loss'])]
  steady = times[1:] or times
  return {'label': label, 'ms_per_iteration': 1e3 * statistics.median(steady),
          'first_iteration_s': times[0], 'iterations_per_s': 1.0 / statistics.median(steady),
          'wall_s': wall, 'loss': losses, 'final_loss': float(np.mean(losses[-10:])),
          'test_accuracy': summary['final_test_accuracy']}


def plot(path, payload):
  matplotlib.use('Agg')
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for i, (name, row) in enumerate(payload['rows'].items()):
    t = row['first_iteration_s'] + np.arange(len(row['loss'])) * row['ms_per_iteration'] / 1e3
    axes[0].plot(t, row['loss'], color=f'C{i}', label=row['label'])
  axes[0].set(xlabel='time (s, steady-state rate after the first iteration)',
              ylabel='training loss (noisy labels)', title='loss vs time')
  axes[0].legend(fontsize=7)
  names = list(payload['rows'])
  ms = [payload['rows'][n]['ms_per_iteration'] for n in names]
  axes[1].bar(range(len(names)), ms, color=[f'C{i}' for i in range(len(names))])
  for i, v in enumerate(ms):
    axes[1].text(i, v, f'{v:.0f} ms\n{v / ms[0]:.2f}×', ha='center', va='bottom', fontsize=7)
  axes[1].set_xticks(range(len(names)), [payload['rows'][n]['label'] for n in names],
                     rotation=20, ha='right', fontsize=7)
  axes[1].set(ylabel='ms per iteration (median)', title='time per iteration')
  m = payload['machine']
  fig.suptitle(f"Synthetic CIFAR-shaped run — {payload['model']} (width {payload['width']}), "
               f"batch {payload['batch']}, {payload['steps']} iterations ({m['device_kind']})")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--model', default='wrn28_10')
  parser.add_argument('--width', type=int, default=None)
  parser.add_argument('--batch', type=int, default=100)
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--lr', type=float, default=0.05)
  parser.add_argument('--methods', default=','.join(METHODS))
  parser.add_argument('--quick', action='store_true',
                      help='PreActResNet-18 at width 8, batch 32, 40 iterations (CPU)')
  parser.add_argument('--smoke', action='store_true', help='tiny CNN, 3 iterations (tests)')
  parser.add_argument('--results-dir', default=None)
  parser.add_argument('--xla-cache', default=None)
  args = parser.parse_args(argv)
  if args.quick:
    args.model, args.width, args.batch, args.steps = 'preact_resnet18', 8, 32, 40
  size, kwargs = 32, {}
  if args.smoke:
    args.model, args.batch, args.steps, size = 'digits_cnn', 16, 3, 8
    kwargs = {'width': 4, 'depth': 1}
    if args.methods == ','.join(METHODS):
      args.methods = 'ce,mwnet_famus'
  if args.width is not None:
    kwargs['width'] = args.width
  lab.enable_compilation_cache(args.xla_cache)
  data = synthetic_cifar(size=size, num_train=500 if args.smoke else 5000,
                         num_test=100 if args.smoke else 1000)
  rows = {}
  for name in args.methods.split(','):
    rows[name] = run(name, data, args, (args.model, kwargs))
    r = rows[name]
    print(f"{name:<18s} {r['ms_per_iteration']:9.1f} ms/it  first {r['first_iteration_s']:.1f} s  "
          f"loss {r['final_loss']:.3f}  test acc {r['test_accuracy']:.3f}", file=sys.stderr,
          flush=True)
  first = next(iter(rows.values()))
  for r in rows.values():
    r['ratio_to_first'] = r['ms_per_iteration'] / first['ms_per_iteration']
  payload = {'script': 'experiments.benchmarks.synthetic_cifar_run',
             'model': args.model, 'width': args.width,
             'batch': args.batch, 'steps': args.steps, 'image_size': size,
             'quick': args.quick, 'smoke': args.smoke, 'data': data.info,
             'rows': rows, 'machine': common.machine()}
  results_dir = args.results_dir or common.RESULTS_DIR
  stem = f'synthetic_cifar_{common.host_kind()}{lab.suffix(args)}'
  path = common.write_json(stem + '.json', payload, results_dir)
  plot(path[:-5] + '.png', payload)
  print('wrote', path, 'and', path[:-5] + '.png')
  return payload


if __name__ == '__main__':
  main()
