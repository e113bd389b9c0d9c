"""Minimal XLA:CPU reproducer: a residual conv chain's gradient grows quadratically.

Standalone (jax + numpy only). A chain of L residual units
`x <- relu(affine(conv3x3(x)) + x)` at 16 channels, 32x32, batch 100: the
filter gradient of every convolution is emitted as a convolution of the
input transposed to [C, H, W, N]; XLA:CPU fuses the whole elementwise
producer chain of that input (the affines, ReLUs and residual adds back to
the first unit) into the transpose fusion of every layer, so the work of the
backward pass grows as L² while the forward grows as L. The same gradient
with the filter gradient written as matrix products of the (materialised)
input grows linearly.

Prints, per L: forward ms, gradient ms (XLA's convolution), gradient ms
(filter gradient as per-tap dot products), and the number of operands of
the largest transpose fusion in the compiled gradient (≈ 3L with the bug,
instead of 1).

  python experiments/cpu/xla_cpu_conv_backward_repro.py
"""

import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

DN = ('NHWC', 'HWIO', 'NHWC')


def xla_conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN)


@jax.custom_vjp
def dot_conv(x, w):
  return xla_conv(x, w)


def _dot_conv_fwd(x, w):
  return xla_conv(x, w), (x, w)


def _dot_conv_bwd(res, g):
  x, w = res
  dx = xla_conv(g, jnp.flip(w, (0, 1)).swapaxes(2, 3))
  gp = jnp.pad(g, ((0, 0), (1, 1), (1, 1), (0, 0)))
  n, h, wd, c = x.shape
  x_flat = x.reshape(-1, c)
  taps = [lax.dot_general(x_flat, gp[:, 2 - a:2 - a + h, 2 - b:2 - b + wd].reshape(-1, g.shape[-1]),
                          (((0,), (0,)), ((), ())))
          for a in range(3) for b in range(3)]
  return dx, jnp.stack(taps).reshape(w.shape)


dot_conv.defvjp(_dot_conv_fwd, _dot_conv_bwd)


def loss(params, x, conv):
  for w, scale, bias in params:
    x = jax.nn.relu(conv(x, w) * scale + bias + x)
  return jnp.mean(x ** 2)


def timed(fn, *args, repeats=3):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - start) * 1e3)
  return statistics.median(times)


def largest_transpose_fusion(compiled_text: str) -> int:
  counts = [line.count('%') - 2 for line in compiled_text.splitlines()  # name, calls=
            if re.search(r'%transpose[\w.]*fusion[\w.]* = ', line)]
  return max(counts, default=0)


def main(depths=(2, 4, 8, 16)):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((100, 32, 32, 16)), jnp.float32)
  print(f'jax {jax.__version__}, {jax.devices()[0].device_kind}')
  print(f'{"L":>3s}{"fwd ms":>9s}{"grad ms (xla)":>15s}{"grad ms (dots)":>16s}'
        f'{"operands of largest transpose fusion":>38s}')
  for depth in depths:
    params = [(jnp.asarray(rng.standard_normal((3, 3, 16, 16)) * 0.05, jnp.float32),
               jnp.ones(16), jnp.zeros(16)) for _ in range(depth)]
    fwd = jax.jit(lambda p, x: loss(p, x, xla_conv))
    grad = jax.jit(jax.grad(lambda p, x: loss(p, x, xla_conv)))
    grad_dots = jax.jit(jax.grad(lambda p, x: loss(p, x, dot_conv)))
    operands = largest_transpose_fusion(grad.lower(params, x).compile().as_text())
    print(f'{depth:3d}{timed(fwd, params, x):9.1f}{timed(grad, params, x):15.1f}'
          f'{timed(grad_dots, params, x):16.1f}{operands:38d}', flush=True)


if __name__ == '__main__':
  main(tuple(int(d) for d in sys.argv[1:]) or (2, 4, 8, 16))
