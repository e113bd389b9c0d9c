"""CPU throughput of ResNet-32 steps: famus_jax (each conv_impl) beside PyTorch.

One process, interleaved rounds (every row is called once per round, in
turn), medians over rounds: on a shared machine the load falls on all rows
alike. Rows: the plain cross-entropy step and the exact MW-Net iteration
(JVP meta-gradient) for `conv_impl` 'xla' and 'cpu', and, when `torch` is
importable, the same two steps in PyTorch (experiments/cpu/torch_resnet32.py,
torch.set_num_threads = CPU count or --torch-threads). Reports wall and process CPU time per
call, ratios to PyTorch, and XLA's cost-analysis FLOPs per second (the FLOPs
of the JAX program of the same row; PyTorch rows use those of 'xla').

  python -m experiments.cpu.cpu_vs_torch                 # ResNet-32, batch 100
  python -m experiments.cpu.cpu_vs_torch --quick         # width 4, batch 16

Writes experiments/results/cpu_vs_torch[_quick].json.
"""

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import famus_jax as fj
from famus_jax import models
from experiments.benchmarks import benchmark_iteration as bench
from experiments import common

IMPLS = ('xla', 'cpu')


STEPS = {'plain': bench.Variant('plain', None), 'mwnet': bench.Variant('mwnet', 'mwnet', 'jvp')}


def jax_step(args, model, step: str, train, val, with_flops: bool = True) -> list:
  """[call, flops] of one compiled step ('plain' or 'mwnet') of `model`; call() runs it once.

  with_flops=False skips XLA's cost analysis (a second compilation); flops is then None.
  """
  variant = STEPS[step]
  parts, state = bench.build(args, variant, model, train['image'])
  if variant.method is None:
    fn, fargs = fj.jit_plain_train_step(parts.setup), (train,)
  else:
    fn, fargs = fj.jit_meta_train_step(parts.setup), (train, val)
  flops = common.compiled_flops(fn, state, *fargs) if with_flops else None
  holder = {'state': state}

  def call():
    holder['state'] = jax.block_until_ready(fn(holder['state'], *fargs))[0]
  return [call, flops]


def jax_rows(args, train, val) -> dict:
  """name -> [call, flops] for the JAX rows."""
  rows = {}
  for impl in IMPLS:
    model = models.get_model('resnet32', num_classes=10, width=args.width,
                             depth=args.depth, conv_impl=impl)
    for step in args.steps:
      rows[f'jax_{impl}_{step}'] = jax_step(args, model, step, train, val)
  return rows


