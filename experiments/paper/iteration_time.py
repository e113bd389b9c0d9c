"""Time per training iteration (the paper's Table 1/3/4 time columns) as ratios.

Every row is one full training iteration (Virtual-Train + Meta-Train +
Actual-Train, or a plain cross-entropy step) on the same model and batch,
compiled once, warmed up, then timed in interleaved rounds (every variant
once per round, median over rounds) so that a change of machine load affects
all rows alike. Rows are built with `experiments.benchmarks.benchmark_iteration.build`:

- plain CE step (the unit);
- MW-Net / L2R / MLC with the exact meta gradient and with FaMUS (K=4, L_r+L_g);
- ablation (Table 3): FaMUS with L_c only, +L_g, +L_r, all;
- Table 4: random s = 4/8/16 layers, a pre-specified residual block b
  (first / middle / last), FaMUS K=4;
- ours: FaMUS with a static candidate scope (top 8 layers) and with 4
  `lax.switch` pruning levels — the only variants whose compiled program can
  skip work (a gate passed as data under `jit` computes every layer's term and
  multiplies most of them by 0).

The paper's numbers are times on one V100 with WRN-28-10, batch 100; they are
compared as ratios to MW-Net exact (the paper gives no plain-step time).

  python -m experiments.paper.iteration_time --quick                      # CPU, minutes
  python -m experiments.paper.iteration_time --model=wrn28_10 --batch=100  # GPU (full)

Writes experiments/results/iteration_time_<host>[_quick].{json,png}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import famus_jax as fj
from experiments.benchmarks import benchmark_iteration as bench
from experiments import common
from experiments import digits_lab as lab
from famus_jax import models

Variant = bench.Variant


def famus_meta(**extra):
  return tuple(dict(sampler='famus', k=4, **extra).items())


def variants() -> list[Variant]:
  """All rows, in table order."""
  all_losses = dict(lambda1=0.1, lambda2=0.1)
  return [
      Variant('plain', None),
      Variant('mwnet_exact', 'mwnet', 'jvp'),
      Variant('mwnet_exact_reverse', 'mwnet', 'reverse'),
      Variant('mwnet_famus', 'mwnet', meta=famus_meta(**all_losses)),
      Variant('l2r_exact', 'l2r', 'jvp'),
      Variant('l2r_famus', 'l2r', meta=famus_meta(**all_losses)),
      Variant('mlc_exact', 'mlc', 'jvp'),
      Variant('mlc_famus', 'mlc', meta=famus_meta(**all_losses)),
      Variant('famus_Lc', 'mwnet', meta=famus_meta(lambda1=0.0, lambda2=0.0)),
      Variant('famus_Lc+Lg', 'mwnet', meta=famus_meta(lambda1=0.0, lambda2=0.1)),
      Variant('famus_Lc+Lr', 'mwnet', meta=famus_meta(lambda1=0.1, lambda2=0.0)),
      Variant('random_s4', 'mwnet', meta=(('sampler', 'random'), ('s', 4))),
      Variant('random_s8', 'mwnet', meta=(('sampler', 'random'), ('s', 8))),
      Variant('random_s16', 'mwnet', meta=(('sampler', 'random'), ('s', 16))),
      Variant('block_first', 'mwnet', meta=(('sampler', 'block'), ('b', 'first'))),
      Variant('block_middle', 'mwnet', meta=(('sampler', 'block'), ('b', 'middle'))),
      Variant('block_last', 'mwnet', meta=(('sampler', 'block'), ('b', 'last'))),
      Variant('famus_top8', 'mwnet', meta=famus_meta(candidate_layers='top:8', **all_losses)),
      Variant('famus_levels4', 'mwnet', meta=famus_meta(prune_levels=4, dispatch='switch',
                                                        **all_losses)),
  ]


QUICK = ('plain', 'mwnet_exact', 'mwnet_famus', 'l2r_exact', 'l2r_famus', 'mlc_exact',
         'mlc_famus', 'famus_Lc', 'famus_Lc+Lg', 'famus_Lc+Lr', 'random_s4', 'random_s8',
         'random_s16', 'block_first', 'block_middle', 'block_last', 'famus_top8',
         'famus_levels4')
SMOKE = ('plain', 'mwnet_exact', 'mwnet_famus', 'block_last')

# The paper (one V100, WRN-28-10, batch 100), ms per iteration (its timing table).
PAPER_MS = {
    'mwnet_exact': 933, 'mwnet_famus': 284, 'l2r_exact': 839, 'l2r_famus': 244,
    'mlc_exact': 265, 'mlc_famus': 84,  # MLC: WRN-40-2, batch 64
    'famus_Lc': 933, 'famus_Lc+Lg': 446, 'famus_Lc+Lr': 275,
    'block_b4': 718, 'block_b8': 569, 'block_b12': 326,
    'random_s4': 764, 'random_s8': 826, 'random_s16': 899,
}
PAPER_REFERENCE = {'mlc_exact': 'mlc_exact', 'mlc_famus': 'mlc_exact'}  # else mwnet_exact
PAPER_BLOCK = {'block_first': 'block_b4', 'block_middle': 'block_b8', 'block_last': 'block_b12'}


def paper_ratio(name: str):
  """The paper's time of a row ÷ its exact reference (None if not reported)."""
  key = PAPER_BLOCK.get(name, name)
  if key not in PAPER_MS:
    return None
  return PAPER_MS[key] / PAPER_MS[PAPER_REFERENCE.get(name, 'mwnet_exact')]


