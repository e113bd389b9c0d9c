"""One training iteration: Virtual-Train, Meta-Train, Actual-Train, composed.

The training forward runs once: its VJP gives both the look-ahead gradient (V)
and the real one (V'), and its batch statistics are the ones kept.
"""

import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from famus_jax import losses as losses_lib
from famus_jax.core import actual as actual_lib
from famus_jax.core import forward as forward_lib
from famus_jax.core import lookahead as lookahead_lib
from famus_jax.core import meta_gradient as meta_grad_lib
from famus_jax.core import virtual as virtual_lib
from famus_jax.core.protocols import MetaStepContext
from famus_jax.core.train_state import StepSetup, TrainState

PyTree = Any
# Metrics with one value per training example (n,), not scalars.
PER_EXAMPLE_METRICS = ('weights', 'example_loss', 'prediction')


def make_lookahead(setup: StepSetup, state: TrainState) -> lookahead_lib.Lookahead:
  """The look-ahead rule of this iteration.

  Plain SGD at the meta model's `lookahead_lr` (the current base lr α, or a
  fixed inner rate such as MLC's 1e-3), or the base optimizer's update.
  """
  if setup.lookahead == 'optimizer':
    return lookahead_lib.Lookahead(tx=setup.tx, opt_state=state.opt_state)
  return lookahead_lib.Lookahead(
      lr=setup.meta_model.lookahead_lr(setup.lr_schedule(state.step)))


def update_meta_params(setup: StepSetup, state: TrainState, theta: PyTree,
                       grad: PyTree, batch_size: int):
  """The meta step: (meta_params, meta_opt_state, θ' in look-ahead form).

  Persistent θ takes a meta optimizer step; otherwise the meta model's
  `meta_update(θ, grad)` gives θ' (L2R's ε', MLC's T') and the state keeps
  its (unused) meta params.
  """
  model = setup.meta_model
  if not model.persistent:
    return state.meta_params, state.meta_opt_state, model.meta_update(theta, grad)
  updates, meta_opt_state = setup.meta_tx.update(grad, state.meta_opt_state,
                                                 state.meta_params)
  meta_params = optax.apply_updates(state.meta_params, updates)
  return meta_params, meta_opt_state, model.lookahead_params(meta_params, batch_size)


def weight_metrics(weights: jax.Array, batch: dict) -> dict:
  """Meta-weight statistics; with 'true_label' in the batch, clean vs noisy means."""
  metrics = {'weight_mean': jnp.mean(weights), 'weight_std': jnp.std(weights)}
  if 'true_label' in batch:
    clean = (batch['true_label'] == batch['label']).astype(weights.dtype)
    noisy = 1.0 - clean
    metrics['weight_clean'] = jnp.sum(weights * clean) / jnp.maximum(jnp.sum(clean), 1)
    metrics['weight_noisy'] = jnp.sum(weights * noisy) / jnp.maximum(jnp.sum(noisy), 1)
    metrics['clean_fraction'] = jnp.mean(clean)
  return metrics


def example_metrics(losses: jax.Array, logits: jax.Array) -> dict:
  """Per-example metrics of every step: the training loss each example enters the
  update with (MW-Net, L2R: cross-entropy; MLC: corrected with the iteration's
  T), and the class the network predicts (arg max of the training logits)."""
  return {'example_loss': jax.lax.stop_gradient(losses),
          'prediction': jnp.argmax(logits, axis=-1).astype(jnp.int32)}


def _meta_step_context(setup: StepSetup, state: TrainState, fwd, mg, theta, labels,
                       val_batch, val_rng, selection, begin_state) -> MetaStepContext:
  """What the layer sampler's `finish` reads after Meta-Train."""
  def lookahead_grads(theta):
    weights = setup.meta_model.weights(theta, mg.virtual.losses)
    return forward_lib.weighted_gradient(fwd, setup.meta_model, theta, weights, labels)

  val_grads = mg.val_grads
  if val_grads is None:  # the reverse path never forms v
    val_grads = jax.grad(lambda p: meta_grad_lib.validation_loss(
        setup.apply_fn, p, state.batch_stats, val_batch, val_rng))(
            jax.lax.stop_gradient(mg.virtual.params))
  return MetaStepContext(selection=selection, begin_state=begin_state, meta_grad=mg,
                         theta=theta, theta_grad=mg.theta,
                         lookahead_grads=lookahead_grads, val_grads=val_grads)