def torch_rows(args, train, val) -> dict:
  """name -> [call, flops] for the PyTorch rows ({} without torch)."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
    from experiments.cpu import torch_resnet32  # pylint: disable=import-outside-toplevel
  except ImportError:
    print('torch is not installed: PyTorch rows skipped', file=sys.stderr)
    return {}
  torch.set_num_threads(args.torch_threads or os.cpu_count())
  torch.manual_seed(0)
  steps = torch_resnet32.Steps(torch_resnet32.ResNet32(width=args.width,
                                                       n=(args.depth - 2) // 6))
  as_torch = lambda b: (torch.from_numpy(np.asarray(b['image']).transpose(0, 3, 1, 2).copy()),
                        torch.from_numpy(np.asarray(b['label']).astype(np.int64)))
  (x, y), (xv, yv) = as_torch(train), as_torch(val)
  rows = {'torch_plain': [lambda: steps.plain(x, y), None],
          'torch_mwnet': [lambda: steps.meta(x, y, xv, yv), None]}
  rows = {k: v for k, v in rows.items() if k.split('_')[1] in args.steps}
  return {**rows, '_params': torch_resnet32.param_count(steps.model)}


def timed_rounds(rows: dict, rounds: int, warmup: int = 2) -> dict:
  """Interleaved rounds: name -> {'wall_ms': [...], 'cpu_ms': [...]}."""
  for _ in range(warmup):
    for call, _ in rows.values():
      call()
  times = {name: {'wall_ms': [], 'cpu_ms': []} for name in rows}
  for _ in range(rounds):
    for name, (call, _) in rows.items():
      wall, cpu = time.perf_counter(), time.process_time()
      call()
      times[name]['wall_ms'].append((time.perf_counter() - wall) * 1e3)
      times[name]['cpu_ms'].append((time.process_time() - cpu) * 1e3)
  return times


def summarise(rows: dict, times: dict) -> dict:
  out = {}
  for name, (_, flops) in rows.items():
    step = name.rsplit('_', 1)[1]
    flops = flops if flops is not None else rows[f'jax_xla_{step}'][1]
    wall = statistics.median(times[name]['wall_ms'])
    out[name] = {'wall_ms': wall, 'cpu_ms': statistics.median(times[name]['cpu_ms']),
                 'wall_ms_all': times[name]['wall_ms'], 'flops': flops,
                 'gflops_per_s': flops / wall / 1e6}
  for name, row in out.items():
    step = name.rsplit('_', 1)[1]
    ref = out.get(f'torch_{step}')
    if ref:
      row['wall_vs_torch'] = row['wall_ms'] / ref['wall_ms']
      row['cpu_vs_torch'] = row['cpu_ms'] / ref['cpu_ms']
    row['wall_vs_xla'] = row['wall_ms'] / out[f'jax_xla_{step}']['wall_ms']
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batch', type=int, default=100)
  parser.add_argument('--width', type=int, default=16)
  parser.add_argument('--depth', type=int, default=32, help='6n + 2')
  parser.add_argument('--rounds', type=int, default=7)
  parser.add_argument('--steps', default='plain,mwnet', help='comma-separated: plain, mwnet')
  parser.add_argument('--torch-threads', type=int, default=None,
                      help='torch.set_num_threads (default: the CPU count)')
  parser.add_argument('--quick', action='store_true', help='width 4, batch 16, 2 rounds')
  parser.add_argument('--out', default=None)
  args = parser.parse_args(argv)
  args.steps = args.steps.split(',')
  if args.quick:
    args.width, args.batch, args.rounds = 4, 16, 2
  args.num_classes = 10
  rng = np.random.default_rng(0)
  batch = lambda: {'image': jnp.asarray(rng.uniform(size=(args.batch, 32, 32, 3)), jnp.float32),
                   'label': jnp.asarray(rng.integers(0, 10, args.batch), jnp.int32)}
  train, val = batch(), batch()
  rows = jax_rows(args, train, val)
  extra = torch_rows(args, train, val)
  torch_params = extra.pop('_params', None)
  rows.update(extra)
  load_before = os.getloadavg()
  times = timed_rounds(rows, args.rounds)
  table = summarise(rows, times)
  print(f'\nResNet-32 width {args.width}, batch {args.batch}, {args.rounds} interleaved rounds, '
        f'load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f} '
        f'({os.cpu_count()} CPUs, shared machine)')
  print(f'{"row":<18s}{"wall ms":>10s}{"cpu ms":>10s}{"× torch":>9s}{"× xla":>8s}{"GFLOP/s":>9s}')
  for name, row in table.items():
    print(f'{name:<18s}{row["wall_ms"]:10.1f}{row["cpu_ms"]:10.1f}'
          f'{row.get("wall_vs_torch", float("nan")):9.2f}{row["wall_vs_xla"]:8.2f}'
          f'{row["gflops_per_s"]:9.1f}')
  payload = {'model': 'resnet32', 'width': args.width, 'batch': args.batch,
             'rounds': args.rounds, 'quick': args.quick, 'machine': common.machine(),
             'load_average_before': load_before, 'load_average_after': os.getloadavg(),
             'shared_machine_note': 'measured while other jobs ran on the same CPUs',
             'torch_version': __import__('torch').__version__ if extra else None,
             'torch_threads': args.torch_threads or os.cpu_count(),
             'torch_param_count': torch_params, 'rows': table}
  name = args.out or f'cpu_vs_torch{"_quick" if args.quick else ""}.json'
  print('wrote', common.write_json(name, payload))
  return payload


if __name__ == '__main__':
  main()
