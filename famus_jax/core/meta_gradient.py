"""Meta-Train: the meta gradient `∇_θ (1/m) Σ_j L_j^val(ŵ(θ))`, two exact paths.

- `reverse`: `jax.grad` through the look-ahead (reverse over reverse): the
  readable reference.
- `jvp`: with `v = ∇_ŵ L^val` and `u = (∂U/∂g)ᵀ v` (`u = −α v` for plain SGD),
  `⟨v, dŵ/dθ⟩ = ⟨u, ∂g/∂θ⟩` and `⟨u, g(θ)⟩ = Σ_i V_i(θ) ∂ℓ_i(f(w), θ)[J u]`.
  One forward-mode product `J u` (restricted to the meta scope, so layers
  below it cost nothing) followed by a reverse pass through the small head
  `θ ↦ Σ_i V_i(θ) ∂ℓ_i[J u]`; for MLC, where θ enters ℓ, this is reverse over
  forward, for MW-Net and L2R just the VJP of V(θ).

The tangent pass `J u` is computed one of two ways (`TANGENT_PASSES`):
'transpose' transposes the training forward's kept VJP restricted to the
scope's leaves (the linear map `Jᵀ` read back as `J`): it reuses the forward's
residuals, so no forward runs again and only the scope's layers and those
above it take part; 'jvp' is `jax.jvp` of the forward, whose primal pass XLA
shares with the training forward only when every leaf carries a tangent (with
a partial scope its common-subexpression pass does not merge the two
forwards' batch-norm reductions, and the whole forward runs twice).
"""

import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from famus_jax import losses as losses_lib
from famus_jax.core import checks
from famus_jax.core import forward as forward_lib
from famus_jax.core import lookahead as lookahead_lib
from famus_jax.core import virtual as virtual_lib

PyTree = Any


class MetaGrad(NamedTuple):
  """Meta gradient and what came with it.

  Attributes:
    theta: ∇_θ L^val, shaped like θ.
    gate: ∂L^val/∂r per gated leaf (params-shaped), or None without gates.
    val_loss: mean validation loss at ŵ.
    virtual: the `VirtualStep` the gradient was taken through.
    val_grads: v = ∇_ŵ L^val on the leaves of the meta scope (others zero);
      None on the `reverse` path, which never forms v explicitly.
  """
  theta: PyTree
  gate: Optional[PyTree]
  val_loss: jax.Array
  virtual: virtual_lib.VirtualStep
  val_grads: PyTree


def validation_loss(apply_fn, params, batch_stats, batch, rng=None) -> jax.Array:
  """Mean CE on the validation batch in train mode (statistics discarded)."""
  logits, _ = forward_lib.apply_model(apply_fn, params, batch_stats, batch['image'],
                                      train=True, rng=rng)
  return losses_lib.mean_cross_entropy(logits, batch['label'])


def check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f'Unknown meta-gradient mode {mode!r} (config field '
                     f'meta.mode); known: {", ".join(sorted(MODES))}.')


def _reverse(fwd, theta, params, train_labels, val_batch, *, apply_fn, meta_model,
             lookahead, batch_stats, mask, gate, val_rng) -> MetaGrad:
  """jax.grad through Virtual-Train (reverse over reverse)."""

  def lookahead_val_loss(theta, gate):
    virtual = virtual_lib.virtual_from_forward(
        fwd, theta, params, train_labels, meta_model=meta_model,
        lookahead=lookahead, mask=mask, gate=gate)
    loss = validation_loss(apply_fn, virtual.params, batch_stats, val_batch, val_rng)
    return loss, virtual

  argnums = (0,) if gate is None else (0, 1)
  (loss, virtual), grads = jax.value_and_grad(
      lookahead_val_loss, argnums=argnums, has_aux=True)(theta, gate)
  gate_grad = None if gate is None else grads[1]
  return MetaGrad(grads[0], gate_grad, loss, virtual, None)  # v is never formed here


