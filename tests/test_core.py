"""Core engine: virtual_step, meta_grad (jvp vs reverse vs finite differences vs
a hand derivation), actual_step, meta_train_step, batch-norm state and errors."""

import functools

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import famus_jax as fj
from famus_jax import core
from famus_jax import losses as losses_lib
from famus_jax.core import lookahead as lookahead_lib
from tiny_models import NUM_CLASSES, TinyCNN, TinyMLP, init_model, make_batches, tiny_setup

MODELS = {'mlp': TinyMLP, 'cnn': TinyCNN}
METHODS = tuple(fj.META_MODELS)  # mwnet, l2r, mlc, mlc_transition
STATIC = ('apply_fn', 'meta_model', 'mode', 'scope', 'lookahead_tx')


def flat(tree):
  return jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


def rel_err(a, b):
  a, b = flat(a), flat(b)
  return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-30))


def setup_problem(model_name, method, dtype=jnp.float32, seed=0):
  """(theta, params, train, val, kwargs) for a tiny model and a meta model."""
  train, val = make_batches(seed=seed, dtype=dtype)
  model = MODELS[model_name]()
  params, batch_stats = init_model(model, train['image'], seed=seed)
  meta_model = fj.get_meta_model(method)
  theta = meta_model.lookahead_params(
      jax.tree_util.tree_map(lambda x: x.astype(dtype),
                             meta_model.init(jax.random.PRNGKey(seed + 1), NUM_CLASSES)),
      train['label'].shape[0])
  if method == 'l2r':  # a non-zero ε exercises the general formula too
    theta = theta + 0.1 * jnp.arange(theta.shape[0], dtype=theta.dtype)
  kwargs = dict(apply_fn=model.apply, meta_model=meta_model, lr=0.5,
                batch_stats=batch_stats)
  return theta, params, train, val, kwargs


