"""Virtual-Train: the differentiable look-ahead `ŵ(θ) = U(w, Σ_i V_i(θ) ∇_w ℓ_i(w))`.

A meta model whose look-ahead weights are identically zero (`zero_lookahead`:
L2R's ε = 0) has a zero look-ahead gradient, so `ŵ = U(w, 0)` (`= w` for plain
SGD) needs no backward pass (`lookahead_virtual`), and its layer sampler sees
the gradient at the meta model's `idle_params` instead (`sampler_grads`; L2R:
the mean gradient (1/n) Σ_i ∇_w ℓ_i, the look-ahead direction of uniform
weights, which MW-Net's sampler sees at uniform weights).
"""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from famus_jax.core import checks
from famus_jax.core import forward as forward_lib
from famus_jax.core import lookahead as lookahead_lib

PyTree = Any


class VirtualStep(NamedTuple):
  """Result of Virtual-Train.

  Attributes:
    params: ŵ, the look-ahead parameters (differentiable in θ).
    grads: g = ∇_w Σ_i V_i ℓ_i, the weighted training gradient (params-shaped).
    weights: (n,) look-ahead weights V_i(θ).
    losses: (n,) per-example training losses ℓ_i at w (stop-gradient).
    logits: (n, C) training logits at w.

  Running statistics of the train-mode forward are not returned: only
  `actual_step` updates batch-norm state.
  """
  params: PyTree
  grads: PyTree
  weights: Any
  losses: Any
  logits: Any


def virtual_from_forward(fwd: forward_lib.TrainForward, theta: PyTree,
                         params: PyTree, labels: jax.Array, *, meta_model,
                         lookahead: lookahead_lib.Lookahead,
                         mask: Optional[PyTree] = None,
                         gate: Optional[PyTree] = None) -> VirtualStep:
  """Virtual-Train from an already computed training forward (shared by steps)."""
  losses = jax.lax.stop_gradient(meta_model.loss(theta, fwd.logits, labels))
  weights = meta_model.weights(theta, losses)
  grads = forward_lib.weighted_gradient(fwd, meta_model, theta, weights, labels)
  if mask is None:
    mask = lookahead_lib.scope_mask(params, None)
  routed = lookahead_lib.route_gradient(grads, mask, gate)
  return VirtualStep(lookahead(params, routed), grads, weights, losses, fwd.logits)


def virtual_step(theta: PyTree, params: PyTree, batch: dict, *, apply_fn,
                 meta_model, lr=None, batch_stats: Optional[PyTree] = None,
                 rng: Optional[jax.Array] = None, lookahead_tx=None,
                 lookahead_state=None, gate: Optional[PyTree] = None,
                 scope: Optional[frozenset] = None) -> VirtualStep:
  """The look-ahead step, differentiable in the meta parameters θ.

  Args:
    theta: meta parameters as the meta model uses them in the look-ahead
      (for L2R the per-example ε of shape (n,), see `lookahead_params`).
    params: base network parameters w.
    batch: {'image': (n, ...), 'label': (n,) int}.
    apply_fn: a Flax `apply` whose module is called as `(x, train=bool)`.
    meta_model: an entry of `famus_jax.meta_models.META_MODELS`.
    lr: look-ahead learning rate α (plain SGD), used when `lookahead_tx` is None.
    batch_stats: batch-norm running statistics, or None.
    rng: dropout RNG for the train-mode forward.
    lookahead_tx, lookahead_state: the base optax optimizer and its state, to
      apply its momentum and weight decay in the look-ahead.
    gate: optional params-shaped tree of scalars r (FaMUS gates).
    scope: optional frozenset of leaf names that may carry the meta path.

  Returns:
    A `VirtualStep`; `.params` is ŵ(θ).
  """
  checks.check_batch(batch, 'train batch')
  checks.check_labels(apply_fn, params, batch_stats, batch, 'train batch')
  lookahead_lib.check_scope(params, scope)
  fwd = forward_lib.train_forward(apply_fn, params, batch_stats, batch['image'], rng)
  look = lookahead_lib.Lookahead(lr, lookahead_tx, lookahead_state)
  return virtual_from_forward(fwd, theta, params, batch['label'],
                              meta_model=meta_model, lookahead=look,
                              mask=lookahead_lib.scope_mask(params, scope),
                              gate=gate)


def zero_virtual(fwd: forward_lib.TrainForward, theta: PyTree, params: PyTree,
                 labels: jax.Array, *, meta_model,
                 lookahead: lookahead_lib.Lookahead) -> VirtualStep:
  """Virtual-Train at weights V(θ) ≡ 0: g = 0 and ŵ = U(w, 0), no backward pass.

  Equal in value to `virtual_from_forward` there; the meta gradient follows
  from the tangent pass alone, dL^val/dε_i = ⟨u, ∇_w ℓ_i(w)⟩ with
  u = (∂U/∂g)ᵀ ∇L^val(ŵ) (plain SGD: −α ⟨∇L^val(w), ∇_w ℓ_i(w)⟩).
  """
  losses = jax.lax.stop_gradient(meta_model.loss(theta, fwd.logits, labels))
  grads = jax.tree_util.tree_map(jnp.zeros_like, params)
  return VirtualStep(lookahead(params, grads), grads,
                     meta_model.weights(theta, losses), losses, fwd.logits)


def lookahead_virtual(fwd: forward_lib.TrainForward, meta_params: PyTree,
                      params: PyTree, labels: jax.Array, *, meta_model,
                      lookahead: lookahead_lib.Lookahead,
                      mask: Optional[PyTree] = None) -> VirtualStep:
  """The ungated Virtual-Train of a training step, at the meta model's
  look-ahead θ (`zero_virtual` when its weights are identically zero)."""
  theta = meta_model.lookahead_params(meta_params, labels.shape[0])
  if meta_model.zero_lookahead:
    return zero_virtual(fwd, theta, params, labels, meta_model=meta_model,
                        lookahead=lookahead)
  return virtual_from_forward(fwd, theta, params, labels, meta_model=meta_model,
                              lookahead=lookahead, mask=mask)


def sampler_grads(fwd: forward_lib.TrainForward, virtual: VirtualStep,
                  meta_params: PyTree, labels: jax.Array, *, meta_model) -> PyTree:
  """The training gradient a layer sampler reads (params-shaped): the look-ahead
  gradient, or with `zero_lookahead` the gradient at `idle_params` (one
  backward pass; L2R: (1/n) Σ_i ∇_w ℓ_i)."""
  if not meta_model.zero_lookahead:
    return virtual.grads
  theta = meta_model.idle_params(meta_params, labels.shape[0])
  weights = meta_model.weights(theta, virtual.losses)
  return forward_lib.weighted_gradient(fwd, meta_model, theta, weights, labels)
