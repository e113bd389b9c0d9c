"""L2R at ε = 0: Virtual-Train without its backward (ŵ = U(w, 0)), the meta
gradient against jax.grad through the look-ahead and finite differences, the
training step against the general path, and the layer sampler's input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import famus_jax as fj
from famus_jax import core, models
from famus_jax import losses as losses_lib
from famus_jax.core import forward as forward_lib
from famus_jax.core import lookahead as lookahead_lib
from famus_jax.core import meta_gradient as meta_grad_lib
from famus_jax.core import virtual as virtual_lib
from tiny_models import SGD_META, TinyCNN, init_model, make_batches, tiny_parts

NUM_CLASSES = 4
# L2R's meta model with the Virtual-Train backward (config.meta.model_kwargs)
GENERAL = {'model_kwargs': {'zero_lookahead': False}}


def problem(dtype=jnp.float32):
  """A tiny digits CNN with batch norm (float64: TinyCNN), batches and variables."""
  if dtype == jnp.float64:
    train, val = make_batches(n=8, dtype=dtype)
    model = TinyCNN()
    return (model, *init_model(model, train['image']), train, val)
  model = models.get_model('digits_cnn', num_classes=NUM_CLASSES, width=4, depth=1)
  rng = np.random.default_rng(0)
  batch = lambda n: {'image': jnp.asarray(rng.normal(size=(n, 8, 8, 1)), dtype),
                     'label': jnp.asarray(rng.integers(0, NUM_CLASSES, n), jnp.int32)}
  train, val = batch(8), batch(6)
  variables = model.init(jax.random.PRNGKey(0), train['image'], train=False)
  return model, variables['params'], variables['batch_stats'], train, val


def momentum_lookahead(params):
  """SGD + momentum + weight decay with a non-zero trace: U(w, 0) ≠ w."""
  tx = fj.sgd_with_weight_decay(0.3, momentum=0.9, weight_decay=5e-2)
  _, state = tx.update(jax.tree_util.tree_map(jnp.ones_like, params), tx.init(params),
                       params)
  return lookahead_lib.Lookahead(tx=tx, opt_state=state)


def shortcut_meta_grad(lookahead, dtype=jnp.float32):
  """(shortcut ∂L^val/∂ε at ε = 0, general jax.grad reference, objective of ε)."""
  model, params, stats, train, val = problem(dtype)
  l2r = fj.get_meta_model('l2r')
  fwd = forward_lib.train_forward(model.apply, params, stats, train['image'])
  virtual = virtual_lib.lookahead_virtual(fwd, {}, params, train['label'],
                                          meta_model=l2r, lookahead=lookahead)
  general = virtual_lib.virtual_from_forward(fwd, jnp.zeros(8, dtype), params,
                                             train['label'], meta_model=l2r,
                                             lookahead=lookahead)
  chex.assert_trees_all_close(virtual.params, general.params, rtol=0, atol=0)
  eps = l2r.lookahead_params({}, 8)
  fast = meta_grad_lib.meta_grad_from_forward(
      fwd, eps, params, train['label'], val, apply_fn=model.apply, meta_model=l2r,
      lookahead=lookahead, batch_stats=stats, virtual=virtual).theta
  ref = meta_grad_lib.meta_grad_from_forward(
      fwd, eps, params, train['label'], val, apply_fn=model.apply, meta_model=l2r,
      lookahead=lookahead, batch_stats=stats, mode='reverse').theta

  def objective(e):
    hat = virtual_lib.virtual_from_forward(fwd, e, params, train['label'],
                                           meta_model=l2r, lookahead=lookahead).params
    return fj.validation_loss(model.apply, hat, stats, val)
  return fast, ref, objective


@pytest.mark.parametrize('look', ['sgd', 'momentum'])
def test_shortcut_equals_jax_grad_through_the_lookahead(look):
  params = problem()[1]
  lookahead = (lookahead_lib.Lookahead(lr=0.5) if look == 'sgd'
               else momentum_lookahead(params))
  fast, ref, _ = shortcut_meta_grad(lookahead)
  assert float(jnp.max(jnp.abs(ref))) > 0
  np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(ref))))


def test_shortcut_against_central_differences_float64():
  with jax.enable_x64(True):
    fast, _, objective = shortcut_meta_grad(lookahead_lib.Lookahead(lr=0.5), jnp.float64)
    objective = jax.jit(objective)
    rng, h = np.random.default_rng(1), 1e-5
    for _ in range(3):
      d = jnp.asarray(rng.normal(size=8), jnp.float64)
      fd = (objective(h * d) - objective(-h * d)) / (2 * h)
      analytic = float(jnp.vdot(fast, d))
      assert abs(float(fd) - analytic) <= 1e-6 * max(abs(analytic), 1e-12)


def l2r_parts(mode='jvp', **meta):
  """The builder's parts of an L2R step on `problem()`'s model: SGD 0.1 with
  momentum 0.9 and decay 5e-4, `meta` (config.meta fields) set."""
  model, _, _, train, _ = problem()
  return tiny_parts(model, train['image'], meta={**SGD_META, 'method': 'l2r', 'mode': mode,
                                                 **meta})


def test_step_equals_the_general_path():
  """The shortcut step equals jax.grad through the look-ahead (reverse) and the
  jvp path with the Virtual-Train backward: params, optimizer state, metrics."""
  model, _, _, train, val = problem()
  outs = []
  for mode, meta in (('jvp', {}), ('reverse', {}), ('jvp', GENERAL)):
    setup = l2r_parts(mode, **meta).setup
    state = fj.create_train_state(jax.random.PRNGKey(0), model, train['image'],
                                  NUM_CLASSES, setup)
    outs.append(fj.jit_meta_train_step(setup, donate=False)(state, train, val))
  (state, metrics), others = outs[0], outs[1:]
  assert float(jnp.sum(metrics['weights'])) > 0
  for other_state, other_metrics in others:
    chex.assert_trees_all_close(state.params, other_state.params, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(state.opt_state, other_state.opt_state, rtol=1e-5,
                                atol=1e-7)
    chex.assert_trees_all_close(metrics, other_metrics, rtol=1e-4, atol=1e-6)


def test_sampler_input_is_the_mean_gradient_and_changes_the_gates():
  """The L2R sampler reads (1/n) Σ ∇ℓ_i (not the zero look-ahead gradient), and
  its gates differ from those drawn from a zero input."""
  model, _, _, train, val = problem()
  setup = l2r_parts(sampler='famus', k=2, s=3, tau=1.0, prune_levels=1).setup
  sampler = setup.sampler
  state = fj.create_train_state(jax.random.PRNGKey(0), model, train['image'],
                                NUM_CLASSES, setup)
  begin, _ = core.forward_and_virtual(state, train, setup)
  mean_grad = jax.grad(lambda p: losses_lib.mean_cross_entropy(
      model.apply({'params': p, 'batch_stats': state.batch_stats}, train['image'],
                  train=True, mutable=["batch_stats"])[0], train["label"]))(state.params)
  chex.assert_trees_all_close(begin.sampler_grads, mean_grad, rtol=1e-5, atol=1e-7)
  zero = jax.tree_util.tree_map(jnp.zeros_like, begin.sampler_grads)
  keys = jax.random.split(jax.random.PRNGKey(2), 16)
  drawn = lambda grads: jnp.stack([sampler.begin(state.sampler_params, grads, k)[0].gates
                                   for k in keys])
  assert bool(jnp.any(drawn(begin.sampler_grads) != drawn(zero)))
  # the whole step runs with it (one program, gates as data)
  new_state, metrics = fj.jit_meta_train_step(setup, donate=False)(state, train, val)
  assert np.isfinite(float(metrics['val_loss']))