class MetaBegin(NamedTuple):
  """The first part of a meta iteration, handed to the second (a pytree).

  Attributes:
    logits: (n, C) training logits at w.
    vjp: the training forward's VJP (a pytree of its residuals).
    batch_stats: running statistics after the training forward.
    virtual: the ungated Virtual-Train `VirtualStep` (None without a sampler).
    sampler_grads: the training gradient the sampler reads (None without a
      sampler; `virtual_lib.sampler_grads`).
    selection: the sampler's gates (`.level`: int32 scope index), or None.
    begin_state: the sampler's `begin` state (e.g. the gates' VJP), or None.
    rng, fwd_rng, val_rng: the next state key and this iteration's keys.
  """
  logits: jax.Array
  vjp: Any
  batch_stats: Any
  virtual: Optional[virtual_lib.VirtualStep]
  sampler_grads: Any
  selection: Any
  begin_state: Any
  rng: jax.Array
  fwd_rng: jax.Array
  val_rng: jax.Array


def forward_and_virtual(state: TrainState, train_batch: dict, setup: StepSetup
                        ) -> tuple[MetaBegin, jax.Array]:
  """(MetaBegin without gates, the sampler's key): training forward (its VJP
  kept) and, with a sampler, the ungated Virtual-Train whose gradient feeds
  the gates."""
  rng, fwd_rng, val_rng, sampler_rng = jax.random.split(state.rng, 4)
  labels = train_batch['label']
  with jax.named_scope('train_forward'):
    fwd = forward_lib.train_forward(setup.apply_fn, state.params, state.batch_stats,
                                    train_batch['image'], fwd_rng)
  virtual = sampler_grads = None
  if setup.sampler is not None:
    with jax.named_scope('virtual_train'):
      virtual = virtual_lib.lookahead_virtual(
          fwd, state.meta_params, state.params, labels, meta_model=setup.meta_model,
          lookahead=make_lookahead(setup, state),
          mask=lookahead_lib.scope_mask(state.params, setup.scope))
      sampler_grads = virtual_lib.sampler_grads(fwd, virtual, state.meta_params, labels,
                                                meta_model=setup.meta_model)
  return MetaBegin(fwd.logits, fwd.vjp, fwd.batch_stats, virtual, sampler_grads, None,
                   None, rng, fwd_rng, val_rng), sampler_rng


def meta_begin(state: TrainState, train_batch: dict, *, setup: StepSetup) -> MetaBegin:
  """Training forward (its VJP kept), Virtual-Train backward and the sampler's
  gates: everything the choice of the meta scope depends on (Algorithm 1:
  the gates of this iteration, Eq. 8)."""
  begin, sampler_rng = forward_and_virtual(state, train_batch, setup)
  if setup.sampler is None:
    return begin
  with jax.named_scope('sampler'):
    selection, begin_state = setup.sampler.begin(state.sampler_params,
                                                 begin.sampler_grads, sampler_rng)
  return begin._replace(selection=selection, begin_state=begin_state)


def _virtual_train(setup: StepSetup, state: TrainState, begin: MetaBegin,
                   fwd: forward_lib.TrainForward, labels):
  """`begin`'s Virtual-Train; on the jvp path without one, computed here
  (the reverse path forms it inside Meta-Train)."""
  if begin.virtual is not None or setup.mode != 'jvp':
    return begin.virtual
  with jax.named_scope('virtual_train'):
    return virtual_lib.lookahead_virtual(
        fwd, state.meta_params, state.params, labels, meta_model=setup.meta_model,
        lookahead=make_lookahead(setup, state),
        mask=lookahead_lib.scope_mask(state.params, setup.scope))


