"""One training iteration: Virtual-Train, Meta-Train, Actual-Train, composed.

The training forward runs once: its VJP gives both the look-ahead gradient (V)
and the real one (V'), and its batch statistics are the ones kept.
"""

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from famus_jax import losses as losses_lib
from famus_jax.core import actual as actual_lib
from famus_jax.core import forward as forward_lib
from famus_jax.core import lookahead as lookahead_lib
from famus_jax.core import meta_gradient as meta_grad_lib
from famus_jax.core.train_state import StepSetup, TrainState

PyTree = Any


def make_lookahead(setup: StepSetup, state: TrainState) -> lookahead_lib.Lookahead:
  """The look-ahead rule of this iteration (plain SGD at the current lr, or the optimizer)."""
  if setup.lookahead == 'optimizer':
    return lookahead_lib.Lookahead(tx=setup.tx, opt_state=state.opt_state)
  return lookahead_lib.Lookahead(lr=setup.lr_schedule(state.step))


def update_meta_params(setup: StepSetup, state: TrainState, grad: PyTree):
  """θ' = meta optimizer step; meta models without persistent θ keep theirs."""
  if not setup.meta_model.persistent:
    return state.meta_params, state.meta_opt_state
  updates, meta_opt_state = setup.meta_tx.update(grad, state.meta_opt_state,
                                                 state.meta_params)
  return optax.apply_updates(state.meta_params, updates), meta_opt_state


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


def meta_train_step(state: TrainState, train_batch: dict, val_batch: dict, *,
                    setup: StepSetup, gate: Optional[PyTree] = None
                    ) -> tuple[TrainState, dict]:
  """One meta iteration (all three stages); pure, jit it with `setup` static.

  Args:
    state: the `TrainState`.
    train_batch: {'image': (n, ...), 'label': (n,)[, 'true_label': (n,)]}.
    val_batch: {'image': (m, ...), 'label': (m,)}.
    setup: static `StepSetup`.
    gate: optional FaMUS gates (params-shaped scalars).

  Returns:
    The new state and a dict of scalar metrics plus 'weights' (n,).
  """
  rng, fwd_rng, val_rng = jax.random.split(state.rng, 3)
  n = train_batch['label'].shape[0]
  fwd = forward_lib.train_forward(setup.apply_fn, state.params, state.batch_stats,
                                  train_batch['image'], fwd_rng)
  theta = setup.meta_model.lookahead_params(state.meta_params, n)
  mask = lookahead_lib.scope_mask(state.params, setup.scope)
  mg = meta_grad_lib.meta_grad_from_forward(
      fwd, theta, state.params, train_batch['label'], val_batch,
      apply_fn=setup.apply_fn, meta_model=setup.meta_model,
      lookahead=make_lookahead(setup, state), batch_stats=state.batch_stats,
      mask=mask, gate=gate, val_rng=val_rng, mode=setup.mode)
  meta_params, meta_opt_state = update_meta_params(setup, state, mg.theta)
  theta_new = setup.meta_model.lookahead_params(meta_params, n)
  weights = setup.meta_model.actual_weights(theta_new, mg.virtual.losses, mg.theta)
  actual = actual_lib.actual_from_forward(
      fwd, state.params, state.opt_state, weights, train_batch['label'],
      meta_model=setup.meta_model, tx=setup.tx, theta=theta_new)
  new_state = state.replace(
      step=state.step + 1, params=actual.params, batch_stats=actual.batch_stats,
      opt_state=actual.opt_state, meta_params=meta_params,
      meta_opt_state=meta_opt_state, rng=rng)
  metrics = {
      'loss': jnp.mean(losses_lib.cross_entropy(fwd.logits, train_batch['label'])),
      'weighted_loss': actual.loss,
      'val_loss': mg.val_loss,
      'meta_grad_norm': optax.tree.norm(mg.theta),
      'lr': setup.lr_schedule(state.step),
      'weights': weights,
      **weight_metrics(weights, train_batch),
  }
  return new_state, metrics


def plain_train_step(state: TrainState, batch: dict, *, setup: StepSetup
                     ) -> tuple[TrainState, dict]:
  """A plain cross-entropy step (the `ce` baseline and the timing reference)."""
  rng, fwd_rng = jax.random.split(state.rng)

  def loss_fn(params):
    logits, stats = forward_lib.apply_model(setup.apply_fn, params, state.batch_stats,
                                            batch['image'], train=True, rng=fwd_rng)
    return losses_lib.mean_cross_entropy(logits, batch['label']), stats

  (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1,
                            params=optax.apply_updates(state.params, updates),
                            batch_stats=stats, opt_state=opt_state, rng=rng)
  return new_state, {'loss': loss, 'lr': setup.lr_schedule(state.step)}


def jit_meta_train_step(setup: StepSetup, donate: bool = True):
  """`meta_train_step` compiled with `setup` bound and the state donated."""
  return jax.jit(functools.partial(meta_train_step, setup=setup),
                 donate_argnums=(0,) if donate else ())


def jit_plain_train_step(setup: StepSetup, donate: bool = True):
  """`plain_train_step` compiled with `setup` bound and the state donated."""
  return jax.jit(functools.partial(plain_train_step, setup=setup),
                 donate_argnums=(0,) if donate else ())
