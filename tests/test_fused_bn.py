"""Fused BN + ReLU (models/fused_bn.py) against nn.BatchNorm + relu: values and derivatives."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from famus_jax import models
from famus_jax.models import fused_bn, structure

EPS = 1e-5


def _reference(x, scale, bias, residual):
  """relu(nn.BatchNorm(train)(x) [+ residual]) and the batch mean / variance."""
  bn = nn.BatchNorm(use_running_average=False, epsilon=EPS, momentum=0.0,
                    param_dtype=x.dtype)
  y, stats = bn.apply({'params': {'scale': scale, 'bias': bias},
                       'batch_stats': {'mean': jnp.zeros_like(scale),
                                       'var': jnp.zeros_like(scale)}},
                      x, mutable=['batch_stats'])
  y = y if residual is None else y + residual
  return nn.relu(y), stats['batch_stats']['mean'], stats['batch_stats']['var']


def _fused(x, scale, bias, residual):
  return fused_bn.bn_relu_train(x, scale, bias, residual, EPS)


def _inputs(dtype, with_residual):
  rng = np.random.default_rng(0)
  arr = lambda *shape: jnp.asarray(rng.standard_normal(shape), dtype)
  args = [arr(3, 4, 5, 6), arr(6), arr(6)]
  return args + [arr(3, 4, 5, 6) if with_residual else None]


@jax.jit(static_argnums=0)
def _derivatives(fn, x, scale, bias, residual):
  """Value, batch stats, grad, jvp, grad-of-grad and jvp-of-grad of a scalar loss."""
  def loss(x, scale, bias, residual):
    out, mean, var = fn(x, scale, bias, residual)
    return jnp.sum(jnp.sin(out)) + jnp.sum(mean * jnp.cos(var))
  args = (x, scale, bias, residual)
  argnums = (0, 1, 2) if residual is None else (0, 1, 2, 3)
  grad = jax.grad(loss, argnums)
  tangents = jax.tree.map(jnp.cos, args)
  return {
      'value': fn(*args),
      'grad': grad(*args),
      'jvp': jax.jvp(loss, args, tangents)[1],
      'grad_of_grad': jax.grad(lambda s: jnp.sum(grad(x, s, bias, residual)[0] ** 2))(scale),
      'jvp_of_grad': jax.jvp(lambda x: grad(x, scale, bias, residual), (x,),
                             (jnp.cos(x),))[1],
  }


@pytest.mark.parametrize('with_residual', [False, True])
def test_float64_derivatives_match_flax(with_residual):
  with jax.enable_x64(True):
    args = _inputs(jnp.float64, with_residual)
    chex.assert_trees_all_close(_derivatives(_fused, *args), _derivatives(_reference, *args),
                                rtol=1e-10, atol=1e-10)


def test_module_matches_batch_norm_then_relu():
  """Same variables, outputs and running averages, train and eval, with a residual."""
  x, _, _, r = _inputs(jnp.float32, True)
  ours = fused_bn.BatchNormReLU(use_running_average=False)
  ref = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=EPS)
  v_ours = ours.init(jax.random.PRNGKey(0), x, r)
  v_ref = ref.init(jax.random.PRNGKey(0), x)
  chex.assert_trees_all_equal(v_ours, v_ref)
  params = {'scale': jnp.linspace(0.5, 2.0, 6), 'bias': jnp.linspace(-1.0, 1.0, 6)}
  variables = {**v_ref, 'params': params}
  out, new = ours.apply(variables, x, r, mutable=['batch_stats'])
  y, new_ref = ref.apply(variables, x, mutable=['batch_stats'])
  chex.assert_trees_all_close(out, nn.relu(y + r), rtol=1e-6, atol=1e-6)
  chex.assert_trees_all_close(new, new_ref, rtol=1e-6, atol=1e-7)
  evaluate = {**variables, **new}
  chex.assert_trees_all_close(
      ours.clone(use_running_average=True).apply(evaluate, x, r),
      nn.relu(ref.clone(use_running_average=True).apply(evaluate, x) + r),
      rtol=1e-6, atol=1e-6)


def _resnet(norm_impl, shortcut='A'):
  return models.get_model('resnet32', num_classes=10, depth=8, width=4, shortcut=shortcut,
                          conv_impl='xla', norm_impl=norm_impl)


def test_cifar_resnet_same_parameters_values_and_derivatives_for_every_norm_impl():
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(4, 16, 16, 3)), jnp.float32)
  y = jnp.arange(4) % 10
  out = {}
  for impl in models.common.NORM_IMPLS:
    model = _resnet(impl)
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0), x)

    def loss(params, model=model, variables=variables):
      logits, new = model.apply({**variables, 'params': params}, x, train=True,
                                mutable=['batch_stats'])
      return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1)), new
    params = variables['params']
    tangent = jax.tree.map(jnp.cos, params)
    jvp = jax.jvp(lambda p: loss(p)[0], (params,), (tangent,))[1]
    out[impl] = (variables, jax.jit(jax.value_and_grad(loss, has_aux=True))(params), jvp,
                 model.apply(variables, x, train=False))
  chex.assert_trees_all_equal(out['flax'][0], out['fused'][0])
  chex.assert_trees_all_close(out['flax'][1:], out['fused'][1:], rtol=1e-4, atol=1e-5)


def test_fused_keeps_the_layer_call_order_with_projection_shortcuts():
  x = jnp.zeros((2, 16, 16, 3))
  orders = {}
  for impl in models.common.NORM_IMPLS:
    model = _resnet(impl, shortcut='B')
    params = jax.eval_shape(functools.partial(model.init, train=False),
                            jax.random.PRNGKey(0), x)['params']
    orders[impl] = structure.module_call_order(model, params, x)
  assert list(orders['fused']) == list(orders['flax'])


def test_unknown_norm_impl_is_a_clear_error():
  with pytest.raises(ValueError, match='norm_impl must be one of'):
    _resnet('apex')
