"""The loop's non-meta programs against hand references: the weighted step of
`meta.interval > 1` (Actual-Train with the current θ), and the finiteness flag
the NaN/Inf stop reads from the weighted and plain programs."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import famus_jax as fj
from famus_jax.training import sharding as sharding_lib
from tiny_models import NUM_CLASSES, TinyCNN, make_batches, tiny_parts

LR, MU, WD = 0.1, 0.9, 5e-4


def _parts(method='mwnet', lr=LR, momentum=MU, weight_decay=WD, **fields):
  """SGD (lr, momentum, weight decay) on `TinyCNN`, Adam 1e-3 on the meta model."""
  return tiny_parts(TinyCNN(), make_batches()[0]['image'], meta__method=method,
                    optim__lr=lr, optim__momentum=momentum,
                    optim__weight_decay=weight_decay, meta__weight_decay=0.0, **fields)


def _setup(*args, **kwargs):
  return _parts(*args, **kwargs).setup


def _state(setup, train):
  """A fresh state with a non-zero momentum trace."""
  state = fj.create_train_state(jax.random.PRNGKey(0), TinyCNN(), train['image'],
                                NUM_CLASSES, setup)
  rng = np.random.default_rng(3)
  kick = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype),
                                state.params)
  return state.replace(opt_state=setup.tx.update(kick, state.opt_state, state.params)[1])


def _steep_theta(losses, hidden=100):
  """MW-Net θ with Ψ(ℓ) ≈ sigmoid(4 (ℓ − mean ℓ)) plus small random terms: weights
  far from uniform on the batch's losses."""
  rng = np.random.default_rng(5)
  kernel = rng.normal(size=(1, hidden)).astype(np.float32)
  kernel[0, 0] = 1.0
  bias = (0.5 * rng.normal(size=(hidden,))).astype(np.float32)
  bias[0] = 0.0
  out = (0.05 * rng.normal(size=(hidden, 1))).astype(np.float32)
  out[0, 0] = 4.0
  return {'hidden': {'kernel': jnp.asarray(kernel), 'bias': jnp.asarray(bias)},
          'out': {'kernel': jnp.asarray(out), 'bias': -4.0 * jnp.mean(losses)[None]}}


def _mwnet_weights(theta, losses):
  """V_i = Ψ(ℓ_i; θ) / Σ_j Ψ(ℓ_j; θ), Ψ = sigmoid(W2 relu(W1 ℓ + b1) + b2)."""
  h = jax.nn.relu(losses[:, None] @ theta['hidden']['kernel'] + theta['hidden']['bias'])
  raw = jax.nn.sigmoid(h @ theta['out']['kernel'] + theta['out']['bias'])[:, 0]
  return raw / jnp.sum(raw)