def _forward_mode(fwd, theta, params, train_labels, val_batch, *, apply_fn,
                  meta_model, lookahead, batch_stats, mask, gate, val_rng,
                  tangent=None, virtual=None, gate_grad: str = 'scope',
                  tangent_pass: str = 'auto') -> MetaGrad:
  """The fast exact path: one restricted tangent pass, then a VJP of the small head.

  `tangent`: a static frozenset of leaf names inside `mask` on which this
  program runs the tangent pass (None: all of `mask`); gates must be 0
  outside it. `gate_grad` says where ∂L^val/∂r is formed: 'scope' (the
  tangent scope; 0 for the other gated leaves) or 'all' (every leaf of
  `mask`, so the validation backward spans all of it). `tangent_pass`: a key
  of `TANGENT_PASSES` or 'auto' ('jvp' when every leaf of the network carries
  a tangent, else 'transpose').
  `virtual`: the ungated Virtual-Train step of `fwd`, if already computed.
  """
  if gate_grad not in GATE_GRADS:
    raise ValueError(f'Unknown gate gradient {gate_grad!r} (config field '
                     f'meta.gate_grad); known: {", ".join(GATE_GRADS)}.')
  if virtual is None:
    virtual = virtual_lib.virtual_from_forward(
        fwd, theta, params, train_labels, meta_model=meta_model,
        lookahead=lookahead, mask=mask)
  tangent_mask = mask if tangent is None else lookahead_lib.scope_mask(params, tangent)
  if tangent_pass == 'auto':
    every_leaf = all(jax.tree_util.tree_leaves(tangent_mask))
    tangent_pass = 'jvp' if every_leaf else 'transpose'
  if tangent_pass not in TANGENT_PASSES:
    raise ValueError(f'Unknown tangent pass {tangent_pass!r}; known: '
                     f'{", ".join(TANGENT_PASSES)}.')
  val_mask = mask if gate_grad == 'all' else tangent_mask
  theta_grad, gate_grad_tree, loss, v = _forward_mode_body(
      fwd, virtual, theta, params, train_labels, val_batch, val_mask, tangent_mask,
      gate, TANGENT_PASSES[tangent_pass], apply_fn=apply_fn, meta_model=meta_model,
      lookahead=lookahead, batch_stats=batch_stats, val_rng=val_rng)
  return MetaGrad(theta_grad, gate_grad_tree, loss, virtual, v)


def _jvp_tangent(fwd, params, tangent_mask, u_in):
  """J u by `jax.jvp` of the forward in the scope's leaves (a primal pass too)."""
  params_in, params_out = lookahead_lib.split_by_mask(params, tangent_mask)
  logits_of_scope = lambda inside: fwd.logits_fn(
      lookahead_lib.merge_by_mask(inside, params_out, tangent_mask))
  return jax.jvp(logits_of_scope, (params_in,), (u_in,))[1]


def _transposed_vjp_tangent(fwd, params, tangent_mask, u_in):
  """J u as the transpose of the kept VJP restricted to the scope's leaves:
  only the forward's residuals are read, and the part of the backward below
  the scope, which the restricted VJP does not need, never runs."""
  del params
  def scope_vjp(logits_cotangent):
    return lookahead_lib.split_by_mask(fwd.vjp(logits_cotangent)[0], tangent_mask)[0]
  shape = jax.ShapeDtypeStruct(fwd.logits.shape, fwd.logits.dtype)
  return jax.linear_transpose(scope_vjp, shape)(u_in)[0]


# config-free choice of how the tangent pass J u is computed (module docstring)
TANGENT_PASSES = {'jvp': _jvp_tangent, 'transpose': _transposed_vjp_tangent}


def _forward_mode_body(fwd, virtual, theta, params, train_labels, val_batch, mask,
                       tangent_mask, gate, tangent_fn, *, apply_fn, meta_model,
                       lookahead, batch_stats, val_rng):
  """(∇_θ, ∂/∂gate, val loss, v): v, u and ∂/∂gate on `mask`, the tangent pass
  (`tangent_fn`) on `tangent_mask` (a subset of `mask` outside which the
  gates are 0)."""
  params_hat = jax.lax.stop_gradient(virtual.params)
  grads = jax.lax.stop_gradient(virtual.grads)
  hat_in, hat_out = lookahead_lib.split_by_mask(params_hat, mask)

  def val_loss_of_scope(inside):
    full = lookahead_lib.merge_by_mask(inside, hat_out, mask)
    return validation_loss(apply_fn, full, batch_stats, val_batch, val_rng)

  loss, v_in = jax.value_and_grad(val_loss_of_scope)(hat_in)
  g_in, g_out = lookahead_lib.split_by_mask(grads, mask)

  # u = (∂U/∂g)ᵀ v, on the scope (U acts leaf by leaf).
  def update_of_scope(g_inside):
    return lookahead_lib.split_by_mask(
        lookahead(params, lookahead_lib.merge_by_mask(g_inside, g_out, mask)), mask)[0]
  _, update_vjp = jax.vjp(update_of_scope, g_in)
  u_in = update_vjp(v_in)[0]

  gate_grad = None
  if gate is not None:
    # ∂L^val/∂r = ⟨u, g⟩ per gated leaf (straight-through surrogate), then mask u.
    r_in, r_out = lookahead_lib.split_by_mask(gate, mask)
    gate_grad = lookahead_lib.merge_by_mask(
        [jnp.vdot(u, g).astype(jnp.result_type(r)) for u, g, r in zip(u_in, g_in, r_in)],
        [jnp.zeros_like(r) for r in r_out], mask)
    u_in = [r * u for r, u in zip(r_in, u_in)]

  # J u: forward-mode product through the base network, only from the scope.
  if tangent_mask is not mask:
    u_in = lookahead_lib.split_by_mask(lookahead_lib.merge_by_mask(
        u_in, [jnp.zeros_like(x) for x in hat_out], mask), tangent_mask)[0]
  with jax.named_scope('tangent'):
    logits_tangent = jax.lax.stop_gradient(tangent_fn(fwd, params, tangent_mask, u_in))

  def head(theta):
    weights = meta_model.weights(theta, virtual.losses)
    _, loss_tangent = jax.jvp(lambda lg: meta_model.loss(theta, lg, train_labels),
                              (fwd.logits,), (logits_tangent,))
    return jnp.sum(weights * loss_tangent)

  theta_grad = jax.grad(head)(theta)
  v = lookahead_lib.merge_by_mask(v_in, [jnp.zeros_like(x) for x in hat_out], mask)
  return theta_grad, gate_grad, loss, v