def _sampler_finish(setup: StepSetup, state: TrainState, begin: MetaBegin,
                    fwd: forward_lib.TrainForward, mg, theta, labels, val_batch: dict):
  """(θ gradient, sampler params, sampler optimizer state, sampler metrics):
  the sampler's update after Meta-Train; without a sampler, the meta gradient
  and the state's sampler fields unchanged."""
  if setup.sampler is None:
    return mg.theta, state.sampler_params, state.sampler_opt_state, {}
  ctx = _meta_step_context(setup, state, fwd, mg, theta, labels, val_batch,
                           begin.val_rng, begin.selection, begin.begin_state)
  with jax.named_scope('sampler'):
    return setup.sampler.finish(ctx, state.sampler_params, state.sampler_opt_state)


def meta_finish(state: TrainState, begin: MetaBegin, train_batch: dict, val_batch: dict,
                *, setup: StepSetup, scope: Optional[frozenset] = None,
                tangent_pass: str = 'auto') -> tuple[TrainState, dict]:
  """The rest of a meta iteration after `meta_begin`: Meta-Train (its tangent
  pass on the static `scope`, a frozenset of leaf names holding every
  selected layer; None: every candidate leaf), the sampler and meta updates,
  Actual-Train through the kept VJP. `tangent_pass`: how the tangent pass
  runs (`meta_gradient.TANGENT_PASSES`; 'auto': `jax.jvp` over the whole
  network, else the transpose of the kept VJP). Arguments and results as
  `meta_train_step`."""
  n = train_batch['label'].shape[0]
  labels = train_batch['label']
  fwd = forward_lib.TrainForward(
      begin.logits, begin.vjp, begin.batch_stats, forward_lib.logits_function(
          setup.apply_fn, state.batch_stats, train_batch['image'], begin.fwd_rng))
  theta = setup.meta_model.lookahead_params(state.meta_params, n)
  sampler, selection = setup.sampler, begin.selection
  virtual = _virtual_train(setup, state, begin, fwd, labels)
  with jax.named_scope('meta_train'):
    mg = meta_grad_lib.meta_grad_from_forward(
        fwd, theta, state.params, labels, val_batch,
        apply_fn=setup.apply_fn, meta_model=setup.meta_model,
        lookahead=make_lookahead(setup, state), batch_stats=state.batch_stats,
        mask=lookahead_lib.scope_mask(state.params, setup.scope),
        gate=None if selection is None else selection.leaf_gates, val_rng=begin.val_rng,
        mode=setup.mode, tangent=scope, virtual=virtual,
        gate_grad='scope' if sampler is None else sampler.gate_grad,
        tangent_pass=tangent_pass)
  theta_grad, sampler_params, sampler_opt_state, sampler_metrics = _sampler_finish(
      setup, state, begin, fwd, mg, theta, labels, val_batch)
  meta_params, meta_opt_state, theta_new = update_meta_params(
      setup, state, theta, theta_grad, n)
  weights = setup.meta_model.weights(theta_new, mg.virtual.losses)
  with jax.named_scope('actual_train'):
    actual = actual_lib.actual_from_forward(
        fwd, state.params, state.opt_state, weights, labels,
        meta_model=setup.meta_model, tx=setup.tx, theta=theta_new)
  new_state = state.replace(
      step=state.step + 1, params=actual.params, batch_stats=actual.batch_stats,
      opt_state=actual.opt_state, meta_params=meta_params,
      meta_opt_state=meta_opt_state, rng=begin.rng, sampler_params=sampler_params,
      sampler_opt_state=sampler_opt_state)
  metrics = {
      'loss': jnp.mean(losses_lib.cross_entropy(fwd.logits, labels)),
      'weighted_loss': actual.loss,
      'val_loss': mg.val_loss,
      'meta_grad_norm': optax.tree.norm(theta_grad),
      'lr': setup.lr_schedule(state.step),
      'weights': weights,
      **weight_metrics(weights, train_batch),
      **example_metrics(setup.meta_model.loss(theta_new, fwd.logits, labels), fwd.logits),
      **sampler_metrics,
  }
  return new_state, metrics