class MetaGradAgreementTest(chex.TestCase):
  """`jvp` and `reverse` agree, with and without jit."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(model=('mlp', 'cnn'), method=METHODS)
  def test_float32(self, model, method):
    theta, params, train, val, kw = setup_problem(model, method)
    grad = self.variant(fj.meta_grad, static_argnames=STATIC)
    fast = grad(theta, params, train, val, mode='jvp', **kw)
    ref = grad(theta, params, train, val, mode='reverse', **kw)
    assert rel_err(fast.theta, ref.theta) <= 1e-5
    assert float(jnp.linalg.norm(flat(ref.theta))) > 0
    np.testing.assert_allclose(fast.val_loss, ref.val_loss, rtol=1e-6)

  @parameterized.product(model=('mlp', 'cnn'), method=METHODS)
  def test_float64(self, model, method):
    with jax.enable_x64(True):
      theta, params, train, val, kw = setup_problem(model, method, jnp.float64)
      fast = fj.meta_grad(theta, params, train, val, mode='jvp', **kw)
      ref = fj.meta_grad(theta, params, train, val, mode='reverse', **kw)
      assert flat(fast.theta).dtype == jnp.float64
      assert rel_err(fast.theta, ref.theta) <= 1e-10

  @parameterized.parameters('mwnet', 'mlc', 'mlc_transition')
  def test_optimizer_lookahead_with_momentum_and_weight_decay(self, method):
    """Look-ahead through SGD + momentum + weight decay with a non-zero trace."""
    theta, params, train, val, kw = setup_problem('cnn', method)
    tx = fj.sgd_with_weight_decay(0.3, momentum=0.9, weight_decay=5e-2)
    opt_state = tx.init(params)
    _, opt_state = tx.update(jax.tree_util.tree_map(jnp.ones_like, params),
                             opt_state, params)  # momentum buffer ≠ 0
    kw.update(lookahead_tx=tx, lookahead_state=opt_state)
    fast = fj.meta_grad(theta, params, train, val, mode='jvp', **kw)
    ref = fj.meta_grad(theta, params, train, val, mode='reverse', **kw)
    assert rel_err(fast.theta, ref.theta) <= 1e-5
    plain = fj.meta_grad(theta, params, train, val, mode='jvp',
                         **{**kw, 'lookahead_tx': None, 'lookahead_state': None})
    assert rel_err(plain.theta, ref.theta) > 1e-3  # the optimizer really mattered

  @parameterized.parameters('jvp', 'reverse')
  def test_restricted_scope_equals_masked_reference(self, mode):
    """With a scope, both paths equal jax.grad of the look-ahead with the other
    leaves' terms stopped."""
    theta, params, train, val, kw = setup_problem('cnn', 'mwnet')
    scope = frozenset(p for p in lookahead_lib.leaf_paths(params) if 'Dense' in p)
    got = fj.meta_grad(theta, params, train, val, mode=mode, scope=scope, **kw)

    def reference(theta):
      look = fj.virtual_step(theta, params, train, **kw)
      hat = jax.tree_util.tree_map_with_path(
          lambda p, w_hat, w, g: w_hat if lookahead_lib.leaf_path(p) in scope
          else w - kw['lr'] * jax.lax.stop_gradient(g),
          look.params, params, look.grads)
      return fj.validation_loss(kw['apply_fn'], hat, kw['batch_stats'], val)

    ref = jax.grad(reference)(theta)
    full = fj.meta_grad(theta, params, train, val, mode=mode, **kw)
    assert rel_err(got.theta, ref) <= 1e-5
    assert rel_err(full.theta, ref) > 1e-3

  def test_gates_agree_and_all_on_equals_exact(self):
    theta, params, train, val, kw = setup_problem('cnn', 'mwnet')
    rng = np.random.default_rng(0)
    gate = jax.tree_util.tree_map(
        lambda _: jnp.asarray(rng.integers(0, 2), jnp.float32), params)
    fast = fj.meta_grad(theta, params, train, val, mode='jvp', gate=gate, **kw)
    ref = fj.meta_grad(theta, params, train, val, mode='reverse', gate=gate, **kw)
    assert rel_err(fast.theta, ref.theta) <= 1e-5
    assert rel_err(fast.gate, ref.gate) <= 1e-5
    ones = jax.tree_util.tree_map(jnp.ones_like, gate)
    exact = fj.meta_grad(theta, params, train, val, mode='jvp', **kw)
    on = fj.meta_grad(theta, params, train, val, mode='jvp', gate=ones, **kw)
    assert rel_err(on.theta, exact.theta) <= 1e-6
    off = fj.meta_grad(theta, params, train, val, mode='jvp',
                       gate=jax.tree_util.tree_map(jnp.zeros_like, gate), **kw)
    assert float(jnp.max(jnp.abs(flat(off.theta)))) == 0.0
    # ∂L/∂r_l = ⟨u_l, g_l⟩ = −α ⟨v_l, g_l⟩ for plain SGD.
    analytic = jax.tree_util.tree_map(lambda v, g: -kw['lr'] * jnp.vdot(v, g),
                                      on.val_grads, on.virtual.grads)
    assert rel_err(on.gate, analytic) <= 1e-5


class FiniteDifferenceTest(parameterized.TestCase):

  @parameterized.product(method=METHODS, mode=('jvp', 'reverse'))
  def test_central_differences_float64(self, method, mode):
    with jax.enable_x64(True):
      theta, params, train, val, kw = setup_problem('cnn', method, jnp.float64)
      grad = fj.meta_grad(theta, params, train, val, mode=mode, **kw).theta
      objective = jax.jit(lambda t: fj.validation_loss(
          kw['apply_fn'], fj.virtual_step(t, params, train, **kw).params,
          kw['batch_stats'], val))
      rng = np.random.default_rng(1)
      eps = 1e-5
      for _ in range(3):
        direction = jax.tree_util.tree_map(
            lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float64), theta)
        shift = lambda s: jax.tree_util.tree_map(lambda t, d: t + s * eps * d,
                                                 theta, direction)
        fd = (objective(shift(1.0)) - objective(shift(-1.0))) / (2 * eps)
        analytic = jnp.vdot(flat(grad), flat(direction))
        assert abs(float(fd - analytic)) <= 1e-6 * max(abs(float(analytic)), 1e-12)