PATHS = {'reverse': _reverse, 'jvp': _forward_mode}
MODES = tuple(PATHS)  # config `meta.mode`
# config `meta.gate_grad`: where the sampler's ∂L^val/∂r is formed under pruning
GATE_GRADS = {
    'scope': 'the running scope only (0 for gated layers outside it): the '
             'validation backward stops at the scope',
    'all': 'every candidate layer (the straight-through gradient without pruning): '
           'the validation backward spans all candidates',
}


def meta_grad_from_forward(fwd, theta, params, train_labels, val_batch, *,
                           apply_fn, meta_model, lookahead, batch_stats=None,
                           mask=None, gate=None, val_rng=None,
                           mode: str = 'jvp', tangent=None,
                           virtual=None, gate_grad: str = 'scope',
                           tangent_pass: str = 'auto') -> MetaGrad:
  """Meta gradient from an already computed training forward (shared by steps).

  `tangent`: the static frozenset of leaf names this program's tangent pass
  covers (a nested scope of a layer sampler; None: all of `mask`),
  `gate_grad` where ∂L^val/∂r is formed, `tangent_pass` how J u is computed
  (`jvp` path only; the `reverse` reference always runs the full program).
  `virtual`: the ungated `VirtualStep` of `fwd` (same θ, look-ahead and mask)
  when the caller already computed it (`jvp` path: not computed again; the
  `reverse` path differentiates through its own).
  """
  if mask is None:
    mask = lookahead_lib.scope_mask(params, None)
  extra = ({} if mode == 'reverse' else
           {'tangent': tangent, 'virtual': virtual, 'gate_grad': gate_grad,
            'tangent_pass': tangent_pass})
  return PATHS[mode](fwd, theta, params, train_labels, val_batch,
                     apply_fn=apply_fn, meta_model=meta_model, lookahead=lookahead,
                     batch_stats=batch_stats, mask=mask, gate=gate, val_rng=val_rng,
                     **extra)


def meta_grad(theta: PyTree, params: PyTree, train_batch: dict, val_batch: dict, *,
              apply_fn, meta_model, lr=None, mode: str = 'jvp',
              batch_stats: Optional[PyTree] = None, rng: Optional[jax.Array] = None,
              lookahead_tx=None, lookahead_state=None,
              gate: Optional[PyTree] = None,
              scope: Optional[frozenset] = None) -> MetaGrad:
  """Gradient of the mean validation loss at ŵ(θ) with respect to θ.

  Args:
    theta: meta parameters in look-ahead form (`meta_model.lookahead_params`).
    params: base parameters w.
    train_batch: {'image': (n, ...), 'label': (n,)}.
    val_batch: {'image': (m, ...), 'label': (m,)}, clean validation examples.
    apply_fn, meta_model, lr, batch_stats, lookahead_tx, lookahead_state, gate,
      scope: as in `virtual_step`.
    mode: 'jvp' (fast, exact) or 'reverse' (jax.grad through the look-ahead);
      static under jit.
    rng: dropout RNG; split into the training and validation forwards.

  Returns:
    A `MetaGrad`; `.theta` is the meta gradient.
  """
  check_mode(mode)
  checks.check_batch(train_batch, 'train batch')
  checks.check_batch(val_batch, 'validation batch')
  checks.check_labels(apply_fn, params, batch_stats, train_batch, 'train batch')
  checks.check_labels(apply_fn, params, batch_stats, val_batch, 'validation batch')
  lookahead_lib.check_scope(params, scope)
  train_rng, val_rng = (None, None) if rng is None else jax.random.split(rng)
  fwd = forward_lib.train_forward(apply_fn, params, batch_stats,
                                  train_batch['image'], train_rng)
  return meta_grad_from_forward(
      fwd, theta, params, train_batch['label'], val_batch, apply_fn=apply_fn,
      meta_model=meta_model,
      lookahead=lookahead_lib.Lookahead(lr, lookahead_tx, lookahead_state),
      batch_stats=batch_stats, mask=lookahead_lib.scope_mask(params, scope),
      gate=gate, val_rng=val_rng, mode=mode)
