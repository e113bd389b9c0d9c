"""Actual-Train: the real update of the base network with the new weights."""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from famus_jax.core import checks
from famus_jax.core import forward as forward_lib

PyTree = Any


class ActualStep(NamedTuple):
  """New base parameters, optimizer state and running statistics.

  `loss` is the weighted training loss `Σ_i V'_i ℓ_i` at w; `grads` its gradient.
  """
  params: PyTree
  opt_state: PyTree
  batch_stats: Optional[PyTree]
  grads: PyTree
  loss: jax.Array


def actual_from_forward(fwd: forward_lib.TrainForward, params: PyTree,
                        opt_state: PyTree, weights: jax.Array, labels: jax.Array, *,
                        meta_model, tx: optax.GradientTransformation,
                        theta: PyTree = None) -> ActualStep:
  """Actual-Train from an already computed training forward (one backward)."""
  weights = jax.lax.stop_gradient(weights)
  theta = jax.lax.stop_gradient(theta)
  grads = forward_lib.weighted_gradient(fwd, meta_model, theta, weights, labels)
  loss = jnp.sum(weights * meta_model.loss(theta, fwd.logits, labels))
  updates, opt_state = tx.update(grads, opt_state, params)
  return ActualStep(optax.apply_updates(params, updates), opt_state,
                    fwd.batch_stats, grads, loss)


def actual_step(params: PyTree, opt_state: PyTree, batch: dict, weights: jax.Array, *,
                apply_fn, meta_model, tx: optax.GradientTransformation,
                theta: PyTree = None, batch_stats: Optional[PyTree] = None,
                rng: Optional[jax.Array] = None) -> ActualStep:
  """One optimizer step on `Σ_i V'_i ℓ_i(w, θ')`, updating batch-norm statistics.

  Args:
    params, opt_state: base parameters and the optax state of `tx`.
    batch: {'image': (n, ...), 'label': (n,)}.
    weights: (n,) weights V' of the examples (`meta_model.weights(θ', losses)`).
    apply_fn, meta_model: as in `virtual_step`.
    tx: the base optimizer (e.g. SGD, momentum 0.9, weight decay, schedule).
    theta: meta parameters θ' when they enter the loss (MLC); else ignored.
    batch_stats: running statistics, updated by this train-mode forward.
    rng: dropout RNG.
  """
  checks.check_batch(batch, 'train batch')
  checks.check_labels(apply_fn, params, batch_stats, batch, 'train batch')
  if jnp.shape(weights) != jnp.shape(batch['label']):
    raise ValueError(f'weights must have shape {jnp.shape(batch["label"])} (one per '
                     f'example), got {jnp.shape(weights)}.')
  fwd = forward_lib.train_forward(apply_fn, params, batch_stats, batch['image'], rng)
  return actual_from_forward(fwd, params, opt_state, weights, batch['label'],
                             meta_model=meta_model, tx=tx, theta=theta)