def test_hand_derivation_l2r_linear_model():
  """L2R on a linear softmax model with 2 training examples, derived by hand:
  at ε = 0, ŵ = W and ∂L^val/∂ε_i = −α ⟨∇_W L^val(W), ∇_W ℓ_i(W)⟩ with
  ∇_W ℓ(x, y) = x (softmax(Wᵀx) − e_y)ᵀ."""
  import flax.linen as nn

  class Linear(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      del train
      return nn.Dense(3, use_bias=False)(x)

  x_tr = np.array([[1.0, -2.0], [0.5, 1.5]])
  y_tr = np.array([0, 2])
  x_val = np.array([[-1.0, 0.5], [2.0, 1.0], [0.0, -1.0]])
  y_val = np.array([1, 2, 0])
  W = np.array([[0.2, -0.1, 0.4], [0.3, 0.5, -0.2]])  # (in, out) as Flax stores it
  alpha = 0.7

  def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  def grad_ce(x, y):  # (in, out)
    return np.outer(x, softmax(x @ W) - np.eye(3)[y])

  grad_val = np.mean([grad_ce(x, y) for x, y in zip(x_val, y_val)], axis=0)
  expected = np.array([-alpha * np.sum(grad_val * grad_ce(x, y))
                       for x, y in zip(x_tr, y_tr)])
  with jax.enable_x64(True):
    got = fj.meta_grad(
        jnp.zeros(2), {'Dense_0': {'kernel': jnp.asarray(W)}},
        {'image': jnp.asarray(x_tr), 'label': jnp.asarray(y_tr)},
        {'image': jnp.asarray(x_val), 'label': jnp.asarray(y_val)},
        apply_fn=Linear().apply, meta_model=fj.get_meta_model('l2r'), lr=alpha)
    np.testing.assert_allclose(np.asarray(got.theta), expected, rtol=1e-12)
    weights = fj.get_meta_model('l2r').meta_update(None, got.theta)
    np.testing.assert_allclose(
        np.asarray(weights), np.maximum(-expected, 0) / np.maximum(-expected, 0).sum())


def test_virtual_step_value_is_the_sgd_look_ahead():
  theta, params, train, val, kw = setup_problem('mlp', 'mwnet')
  look = fj.virtual_step(theta, params, train, **kw)
  weights = kw['meta_model'].weights(theta, losses_lib.cross_entropy(
      kw['apply_fn']({'params': params}, train['image'], train=True), train['label']))
  chex.assert_trees_all_close(look.weights, weights, rtol=1e-6)
  np.testing.assert_allclose(float(jnp.sum(look.weights)), 1.0, rtol=1e-6)
  expected_grads = jax.grad(lambda p: jnp.sum(weights * losses_lib.cross_entropy(
      kw['apply_fn']({'params': p}, train['image'], train=True), train['label'])))(params)
  chex.assert_trees_all_close(look.grads, expected_grads, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(
      look.params, jax.tree_util.tree_map(lambda w, g: w - 0.5 * g, params, expected_grads),
      rtol=1e-6, atol=1e-7)


class ActualStepTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_updates_params_and_batch_stats(self):
    theta, params, train, _, kw = setup_problem('cnn', 'mwnet')
    tx = fj.sgd_with_weight_decay(0.1)
    step = self.variant(fj.actual_step, static_argnames=('apply_fn', 'meta_model', 'tx'))
    weights = jnp.full((6,), 1 / 6)
    out = step(params, tx.init(params), train, weights, apply_fn=kw['apply_fn'],
               meta_model=kw['meta_model'], tx=tx, batch_stats=kw['batch_stats'])
    _, expected_stats = kw['apply_fn']({'params': params, 'batch_stats': kw['batch_stats']},
                                      train['image'], train=True, mutable=['batch_stats'])
    chex.assert_trees_all_close(out.batch_stats, expected_stats['batch_stats'], rtol=1e-6)
    assert not np.allclose(flat(out.batch_stats), flat(kw['batch_stats']))
    grads = jax.grad(lambda p: losses_lib.mean_cross_entropy(kw['apply_fn'](
        {'params': p, 'batch_stats': kw['batch_stats']}, train['image'], train=True,
        mutable=['batch_stats'])[0], train['label']))(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    chex.assert_trees_all_close(out.params, optax.apply_updates(params, updates),
                                rtol=1e-5, atol=1e-7)


class MetaTrainStepTest(parameterized.TestCase):

  def make(self, method, mode='jvp', model='cnn'):
    train, val = make_batches()
    net = MODELS[model]()
    setup = tiny_setup(net, train['image'], meta__method=method, meta__mode=mode)
    state = fj.create_train_state(jax.random.PRNGKey(0), net, train['image'],
                                  NUM_CLASSES, setup)
    return setup, state, train, val

  @parameterized.product(method=METHODS)
  def test_step_matches_the_three_stages_composed_by_hand(self, method):
    setup, state, train, val = self.make(method)
    step = fj.jit_meta_train_step(setup, donate=False)
    new_state, metrics = step(state, train, val)
    # By hand with the public functions (dropout-free model: RNG irrelevant).
    n = train['label'].shape[0]
    theta = setup.meta_model.lookahead_params(state.meta_params, n)
    kw = dict(apply_fn=setup.apply_fn, meta_model=setup.meta_model,
              lr=setup.meta_model.lookahead_lr(0.1), batch_stats=state.batch_stats)
    mg = fj.meta_grad(theta, state.params, train, val, **kw)
    if setup.meta_model.persistent:
      upd, _ = setup.meta_tx.update(mg.theta, state.meta_opt_state, state.meta_params)
      meta_params = optax.apply_updates(state.meta_params, upd)
      theta_new = setup.meta_model.lookahead_params(meta_params, n)
    else:
      meta_params = state.meta_params
      theta_new = setup.meta_model.meta_update(theta, mg.theta)
    weights = setup.meta_model.weights(theta_new, mg.virtual.losses)
    actual = fj.actual_step(state.params, state.opt_state, train, weights,
                            apply_fn=setup.apply_fn, meta_model=setup.meta_model,
                            tx=setup.tx, theta=theta_new, batch_stats=state.batch_stats)
    chex.assert_trees_all_close(new_state.meta_params, meta_params, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(new_state.params, actual.params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(metrics['weights'], weights, rtol=1e-5, atol=1e-7)
    # Running statistics come from the training batch only (not the validation one).
    chex.assert_trees_all_close(new_state.batch_stats, actual.batch_stats, rtol=1e-6)
    assert int(new_state.step) == 1
    assert all(np.isfinite(float(v)) for k, v in metrics.items()
               if k not in core.PER_EXAMPLE_METRICS)

  def test_reverse_and_jvp_steps_agree(self):
    outs = []
    for mode in ('jvp', 'reverse'):
      setup, state, train, val = self.make('mwnet', mode)
      outs.append(fj.jit_meta_train_step(setup, donate=False)(state, train, val)[0])
    chex.assert_trees_all_close(outs[0].meta_params, outs[1].meta_params, rtol=1e-5, atol=1e-8)
    chex.assert_trees_all_close(outs[0].params, outs[1].params, rtol=1e-5, atol=1e-7)

  def test_virtual_and_meta_grad_leave_batch_stats_alone(self):
    """Only Actual-Train updates running statistics: the public virtual and meta
    stages return none, and the composed step's statistics equal one train-mode
    forward on the training batch."""
    setup, state, train, val = self.make('mwnet')
    theta = state.meta_params
    kw = dict(apply_fn=setup.apply_fn, meta_model=setup.meta_model, lr=0.1,
              batch_stats=state.batch_stats)
    before = jax.tree_util.tree_map(np.array, state.batch_stats)
    look = fj.virtual_step(theta, state.params, train, **kw)
    mg = fj.meta_grad(theta, state.params, train, val, **kw)
    assert not hasattr(look, 'batch_stats') and not hasattr(mg, 'batch_stats')
    chex.assert_trees_all_equal(state.batch_stats, before)
    new_state, _ = fj.jit_meta_train_step(setup, donate=False)(state, train, val)
    _, expected = setup.apply_fn({'params': state.params, 'batch_stats': before},
                                 train['image'], train=True, mutable=['batch_stats'])
    chex.assert_trees_all_close(new_state.batch_stats, expected['batch_stats'], rtol=1e-6)
    _, with_val = setup.apply_fn({'params': state.params, 'batch_stats': expected['batch_stats']},
                                 val['image'], train=True, mutable=['batch_stats'])
    assert not np.allclose(flat(with_val['batch_stats']), flat(new_state.batch_stats))

  def test_donation_and_no_recompilation(self):
    setup, state, train, val = self.make('mwnet')
    step = fj.jit_meta_train_step(setup)
    for _ in range(3):
      state, _ = step(state, train, val)
    assert step._cache_size() == 1
    assert int(state.step) == 3


def test_l2r_all_negative_case_gives_zero_weights():
  l2r = fj.get_meta_model('l2r')
  weights = l2r.meta_update(None, jnp.array([0.5, 1.0, 0.0, 2.0]))
  np.testing.assert_array_equal(np.asarray(weights), np.zeros(4))
  mixed = l2r.meta_update(None, jnp.array([-1.0, 3.0, -3.0]))
  np.testing.assert_allclose(np.asarray(mixed), [0.25, 0.0, 0.75])


def test_mwnet_zero_sum_does_not_divide_by_zero():
  mw = fj.get_meta_model('mwnet')
  theta = mw.init(jax.random.PRNGKey(0), NUM_CLASSES)
  theta = jax.tree_util.tree_map(lambda x: x, theta)
  theta['out']['bias'] = jnp.full_like(theta['out']['bias'], -1e4)
  theta['out']['kernel'] = jnp.zeros_like(theta['out']['kernel'])
  weights = mw.weights(theta, jnp.array([0.1, 2.0, 5.0]))
  assert np.all(np.isfinite(np.asarray(weights)))
  np.testing.assert_array_equal(np.asarray(weights), np.zeros(3))


def test_mlc_transition_is_row_stochastic_and_near_identity():
  mlc = fj.get_meta_model('mlc_transition')
  t = mlc.transition(mlc.init(jax.random.PRNGKey(0), 4))
  np.testing.assert_allclose(np.asarray(t.sum(1)), np.ones(4), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(jnp.diag(t)), np.full(4, 0.9), rtol=1e-5)
  # With T = I the corrected loss is plain cross-entropy.
  logits = jnp.array([[1.0, 2.0, 0.5, -1.0], [0.0, 0.3, 2.0, 1.0]])
  labels = jnp.array([1, 3])
  eye_logits = jnp.where(jnp.eye(4, dtype=bool), 0.0, -1e9)
  np.testing.assert_allclose(
      np.asarray(mlc.loss({'transition_logits': eye_logits}, logits, labels)),
      np.asarray(losses_lib.cross_entropy(logits, labels)), rtol=1e-6)


class ErrorTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.theta, self.params, self.train, self.val, self.kw = setup_problem('mlp', 'mwnet')

  def test_mismatched_batch_shapes(self):
    bad = {'image': self.train['image'][:4], 'label': self.train['label']}
    with pytest.raises(ValueError, match='images have 4 examples but labels have 6'):
      fj.meta_grad(self.theta, self.params, bad, self.val, **self.kw)

  def test_labels_out_of_range(self):
    bad = dict(self.train, label=self.train['label'].at[0].set(NUM_CLASSES))
    with pytest.raises(ValueError, match=r'labels must lie in \[0, 2\], found values in'):
      fj.virtual_step(self.theta, self.params, bad, **self.kw)
    bad_val = dict(self.val, label=self.val['label'].at[1].set(-1))
    with pytest.raises(ValueError, match='validation batch: labels must lie in'):
      fj.meta_grad(self.theta, self.params, self.train, bad_val, **self.kw)

  def test_empty_validation_batch(self):
    empty = {'image': self.val['image'][:0], 'label': self.val['label'][:0]}
    with pytest.raises(ValueError, match='validation batch is empty'):
      fj.meta_grad(self.theta, self.params, self.train, empty, **self.kw)

  def test_unknown_meta_model_lists_known_ones(self):
    with pytest.raises(ValueError, match=r"Unknown meta model 'mw_net'.*known: l2r, mlc, mlc_transition, mwnet"):
      fj.get_meta_model('mw_net')

  def test_unknown_mode(self):
    with pytest.raises(ValueError, match=r"Unknown meta-gradient mode 'fwd'.*jvp, reverse"):
      fj.meta_grad(self.theta, self.params, self.train, self.val, mode='fwd', **self.kw)

  def test_unknown_scope_leaf(self):
    with pytest.raises(ValueError, match='Meta scope names unknown parameters'):
      fj.meta_grad(self.theta, self.params, self.train, self.val,
                   scope=frozenset({'nope/kernel'}), **self.kw)

  def test_weights_shape_in_actual_step(self):
    tx = optax.sgd(0.1)
    with pytest.raises(ValueError, match='weights must have shape'):
      fj.actual_step(self.params, tx.init(self.params), self.train, jnp.ones(3),
                     apply_fn=self.kw['apply_fn'], meta_model=self.kw['meta_model'], tx=tx)

  def test_unknown_meta_optimizer(self):
    with pytest.raises(ValueError, match='meta.optimizer'):
      fj.make_meta_optimizer('rmsprop', 1e-3)