def meta_train_step(state: TrainState, train_batch: dict, val_batch: dict, *,
                    setup: StepSetup) -> tuple[TrainState, dict]:
  """One meta iteration (all three stages) as one program, Algorithm 1; pure,
  jit it with `setup` static: `meta_begin` then `meta_finish` with the meta
  path over every candidate leaf and the sampler's gates as data (the
  run-time scope programs of `famus_jax.famus.dispatch` compute the same
  numbers scope by scope).

  Args:
    state: the `TrainState`.
    train_batch: {'image': (n, ...), 'label': (n,)[, 'true_label': (n,)]}.
    val_batch: {'image': (m, ...), 'label': (m,)}.
    setup: static `StepSetup`; with `setup.sampler`, FaMUS / random gates
      select the layers whose look-ahead terms carry the meta gradient.

  Returns:
    The new state and a dict of scalar metrics plus 'weights' (n,) and, with a
    sampler, 'gates' (L,).
  """
  begin = meta_begin(state, train_batch, setup=setup)
  return meta_finish(state, begin, train_batch, val_batch, setup=setup)


def weighted_train_step(state: TrainState, batch: dict, *, setup: StepSetup
                        ) -> tuple[TrainState, dict]:
  """An iteration without a meta step (`meta.interval > 1`): Actual-Train with
  the current θ.

  θ is the meta model's `idle_params`: MW-Net and `mlc_transition` their
  current θ; L2R uniform weights 1/n (mean CE); MLC T = I with weight 1 (the
  batch-sum CE of its Actual-Train loss, uncorrected).

  Args:
    state: the `TrainState`.
    batch: {'image': (n, ...), 'label': (n,)[, 'true_label': (n,)]}.
    setup: static `StepSetup`.

  Returns:
    The new state and the metrics of `meta_train_step` without the meta ones.
  """
  rng, fwd_rng = jax.random.split(state.rng)
  labels = batch['label']
  n = labels.shape[0]
  meta_model = setup.meta_model
  fwd = forward_lib.train_forward(setup.apply_fn, state.params, state.batch_stats,
                                  batch['image'], fwd_rng)
  theta = meta_model.idle_params(state.meta_params, n)
  losses = jax.lax.stop_gradient(meta_model.loss(theta, fwd.logits, labels))
  weights = meta_model.weights(theta, losses)
  actual = actual_lib.actual_from_forward(
      fwd, state.params, state.opt_state, weights, labels, meta_model=meta_model,
      tx=setup.tx, theta=theta)
  new_state = state.replace(step=state.step + 1, params=actual.params,
                            batch_stats=actual.batch_stats, opt_state=actual.opt_state,
                            rng=rng)
  metrics = {'loss': jnp.mean(losses_lib.cross_entropy(fwd.logits, labels)),
             'weighted_loss': actual.loss, 'lr': setup.lr_schedule(state.step),
             'weights': weights, **weight_metrics(weights, batch),
             **example_metrics(losses, fwd.logits)}
  return new_state, metrics


def plain_train_step(state: TrainState, batch: dict, *, setup: StepSetup
                     ) -> tuple[TrainState, dict]:
  """A plain cross-entropy step (the `ce` baseline and the timing reference)."""
  rng, fwd_rng = jax.random.split(state.rng)

  def loss_fn(params):
    logits, stats = forward_lib.apply_model(setup.apply_fn, params, state.batch_stats,
                                            batch['image'], train=True, rng=fwd_rng)
    losses = losses_lib.cross_entropy(logits, batch['label'])
    return jnp.mean(losses), (stats, losses, logits)

  (loss, (stats, losses, logits)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1,
                            params=optax.apply_updates(state.params, updates),
                            batch_stats=stats, opt_state=opt_state, rng=rng)
  return new_state, {'loss': loss, 'lr': setup.lr_schedule(state.step),
                     **example_metrics(losses, logits)}


def jit_meta_train_step(setup: StepSetup, donate: bool = True):
  """`meta_train_step` compiled with `setup` bound and the state donated."""
  return jax.jit(functools.partial(meta_train_step, setup=setup),
                 donate_argnums=(0,) if donate else ())


def jit_plain_train_step(setup: StepSetup, donate: bool = True):
  """`plain_train_step` compiled with `setup` bound and the state donated."""
  return jax.jit(functools.partial(plain_train_step, setup=setup),
                 donate_argnums=(0,) if donate else ())
