"""Inputs of the gradient samplers: pooled, standardised layer gradients."""

from typing import Sequence

import jax
import jax.numpy as jnp


def pool_tensor(grad: jax.Array) -> jax.Array:
  """Average over every axis but the last (output) one.

  Conv kernel (H, W, I, O) -> (O,); Dense kernel (I, O) -> (O,); a bias or a
  batch-norm scale (C,) as is; a scalar -> (1,).
  """
  if grad.ndim == 0:
    return grad[None]
  if grad.ndim == 1:
    return grad
  return jnp.mean(grad, axis=tuple(range(grad.ndim - 1)))


def pooled_layer_gradient(grads_by_path: dict, layer) -> jax.Array:
  """The layer's tensors pooled and concatenated, (D_l,)."""
  return jnp.concatenate([pool_tensor(grads_by_path['/'.join(p)]) for p in layer.paths])


def standardize(x: jax.Array, eps: float = 1e-8) -> jax.Array:
  """(x − mean) / std over the vector (zeros when it is constant)."""
  return (x - jnp.mean(x)) / (jnp.std(x) + eps)


# config `meta.sampler_input`: how a pooled layer gradient is fed to Γ_l.
SAMPLER_INPUTS = {
    'standardized': standardize,  # the official FaMUS code (`input_norm=True`)
    'pooled': lambda x: x,        # the paper (Eq. 8): the average-pooled gradient as is
}


def feature_dims(params_by_path: dict, layers: Sequence) -> tuple[int, ...]:
  """Length D_l of each layer's pooled gradient, from the parameters' shapes
  alone (nothing is allocated or compiled)."""
  def dim(path) -> int:
    shape = params_by_path['/'.join(path)].shape
    return jax.eval_shape(pool_tensor, jax.ShapeDtypeStruct(shape, jnp.float32)).shape[0]
  return tuple(int(sum(dim(p) for p in layer.paths)) for layer in layers)
