"""One ResNet-32 convolution on XLA:CPU: layouts and gradient formulations.

For each stage shape of ResNet-32 at batch 100 (3x3, 16/32/64 channels, and
the two stride-2 convolutions), times in one process, interleaved, medians:
the forward, and the gradient of `sum(conv(x, w) * g)` w.r.t. (x, w) with
XLA's convolution in NHWC (the models' layout), in NCHW, and with the CPU
convolution of famus_jax.models.cpu_conv (NHWC).

  python -m experiments.cpu.cpu_conv_layouts [--repeats 5]

Writes experiments/results/cpu_conv_layouts.json.
"""

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from experiments import common
from famus_jax.models import cpu_conv

SHAPES = [(100, 32, 16, 16, 1), (100, 32, 16, 32, 2), (100, 16, 32, 32, 1),
          (100, 16, 32, 64, 2), (100, 8, 64, 64, 1)]
PADS = ((1, 1), (1, 1))


def programs(stride):
  """name -> (jitted fn(x_nhwc, w, g_nhwc), takes NCHW inputs)."""
  nhwc = lambda x, w: lax.conv_general_dilated(x, w, (stride,) * 2, PADS,
                                               dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  nchw = lambda x, w: lax.conv_general_dilated(x, w, (stride,) * 2, PADS,
                                               dimension_numbers=('NCHW', 'OIHW', 'NCHW'))
  ours = lambda x, w: cpu_conv.conv_nhwc(x, w, (stride,) * 2, PADS)
  grad = lambda conv: jax.jit(jax.grad(lambda x, w, g: jnp.sum(conv(x, w) * g), (0, 1)))
  return {'forward_nhwc': (jax.jit(lambda x, w, g: nhwc(x, w)), False),
          'forward_nchw': (jax.jit(lambda x, w, g: nchw(x, w)), True),
          'grad_xla_nhwc': (grad(nhwc), False),
          'grad_xla_nchw': (grad(nchw), True),
          'grad_cpu_conv_nhwc': (grad(ours), False)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--out', default='cpu_conv_layouts.json')
  args = parser.parse_args(argv)
  rng = np.random.default_rng(0)
  rows = {}
  for n, h, c, o, s in SHAPES:
    x = jnp.asarray(rng.standard_normal((n, h, h, c)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, c, o)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((n, h // s, h // s, o)), jnp.float32)
    nchw_args = (x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), g.transpose(0, 3, 1, 2))
    progs = programs(s)
    inputs = {name: (nchw_args if is_nchw else (x, w, g)) for name, (_, is_nchw) in progs.items()}
    for name, (fn, _) in progs.items():
      jax.block_until_ready(fn(*inputs[name]))
    times = {name: [] for name in progs}
    for _ in range(args.repeats):
      for name, (fn, _) in progs.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(*inputs[name]))
        times[name].append((time.perf_counter() - start) * 1e3)
    key = f'{h}x{h}x{c}->{o} stride {s}'
    rows[key] = {name: statistics.median(t) for name, t in times.items()}
    print(key, ' '.join(f'{k} {v:.1f}' for k, v in rows[key].items()), flush=True)
  payload = {'machine': common.machine(), 'load_average': os.getloadavg(),
             'shared_machine_note': 'measured while other jobs ran on the same CPUs',
             'repeats': args.repeats, 'ms': rows}
  print('wrote', common.write_json(args.out, payload))


if __name__ == '__main__':
  main()