def measure(args, rows: list[Variant], model, train, val) -> dict:
  built = {}
  for variant in rows:
    t0 = time.perf_counter()
    parts, state = bench.build(args, variant, model, train['image'])
    if parts is None:
      print(f'  {variant.name:<22s} skipped (more layers than the model has)',
            file=sys.stderr)
      continue
    if variant.method is None:
      step, step_args = fj.jit_plain_train_step(parts.setup), (train,)
    else:
      step, step_args = bench.one_program(parts), (train, val)
    flops = common.compiled_flops(step, state, *step_args) if args.flops else None
    for _ in range(args.warmup):
      state = jax.block_until_ready(step(state, *step_args))[0]
    info = {'flops': flops, 'compile_and_warmup_s': time.perf_counter() - t0}
    if parts.sampler is not None:
      info['candidate_layers'] = parts.sampler.num_layers
    if variant.meta and dict(variant.meta).get('sampler') == 'block':
      params = state.params
      num = models.num_blocks(params)
      info['b'] = {'first': 1, 'middle': (num + 1) // 2, 'last': num}[dict(variant.meta)['b']]
      info['num_blocks'] = num
    built[variant.name] = [step, state, step_args, info, []]
    print(f'  {variant.name:<22s} compiled + warmed up in {info["compile_and_warmup_s"]:.1f} s',
          file=sys.stderr, flush=True)
  for _ in range(args.repeats):  # interleaved rounds
    for name, entry in built.items():
      step, state, step_args = entry[:3]
      start = time.perf_counter()
      entry[1] = jax.block_until_ready(step(state, *step_args))[0]
      entry[4].append((time.perf_counter() - start) * 1e3)
  out = {}
  for name, (_, _, _, info, times) in built.items():
    out[name] = {**info, 'ms': statistics.median(times), 'ms_all': times}
  plain = out['plain']
  exact = out.get('mwnet_exact')
  for name, row in out.items():
    row['ratio'] = row['ms'] / plain['ms']
    row['flops_ratio'] = row['flops'] / plain['flops'] if args.flops else None
    ref = out.get(PAPER_REFERENCE.get(name, 'mwnet_exact'), exact)
    row['ratio_to_exact'] = row['ms'] / ref['ms'] if ref else None
    row['paper_ratio_to_exact'] = paper_ratio(name)
  return out


def plot(path, payload):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = payload['rows']
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), gridspec_kw={'width_ratios': (1, 1, 1.5)})

  def bars(ax, names, labels, title, ylabel, key='ratio', paper=False):
    names = [n for n in names if n in rows]
    labels = [labels[n] for n in names]
    x = np.arange(len(names))
    width = 0.38 if paper else 0.6
    ours = [rows[n][key] for n in names]
    b = ax.bar(x - (width / 2 if paper else 0), ours, width, color='C0',
               label=f"ours ({payload['machine']['device_kind']})")
    for rect, v in zip(b, ours):
      ax.text(rect.get_x() + rect.get_width() / 2, rect.get_height(), f'{v:.2f}',
              ha='center', va='bottom', fontsize=7)
    if paper:
      ref = [rows[n]['paper_ratio_to_exact'] or 0 for n in names]
      b2 = ax.bar(x + width / 2, ref, width, color='C7', label='paper (V100, WRN-28-10)')
      for rect, v in zip(b2, ref):
        if v:
          ax.text(rect.get_x() + rect.get_width() / 2, rect.get_height(), f'{v:.2f}',
                  ha='center', va='bottom', fontsize=7)
    if key == 'ratio' and all(rows[n].get('flops_ratio') for n in names):
      ax.plot(x, [rows[n]['flops_ratio'] for n in names], 'k_', markersize=14,
              label="XLA FLOPs ÷ plain")
    ax.set_xticks(x, labels, rotation=45, ha='right', fontsize=7)
    ax.set(title=title, ylabel=ylabel)
    ax.legend(fontsize=7)

  main = ['plain', 'mwnet_exact', 'mwnet_famus', 'l2r_exact', 'l2r_famus', 'mlc_exact',
          'mlc_famus', 'famus_top8', 'famus_levels4']
  labels = {'plain': 'CE', 'mwnet_exact': 'MW-Net', 'mwnet_famus': 'MW-Net+FaMUS',
            'l2r_exact': 'L2R', 'l2r_famus': 'L2R+FaMUS', 'mlc_exact': 'MLC',
            'mlc_famus': 'MLC+FaMUS', 'famus_top8': 'FaMUS top-8 scope',
            'famus_levels4': 'FaMUS 4 prune levels'}
  bars(axes[0], main, labels, 'time per iteration ÷ plain CE step', '× plain step')
  abl = ['mwnet_exact', 'famus_Lc', 'famus_Lc+Lg', 'famus_Lc+Lr', 'mwnet_famus']
  labels = {'mwnet_exact': 'exact', 'famus_Lc': 'L_c', 'famus_Lc+Lg': 'L_c+L_g',
            'famus_Lc+Lr': 'L_c+L_r', 'mwnet_famus': 'all'}
  bars(axes[1], abl, labels, 'ablation (Table 3) ÷ MW-Net exact', '× MW-Net exact',
       key='ratio_to_exact', paper=True)
  t4 = ['block_first', 'block_middle', 'block_last', 'random_s4', 'random_s8',
        'random_s16', 'mwnet_famus', 'famus_top8']
  labels = {n: n for n in t4}
  for n in ('block_first', 'block_middle', 'block_last'):
    if n in rows:
      labels[n] = f"block b={rows[n].get('b')}\n(paper b={PAPER_BLOCK[n][7:]})"
  labels.update({'random_s4': 'random s=4', 'random_s8': 'random s=8',
                 'random_s16': 'random s=16', 'mwnet_famus': 'FaMUS K=4',
                 'famus_top8': 'FaMUS K=4\ntop-8 scope'})
  bars(axes[2], t4, labels, 'Table 4 rows ÷ MW-Net exact', '× MW-Net exact',
       key='ratio_to_exact', paper=True)
  for ax in axes[1:]:
    ax.axhline(1.0, color='gray', lw=0.5)
  fig.suptitle(f"Time per iteration — {payload['model']} (width {payload['width']}), "
               f"batch {payload['batch']}, {payload['image_size']}×{payload['image_size']}, "
               f"{payload['machine']['device_kind']}; median of {payload['repeats']} "
               "interleaved rounds")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--model', default='preact_resnet18')
  parser.add_argument('--width', type=int, default=None)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--image-size', type=int, default=32)
  parser.add_argument('--channels', type=int, default=3)
  parser.add_argument('--num-classes', type=int, default=10)
  parser.add_argument('--repeats', type=int, default=15, help='interleaved timing rounds')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--only', default=None, help='comma-separated row names')
  parser.add_argument('--no-flops', dest='flops', action='store_false',
                      help="skip XLA's FLOP count (one extra compile per row)")
  parser.add_argument('--quick', action='store_true',
                      help='PreActResNet-18 at width 8, 16×16, batch 32 (CPU, minutes)')
  parser.add_argument('--smoke', action='store_true', help='tiny CNN, 4 rows (tests)')
  parser.add_argument('--results-dir', default=None)
  parser.add_argument('--xla-cache', default=None)
  parser.add_argument('--out', default=None, help='result file stem')
  args = parser.parse_args(argv)
  if args.quick:
    args.width, args.image_size, args.batch = 8, 16, 32
  if args.smoke:
    args.model, args.width, args.image_size, args.batch = 'digits_cnn', 4, 8, 16
    args.repeats, args.warmup, args.flops = 2, 1, False
  lab.enable_compilation_cache(args.xla_cache)

  kwargs = {} if args.width is None else {'width': args.width}
  if args.smoke:
    kwargs['depth'] = 1
  model = models.get_model(args.model, num_classes=args.num_classes, **kwargs)
  rng = np.random.default_rng(0)
  shape = (args.batch, args.image_size, args.image_size, args.channels)
  train = {'image': jnp.asarray(rng.uniform(size=shape), jnp.float32),
           'label': jnp.asarray(rng.integers(0, args.num_classes, args.batch), jnp.int32)}
  val = {'image': jnp.asarray(rng.uniform(size=shape), jnp.float32),
         'label': jnp.asarray(rng.integers(0, args.num_classes, args.batch), jnp.int32)}

  names = (args.only.split(',') if args.only else
           SMOKE if args.smoke else QUICK if args.quick else [v.name for v in variants()])
  names = set(names) | {'plain'}
  rows_to_run = [v for v in variants() if v.name in names]
  start = time.perf_counter()
  rows = measure(args, rows_to_run, model, train, val)
  payload = {
      'script': 'experiments.paper.iteration_time', 'model': args.model, 'width': args.width,
      'batch': args.batch, 'image_size': args.image_size, 'num_classes': args.num_classes,
      'quick': args.quick, 'smoke': args.smoke, 'repeats': args.repeats,
      'rows': rows, 'paper_ms': PAPER_MS, 'wall_s': time.perf_counter() - start,
      'machine': common.machine(),
  }
  print(f"\n{args.model} width={args.width} batch={args.batch} image={args.image_size} "
        f"device={payload['machine']['device_kind']}")
  print(f'{"row":<22s}{"ms":>9s}{"× plain":>9s}{"× exact":>9s}{"paper × exact":>15s}'
        f'{"FLOPs × plain":>15s}')
  for name, row in rows.items():
    paper = row['paper_ratio_to_exact']
    fr = row['flops_ratio']
    print(f"{name:<22s}{row['ms']:9.1f}{row['ratio']:9.2f}"
          f"{row['ratio_to_exact'] or float('nan'):9.2f}"
          f"{paper if paper is not None else float('nan'):15.2f}"
          f"{fr if fr is not None else float('nan'):15.2f}")
  results_dir = args.results_dir or common.RESULTS_DIR
  stem = args.out or (f'iteration_time_{common.host_kind()}'
                      f'{"_smoke" if args.smoke else "_quick" if args.quick else ""}')
  path = common.write_json(stem + '.json', payload, results_dir)
  plot(path[:-5] + '.png', payload)
  print('wrote', path, 'and', path[:-5] + '.png')
  return payload


if __name__ == '__main__':
  main()
