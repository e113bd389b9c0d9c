"""The training forward pass, linearised once and reused by every stage.

`train_forward` runs the base network in train mode on the training batch and
keeps the VJP closure, so the Virtual-Train gradient (weights V) and the
Actual-Train gradient (weights V') are two cheap backward passes over one
forward, and the new batch-norm statistics come from that same forward.
"""

from typing import Any, Callable, NamedTuple, Optional

import jax

PyTree = Any
ApplyFn = Callable[..., Any]


def has_state(batch_stats: Optional[PyTree]) -> bool:
  """True when the model carries batch-norm running statistics."""
  return bool(jax.tree_util.tree_leaves(batch_stats))


def apply_model(apply_fn: ApplyFn, params: PyTree, batch_stats: Optional[PyTree],
                images: jax.Array, *, train: bool,
                rng: Optional[jax.Array] = None) -> tuple[jax.Array, Optional[PyTree]]:
  """Runs a Flax model: `(N, ...) -> (logits (N, C), new batch_stats or None)`.

  In train mode batch norm uses batch statistics and the returned running
  statistics are the updated ones; in eval mode they are returned unchanged.
  """
  rngs = {'dropout': rng} if (rng is not None and train) else None
  if not has_state(batch_stats):
    return apply_fn({'params': params}, images, train=train, rngs=rngs), batch_stats
  variables = {'params': params, 'batch_stats': batch_stats}
  if not train:
    return apply_fn(variables, images, train=False), batch_stats
  logits, mutated = apply_fn(variables, images, train=True,
                             mutable=['batch_stats'], rngs=rngs)
  return logits, mutated['batch_stats']


class TrainForward(NamedTuple):
  """A train-mode forward at w with its backward kept for reuse.

  Attributes:
    logits: (n, C) logits at w.
    vjp: maps a logits cotangent (n, C) to a params-shaped gradient (1-tuple).
    batch_stats: running statistics after this forward (None without BN).
    logits_fn: params -> logits with the same batch, RNG and statistics
      (used by the forward-mode meta-gradient path).
  """
  logits: jax.Array
  vjp: Callable[[jax.Array], tuple[PyTree]]
  batch_stats: Optional[PyTree]
  logits_fn: Callable[[PyTree], jax.Array]


def logits_function(apply_fn: ApplyFn, batch_stats: Optional[PyTree],
                    images: jax.Array, rng: Optional[jax.Array] = None
                    ) -> Callable[[PyTree], jax.Array]:
  """params -> (n, C) train-mode logits on `images` (the `logits_fn` of
  `train_forward`, rebuilt wherever the batch, statistics and RNG are known)."""
  return lambda p: apply_model(apply_fn, p, batch_stats, images, train=True, rng=rng)[0]


def train_forward(apply_fn: ApplyFn, params: PyTree, batch_stats: Optional[PyTree],
                  images: jax.Array, rng: Optional[jax.Array] = None) -> TrainForward:
  """Train-mode forward of the base network with its VJP."""

  def logits_and_stats(p):
    return apply_model(apply_fn, p, batch_stats, images, train=True, rng=rng)

  logits, vjp, new_stats = jax.vjp(logits_and_stats, params, has_aux=True)
  return TrainForward(logits, vjp, new_stats,
                      logits_function(apply_fn, batch_stats, images, rng))


def weighted_gradient(forward: TrainForward, meta_model, theta: PyTree,
                      weights: jax.Array, labels: jax.Array) -> PyTree:
  """`∇_w Σ_i V_i ℓ_i(f(x_i; w), θ)` from a kept forward; differentiable in θ, V."""
  objective = lambda logits: jax.numpy.sum(weights * meta_model.loss(theta, logits, labels))
  logits_cotangent = jax.grad(objective)(forward.logits)
  return forward.vjp(logits_cotangent)[0]