def test_weighted_step_of_mwnet_matches_hand_reference():
  """`meta.interval=2`, iteration 1 (no meta step): V = Ψ(ℓ; θ) normalised with
  the current θ, then one SGD step (momentum μ, weight decay λ) on Σ_i V_i ℓ_i
  with V held fixed; batch statistics from the training forward; θ and its
  optimizer state untouched; the RNG split once."""
  train, _ = make_batches(seed=1, n=8)
  train = dict(train, true_label=train['label'].at[:3].set((train['label'][:3] + 1)
                                                           % NUM_CLASSES))
  parts = _parts(meta__interval=2)
  setup = parts.setup
  state = _state(setup, train)

  def per_example(params, batch_stats):
    logits, new = TinyCNN().apply({'params': params, 'batch_stats': batch_stats},
                                  train['image'], train=True, mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, train['label']), new

  @jax.jit
  def by_hand(state):
    losses, new_vars = per_example(state.params, state.batch_stats)
    theta = _steep_theta(losses)
    weights = _mwnet_weights(theta, losses)
    grads = jax.grad(lambda p: jnp.sum(weights * per_example(p, state.batch_stats)[0]))(
        state.params)
    trace = optax.tree_utils.tree_get(state.opt_state, 'trace')
    new_trace = jax.tree_util.tree_map(lambda m, g, w: MU * m + g + WD * w,
                                       trace, grads, state.params)
    want_params = jax.tree_util.tree_map(lambda w, d: w - LR * d, state.params, new_trace)
    return losses, new_vars, theta, weights, new_trace, want_params

  losses, new_vars, theta, weights, new_trace, want_params = by_hand(state)
  state = state.replace(meta_params=theta, meta_opt_state=setup.meta_tx.init(theta))
  assert float(weights.max() / weights.min()) > 2.0  # V is far from uniform

  strategy = parts.strategy(sharding_lib.make_mesh(1))
  assert strategy.program_for(1) == 'weighted' and not strategy.needs_validation(1)
  copy = jax.tree_util.tree_map(jnp.copy, state)  # the program donates its state
  new_state, m = strategy.run_iteration(1, copy, train)

  # atol: parameters and gradients of order 1 carry float32 rounding of order ulp(1) ≈ 1.2e-7
  # (XLA's operation order differs between the step and the reference).
  chex.assert_trees_all_close(new_state.params, want_params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(optax.tree_utils.tree_get(new_state.opt_state, 'trace'),
                              new_trace, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(new_state.batch_stats, new_vars['batch_stats'],
                              rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_equal(new_state.meta_params, state.meta_params)
  chex.assert_trees_all_equal(new_state.meta_opt_state, state.meta_opt_state)
  chex.assert_trees_all_equal(new_state.rng, jax.random.split(state.rng)[0])
  assert int(new_state.step) == int(state.step) + 1
  np.testing.assert_allclose(m['weights'], weights, rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(m['weighted_loss'], jnp.sum(weights * losses), rtol=1e-5)
  np.testing.assert_allclose(m['loss'], jnp.mean(losses), rtol=1e-5)
  clean = np.asarray(train['true_label'] == train['label'])
  np.testing.assert_allclose(m['weight_clean'], np.mean(np.asarray(weights)[clean]),
                             rtol=1e-5)
  assert bool(m['finite'])


def test_weighted_step_of_l2r_is_the_mean_cross_entropy_step():
  """L2R has no θ between meta steps: its weighted step uses V = 1/n, i.e.
  the plain cross-entropy step."""
  train, _ = make_batches(seed=2, n=8)
  setup = _setup('l2r')
  state = _state(setup, train)
  a, ma = jax.jit(lambda s: fj.core.weighted_train_step(s, train, setup=setup))(state)
  b, mb = jax.jit(lambda s: fj.core.plain_train_step(s, train, setup=setup))(state)
  np.testing.assert_allclose(ma['weights'], np.full(8, 1 / 8), rtol=1e-6)
  chex.assert_trees_all_close(a.params, b.params, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(ma['weighted_loss'], mb['loss'], rtol=1e-6)


@pytest.mark.parametrize('program', ['weighted', 'plain'])
def test_finite_flag_of_weighted_and_plain_programs(program):
  """The flag the NaN/Inf stop reads: False for a NaN image batch (NaN loss)
  and for parameters that overflow while the loss is still finite (lr = inf)."""
  train, _ = make_batches(seed=4, n=8)
  mesh = sharding_lib.make_mesh(1)
  method = 'mwnet' if program == 'weighted' else 'ce'

  @functools.lru_cache(maxsize=None)
  def parts_and_program(lr):
    parts = _parts(method, lr=lr, momentum=0.0, weight_decay=0.0,  # plain SGD
                   meta__interval=2)
    return parts, parts.strategy(mesh).programs[program]

  def flag(batch, lr):
    parts, fn = parts_and_program(lr)
    _, m = fn(_state(parts.setup, train), batch)
    return bool(m['finite']), bool(jnp.isfinite(m['loss']))

  nan_batch = dict(train, image=train['image'].at[0, 0, 0, 0].set(jnp.nan))
  assert flag(train, LR) == (True, True)
  assert flag(nan_batch, LR) == (False, False)
  assert flag(train, float('inf')) == (False, True)
