"""Batch norm + ReLU (+ residual add) in one function with a compact derivative.

`bn_relu_train(x, scale, bias, residual, epsilon)` computes, with batch
statistics over all axes but the last (Flax's `nn.BatchNorm` in train mode,
`use_fast_variance=True`),

    out = relu((x - mean) * rsqrt(var + epsilon) * scale + bias [+ residual])

and returns `(out, mean, var)`. Its derivative is a `jax.custom_jvp` rule
written with the normalised input `x̂` and the ReLU mask `out > 0`:

    dx̂   = inv · (dx − mean(dx) − x̂ · mean(x̂ · dx))
    dout = mask · (scale · dx̂ + dscale · x̂ + dbias + dresidual)

so forward mode (`jax.jvp`), reverse mode (JAX transposes the linear rule) and
any nesting of them work; a `custom_vjp` would rule out `jax.jvp`.

`BatchNormReLU` is the Flax module; its variables are those of
`nn.BatchNorm` (params `scale`, `bias`; batch_stats `mean`, `var`), so a model
keeps its parameter tree whichever form it uses.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax
import flax.linen as nn


def _stats(x):
  """Per-channel batch mean and (fast, clipped) variance of (..., C) -> (C,), (C,)."""
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axes)
  var = jnp.maximum(0.0, jnp.mean(x * x, axes) - mean * mean)
  return mean, var


def _forward(x, scale, bias, residual, epsilon):
  """(out, mean, var, x̂, inv) with Flax's order of operations."""
  mean, var = _stats(x)
  inv = lax.rsqrt(var + epsilon)
  xc = x - mean
  y = xc * (inv * scale) + bias
  if residual is not None:
    y = y + residual
  return jax.nn.relu(y), mean, var, xc * inv, inv


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def bn_relu_train(x, scale, bias, residual, epsilon: float):
  """relu(BN_train(x) [+ residual]), batch mean and variance.

  Args:
    x: (..., C) input (float32 or float64).
    scale, bias: (C,) affine parameters.
    residual: None or an array of x's shape, added before the ReLU.
    epsilon: variance offset.
  Returns:
    out (x's shape), mean (C,), var (C,).
  """
  return _forward(x, scale, bias, residual, epsilon)[:3]


@bn_relu_train.defjvp
def _bn_relu_jvp(epsilon, primals, tangents):
  x, scale, bias, residual = primals
  dx, dscale, dbias, dresidual = tangents
  out, mean, var, xhat, inv = _forward(x, scale, bias, residual, epsilon)
  axes = tuple(range(x.ndim - 1))
  dmean = jnp.mean(dx, axes)
  proj = jnp.mean(xhat * dx, axes)
  dxhat = inv * (dx - dmean - xhat * proj)
  dy = scale * dxhat + dscale * xhat + dbias
  if residual is not None:
    dy = dy + dresidual
  dout = jnp.where(out > 0, dy, jnp.zeros_like(dy))
  dvar = 2.0 * proj / inv  # d mean((x - mean)²) = 2 mean((x - mean) dx)
  return (out, mean, var), (dout, dmean, dvar)


class BatchNormReLU(nn.Module):
  """relu(BatchNorm(x) [+ residual]) with `nn.BatchNorm`'s variables and defaults.

  Train mode uses `bn_relu_train` (batch statistics, running averages updated
  as `nn.BatchNorm` does, not while initialising); eval mode the running
  averages.
  """
  use_running_average: bool
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Optional[Any] = None
  param_dtype: Any = jnp.float32
  scale_init: Callable = nn.initializers.ones
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x, residual=None):
    """x: (..., C); residual: None or x's shape. Returns x's shape, `dtype`."""
    features = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, features, jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, features, jnp.float32)
    scale = self.param('scale', self.scale_init, features, self.param_dtype)
    bias = self.param('bias', self.bias_init, features, self.param_dtype)
    dtype = self.dtype or jnp.result_type(x)
    stat_dtype = jnp.promote_types(dtype, jnp.float32)
    x = jnp.asarray(x, stat_dtype)
    residual = None if residual is None else jnp.asarray(residual, stat_dtype)
    if self.use_running_average:
      y = (x - ra_mean.value) * (lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
      out = jax.nn.relu(y if residual is None else y + residual)
    else:
      out, mean, var = bn_relu_train(x, scale, bias, residual, self.epsilon)
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return jnp.asarray(out, dtype)
