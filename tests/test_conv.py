"""The CPU convolution (models/cpu_conv.py) against XLA's: values and derivatives."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from famus_jax import models
from famus_jax.models import common, cpu_conv

# (N, H, C, O, stride, kernel, padding)
CASES = [(2, 8, 3, 4, 1, 3, 1), (2, 8, 3, 4, 2, 3, 1), (2, 9, 3, 4, 2, 3, 1),
         (2, 8, 4, 8, 2, 1, 0), (1, 10, 2, 3, 2, 7, 3), (3, 6, 2, 3, 1, 3, (0, 2))]


def _inputs(case, dtype):
  n, h, c, o, _, k, _ = case
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.standard_normal((n, h, h + 1, c)), dtype),
          jnp.asarray(rng.standard_normal((k, k, c, o)), dtype))


def _convs(case):
  stride, pad = case[4], case[6]
  pads = ((pad, pad), (pad, pad)) if isinstance(pad, int) else (pad, pad)
  ours = lambda x, w: cpu_conv.conv_nhwc(x, w, (stride, stride), pads)
  ref = lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), pads,
                                              dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return ours, ref


@jax.jit(static_argnums=0)
def _derivatives(conv, x, w):
  """Value, grad, jvp, grad-of-grad and jvp-of-grad of a scalar loss of conv."""
  loss = lambda x, w: jnp.sum(jnp.sin(conv(x, w)))
  grad = jax.grad(loss, (0, 1))
  return {
      'value': conv(x, w),
      'grad': grad(x, w),
      'jvp': jax.jvp(loss, (x, w), (jnp.cos(x), jnp.cos(w)))[1],
      'grad_of_grad': jax.grad(lambda w: jnp.sum(grad(x, w)[0] ** 2))(w),
      'jvp_of_grad': jax.jvp(lambda w: grad(x, w), (w,), (jnp.cos(w),))[1],
  }


@pytest.mark.parametrize('case', CASES)
def test_float64_derivatives_match_xla(case):
  with jax.enable_x64(True):
    x, w = _inputs(case, jnp.float64)
    ours, ref = _convs(case)
    chex.assert_trees_all_close(_derivatives(ours, x, w), _derivatives(ref, x, w),
                                rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize('case', CASES[:3])
def test_float32_gradients_match_xla_under_jit(case):
  x, w = _inputs(case, jnp.float32)
  ours, ref = _convs(case)
  loss = lambda conv: jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))), (0, 1)))
  chex.assert_trees_all_close(loss(ours)(x, w), loss(ref)(x, w), rtol=2e-5, atol=2e-5)


def test_vmap_falls_back_to_xla_values():
  x, w = _inputs(CASES[0], jnp.float32)
  ours, ref = _convs(CASES[0])
  xs = jnp.stack([x, 2 * x])
  chex.assert_trees_all_close(jax.vmap(ours, (0, None))(xs, w),
                              jax.vmap(ref, (0, None))(xs, w), rtol=1e-6, atol=1e-5)


def test_drop_in_passes_other_convolutions_to_xla():
  x = jnp.ones((1, 6, 6, 4))
  w = jnp.ones((3, 3, 2, 4))
  kw = dict(dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=2)
  chex.assert_trees_all_close(
      cpu_conv.conv_general_dilated(x, w, (1, 1), 'SAME', **kw),
      lax.conv_general_dilated(x, w, (1, 1), 'SAME', **kw))


def test_resolve_conv_impl():
  expected = 'cpu' if jax.default_backend() == 'cpu' else 'xla'
  assert common.resolve_conv_impl('auto') == expected
  assert common.resolve_conv_impl('xla') == 'xla'
  with pytest.raises(ValueError, match='conv_impl must be one of'):
    common.resolve_conv_impl('fast')


def test_cifar_resnet_same_parameters_and_gradients_for_every_conv_impl():
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(4, 16, 16, 3)), jnp.float32)
  y = jnp.arange(4) % 10
  out = {}
  for impl in ('xla', 'cpu'):
    model = models.get_model('resnet32', num_classes=10, depth=8, width=4, conv_impl=impl)
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0), x)

    def loss(params, model=model, variables=variables):
      logits, _ = model.apply({**variables, 'params': params}, x, train=True,
                              mutable=['batch_stats'])
      return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))
    out[impl] = (variables, jax.jit(jax.value_and_grad(loss))(variables['params']))
  chex.assert_trees_all_equal(out['xla'][0], out['cpu'][0])
  chex.assert_trees_all_close(out['xla'][1], out['cpu'][1], rtol=1e-4, atol=1e-5)
