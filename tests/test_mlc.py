"""Official MLC (Wang, Hu, Hu 2020): the step against a hand-written reference,
finite differences for ∂L^val/∂T, the projection of T', Actual-Train, the
non-meta iteration and FaMUS; `mlc_transition` kept apart."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import famus_jax as fj
from famus_jax import meta_models
from famus_jax.training import config as config_lib
from tiny_models import TinyCNN, make_batches, tiny_setup

C = 3
LR, MOMENTUM, WD = 0.05, 0.9, 5e-4  # base optimizer; the look-ahead must use 1e-3


class TwoLayer(nn.Module):
  """x @ W1 + b1 → tanh → @ W2 + b2, parameters in float64."""

  @nn.compact
  def __call__(self, x, train):
    del train
    h = jnp.tanh(nn.Dense(4, param_dtype=jnp.float64, name='hidden')(x))
    return nn.Dense(C, param_dtype=jnp.float64, name='out')(h)


MODEL = TwoLayer()  # one instance: jitted functions of its apply compile once


def logits_by_hand(p, x):
  h = jnp.tanh(x @ p['hidden']['kernel'] + p['hidden']['bias'])
  return h @ p['out']['kernel'] + p['out']['bias']


def ce_by_hand(z, y):  # (n, C), (n,) -> (n,)
  return jax.nn.logsumexp(z, axis=1) - z[jnp.arange(z.shape[0]), y]


def problem():
  rng = np.random.default_rng(0)
  train = {'image': jnp.asarray(rng.normal(size=(7, 2))),
           'label': jnp.asarray([0, 1, 2, 2, 1, 0, 2], jnp.int32)}
  val = {'image': jnp.asarray(rng.normal(size=(5, 2))),
         'label': jnp.asarray([1, 0, 2, 1, 0], jnp.int32)}
  params = jax.jit(functools.partial(MODEL.init, train=False))(jax.random.PRNGKey(0),
                                                                train['image'])['params']
  return params, train, val


def val_loss_by_hand(t, params, train, val, inner_lr=1e-3):
  """L^val(ŵ(T)) with ŵ = w − inner_lr ∇_w Σ_i CE(f(x_i; w) @ T, ỹ_i)."""
  train_loss = lambda p: jnp.sum(ce_by_hand(logits_by_hand(p, train['image']) @ t,
                                            train['label']))
  grads = jax.grad(train_loss)(params)
  w_hat = jax.tree_util.tree_map(lambda w, g: w - inner_lr * g, params, grads)
  return jnp.mean(ce_by_hand(logits_by_hand(w_hat, val['image']), val['label']))


# One jitted function each for the file (the float64 programs compile once): the
# hand reference, its meta gradient and the library's meta gradient.
hand_val_loss = jax.jit(val_loss_by_hand)
hand_meta_grad = jax.jit(jax.grad(val_loss_by_hand))
meta_grad = jax.jit(fj.meta_grad, static_argnames=('apply_fn', 'meta_model', 'mode'))


def project_by_hand(t):
  """max(T, 0), then each column with a non-zero sum divided by it (loops)."""
  t = np.maximum(np.array(t), 0.0)
  for j in range(t.shape[1]):
    if t[:, j].sum() != 0:
      t[:, j] /= t[:, j].sum()
  return t


@pytest.mark.parametrize('mode', ['jvp', 'reverse'])
def test_meta_gradient_and_new_transition_match_the_hand_reference(mode):
  mlc = fj.get_meta_model('mlc')
  with jax.enable_x64(True):
    params, train, val = problem()
    theta = mlc.lookahead_params(mlc.init(jax.random.PRNGKey(1), C), 7)
    np.testing.assert_array_equal(np.asarray(theta['transition']), np.eye(C))
    got = meta_grad(theta, params, train, val, apply_fn=MODEL.apply, meta_model=mlc,
                    lr=mlc.lookahead_lr(LR), mode=mode)
    expected = hand_meta_grad(jnp.eye(C), params, train, val)
    np.testing.assert_allclose(np.asarray(got.theta['transition']), expected,
                               rtol=1e-10, atol=1e-14)
    assert float(jnp.max(jnp.abs(expected))) > 1e-6
    np.testing.assert_allclose(
        float(got.val_loss), float(hand_val_loss(jnp.eye(C), params, train, val)),
        rtol=1e-12)
    t_new = mlc.meta_update(theta, got.theta)['transition']
    np.testing.assert_allclose(np.asarray(t_new),
                               project_by_hand(np.eye(C) - 0.11 * np.asarray(expected)),
                               rtol=1e-12)


def test_meta_gradient_matches_central_differences():
  mlc = fj.get_meta_model('mlc')
  with jax.enable_x64(True):
    params, train, val = problem()
    theta = {'transition': jnp.eye(C)}
    grad = np.asarray(meta_grad(theta, params, train, val, apply_fn=MODEL.apply,
                                meta_model=mlc, lr=1e-3).theta['transition'])
    objective = jax.jit(lambda t: val_loss_by_hand(t, params, train, val))
    eps = 1e-5
    fd = np.zeros((C, C))
    for i in range(C):
      for j in range(C):
        step = eps * jnp.zeros((C, C)).at[i, j].set(1.0)
        fd[i, j] = (objective(jnp.eye(C) + step) - objective(jnp.eye(C) - step)) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-11)


def test_meta_update_clamps_and_normalises_columns_keeping_a_zero_column():
  mlc = fj.get_meta_model('mlc')
  g = jnp.array([[-1.0, 0.0, 1.0], [-1.0, 20.0, 0.0], [0.0, 0.0, 0.0]])
  # I − 0.11 g = [[1.11, 0, −0.11], [0.11, −1.2, 0], [0, 0, 1]]: two negatives
  # clamp to 0, column 1 becomes all zero, column 0 sums to 1.22.
  got = np.asarray(mlc.meta_update({'transition': jnp.eye(3)}, {'transition': g})['transition'])
  expected = np.array([[111 / 122, 0, 0], [11 / 122, 0, 0], [0, 0, 1.0]])
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  assert np.all(np.isfinite(got))
  np.testing.assert_array_equal(
      np.asarray(meta_models.column_normalize(jnp.array([[2.0, 0.0], [6.0, 0.0]]))),
      [[0.25, 0.0], [0.75, 0.0]])


def test_loss_corrects_logits_before_the_softmax_and_sums():
  mlc = fj.get_meta_model('mlc')
  logits = jnp.array([[1.0, 2.0, 0.5], [0.0, 0.3, 2.0]])
  labels = jnp.array([1, 2])
  t = jnp.array([[0.5, 0.2, 0.0], [0.5, 0.8, 0.0], [0.0, 0.0, 1.0]])
  np.testing.assert_allclose(np.asarray(mlc.loss({'transition': t}, logits, labels)),
                             np.asarray(ce_by_hand(logits @ t, labels)), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(mlc.weights(None, jnp.zeros(2))), [1.0, 1.0])


def make_step_state(mode, model=None, images=None, **meta):
  """MLC's setup from the builder (SGD with the test's lr, momentum and weight
  decay; Adam 1e-3 on T) and a fresh state; `meta`: further `config.meta` fields."""
  model = model or MODEL
  setup = tiny_setup(model, images, num_classes=C, meta__method='mlc', meta__mode=mode,
                     meta__weight_decay=0.0, optim__lr=LR, optim__momentum=MOMENTUM,
                     optim__weight_decay=WD, **{f'meta__{k}': v for k, v in meta.items()})
  state = fj.create_train_state(jax.random.PRNGKey(0), model, images, C, setup)
  return setup, state


@pytest.mark.parametrize('mode', ['jvp', 'reverse'])
def test_meta_train_step_actual_update_matches_the_hand_reference(mode):
  with jax.enable_x64(True):
    params, train, val = problem()
    setup, state = make_step_state(mode, images=train['image'])
    state = state.replace(params=params, opt_state=setup.tx.init(params))
    new_state, metrics = fj.jit_meta_train_step(setup, donate=False)(state, train, val)
    g = hand_meta_grad(jnp.eye(C), params, train, val)
    t_new = jnp.asarray(project_by_hand(np.eye(C) - 0.11 * np.asarray(g)))
    actual_loss = lambda p: jnp.sum(ce_by_hand(logits_by_hand(p, train['image']) @ t_new,
                                               train['label']))
    grads = jax.grad(actual_loss)(params)
    # PyTorch SGD, first step (empty momentum buffer): w − α (g + λ w).
    expected = jax.tree_util.tree_map(lambda w, d: w - LR * (d + WD * w), params, grads)
    chex.assert_trees_all_close(new_state.params, expected, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(float(metrics['weighted_loss']), float(actual_loss(params)),
                               rtol=1e-12)
    chex.assert_trees_all_equal(new_state.meta_params, state.meta_params)  # nothing persists


def test_non_meta_iteration_is_the_plain_batch_sum_cross_entropy():
  """meta.interval > 1: T = I and weight 1, i.e. an SGD step on Σ_i CE."""
  with jax.enable_x64(True):
    params, train, _ = problem()
    setup, state = make_step_state('jvp', images=train['image'])
    state = state.replace(params=params, opt_state=setup.tx.init(params))
    new_state, _ = jax.jit(functools.partial(fj.core.weighted_train_step, setup=setup))(
        state, train)
    grads = jax.grad(lambda p: jnp.sum(ce_by_hand(logits_by_hand(p, train['image']),
                                                  train['label'])))(params)
    expected = jax.tree_util.tree_map(lambda w, d: w - LR * (d + WD * w), params, grads)
    chex.assert_trees_all_close(new_state.params, expected, rtol=1e-10, atol=1e-13)


def test_famus_step_runs_and_jvp_equals_reverse():
  model = TinyCNN(num_classes=C)  # conv, batch norm and dense candidate layers
  train, val = make_batches(n=8, m=6)
  outs = []
  for mode in ('jvp', 'reverse'):
    setup, state = make_step_state(mode, model, train['image'], sampler='famus', k=2,
                                   lambda1=0.1, lambda2=0.1)
    outs.append(fj.jit_meta_train_step(setup, donate=False)(state, train, val))
  chex.assert_trees_all_close(outs[0][0].params, outs[1][0].params, rtol=1e-4, atol=1e-7)
  chex.assert_trees_all_close(outs[0][0].sampler_params, outs[1][0].sampler_params,
                              rtol=1e-4, atol=1e-7)
  assert float(outs[0][1]['meta_grad_norm']) > 0
  assert not np.allclose(np.asarray(jax.tree_util.tree_leaves(outs[0][0].sampler_params)[0]),
                         np.asarray(jax.tree_util.tree_leaves(state.sampler_params)[0]))


def test_mlc_and_mlc_transition_are_different_models():
  mlc, ext = fj.get_meta_model('mlc'), fj.get_meta_model('mlc_transition')
  assert (mlc.persistent, ext.persistent) == (False, True)
  assert (mlc.lookahead_lr(0.1), ext.lookahead_lr(0.1)) == (1e-3, 0.1)
  assert fj.get_meta_model('mlc', step_size=1e-5, inner_lr=0.1).lookahead_lr(0.5) == 0.1


def test_config_model_kwargs_are_checked():
  config = config_lib.base_config()
  config.meta.method = 'mlc'
  config.meta.model_kwargs.step_size = 1e-5
  config_lib.validate_config(config)
  config.meta.model_kwargs.beta = 1e-5
  with pytest.raises(config_lib.ConfigError,
                     match=r"meta.model_kwargs: meta model 'mlc' has no field\(s\) beta; "
                           r'its fields: inner_lr, step_size'):
    config_lib.validate_config(config)
