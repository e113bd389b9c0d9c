"""The gradient sampler network Γ(·; η_l) and the hard Gumbel-softmax gate."""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class GradientSampler(nn.Module):
  """`depth` dense layers, logits of (skip, select).

  depth 3 (the official FaMUS code, `GradGumbelSoftmax`): FC(D→h) + PReLU,
  FC(h→h) + PReLU, FC(h→2); depth 2 (the paper, Sec. 4.2: "two FC layers, FC1
  followed by a PReLU"): FC(D→h) + PReLU, FC(h→2).
  """
  hidden: int = 128
  depth: int = 3

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:  # (D,) -> (2,)
    x = features
    for _ in range(self.depth - 1):
      x = nn.PReLU(negative_slope_init=0.25)(nn.Dense(self.hidden)(x))
    return nn.Dense(2)(x)


def hard_gumbel_softmax(rng: jax.Array, logits: jax.Array, tau: float) -> jax.Array:
  """One-hot sample in the forward pass, softmax gradient (straight-through).

  Args:
    rng: PRNG key.
    logits: (..., K) unnormalised log-probabilities.
    tau: temperature of the soft sample.

  Returns:
    (..., K) one-hot values whose gradient is that of the soft sample
    `softmax((logits + Gumbel) / tau)`.
  """
  return straight_through(logits, jax.random.gumbel(rng, logits.shape, logits.dtype), tau)


def straight_through(logits: jax.Array, noise: jax.Array, tau: float) -> jax.Array:
  """`hard_gumbel_softmax` with given Gumbel noise (..., K): one-hot of
  argmax of the soft sample `softmax((logits + noise) / tau)`, its gradient."""
  soft = jax.nn.softmax((logits + noise) / tau, axis=-1)
  hard = jax.nn.one_hot(jnp.argmax(soft, axis=-1), logits.shape[-1], dtype=soft.dtype)
  return hard + (soft - jax.lax.stop_gradient(soft))  # exactly 0/1 in value


def stack_params(per_layer: Sequence[Any]) -> Any:
  """L parameter trees of one structure -> one tree of (L, ...) leaves, each
  leaf zero-padded at the end of every axis to the largest shape among the L
  (a Γ's first kernel (D_l, h) -> (max D_l, h))."""
  def stack(*leaves):
    shape = tuple(max(dims) for dims in zip(*(x.shape for x in leaves)))
    return jnp.stack([jnp.pad(x, [(0, t - d) for d, t in zip(x.shape, shape)])
                      if x.ndim else x for x in leaves])
  return jax.tree_util.tree_map(stack, *per_layer)
