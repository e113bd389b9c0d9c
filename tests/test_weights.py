"""`model.init_from`: a torchvision ResNet state dict (written here with
torchvision's names and shapes, no torch needed) loads into `resnet50`, and a
file that does not fit stops with one line naming the first mismatch."""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from famus_jax import core, models
from famus_jax.models import torchvision_resnet, weights
from famus_jax.training import build
from famus_jax.training.config import ConfigError, base_config

STAGES, WIDTH, CLASSES = (3, 4, 6, 3), 4, 7
SAMPLE = jnp.zeros((1, 32, 32, 3), jnp.float32)


def _bn(prefix, channels, rng):
  return {f'{prefix}.weight': rng.normal(size=channels), f'{prefix}.bias': rng.normal(size=channels),
          f'{prefix}.running_mean': rng.normal(size=channels),
          f'{prefix}.running_var': rng.uniform(0.5, 2, size=channels),
          f'{prefix}.num_batches_tracked': np.array(7)}


def torchvision_state(stages=STAGES, width=WIDTH, classes=CLASSES, seed=0):
  """A state dict laid out as torchvision.models.ResNet(Bottleneck, stages)'s,
  `width` in place of 64: names, (O, I, H, W) kernels, BN buffers."""
  rng = np.random.default_rng(seed)
  conv = lambda o, i, k: rng.normal(size=(o, i, k, k))
  sd = {'conv1.weight': conv(width, 3, 7), **_bn('bn1', width, rng)}
  inplanes = width
  for s, blocks in enumerate(stages, start=1):
    planes = width * 2 ** (s - 1)
    for i in range(blocks):
      p = f'layer{s}.{i}'
      sd.update({f'{p}.conv1.weight': conv(planes, inplanes, 1), **_bn(f'{p}.bn1', planes, rng),
                 f'{p}.conv2.weight': conv(planes, planes, 3), **_bn(f'{p}.bn2', planes, rng),
                 f'{p}.conv3.weight': conv(4 * planes, planes, 1),
                 **_bn(f'{p}.bn3', 4 * planes, rng)})
      if i == 0:  # stride 2, or inplanes != 4 * planes: a projection
        sd.update({f'{p}.downsample.0.weight': conv(4 * planes, inplanes, 1),
                   **_bn(f'{p}.downsample.1', 4 * planes, rng)})
      inplanes = 4 * planes
  sd.update({'fc.weight': rng.normal(size=(classes, inplanes)),
             'fc.bias': rng.normal(size=classes)})
  return {k: np.asarray(v, np.float32) for k, v in sd.items()}


@functools.lru_cache(maxsize=None)
def model_variables(classes=CLASSES):
  model = models.get_model('resnet50', num_classes=classes, width=WIDTH)
  return model, jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), SAMPLE, train=False))


def save(tmp_path, state, name='resnet50_torchvision.npz'):
  path = os.path.join(tmp_path, name)
  np.savez(path, **state)
  return path


def test_torchvision_state_dict_loads_with_transposed_kernels_and_bn_buffers(tmp_path):
  sd = torchvision_state()
  _, variables = model_variables()
  loaded = weights.load_weights(save(tmp_path, sd), variables)
  p, s = loaded['params'], loaded['batch_stats']
  np.testing.assert_array_equal(p['stem']['conv']['kernel'],
                                sd['conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(p['stem']['bn']['scale'], sd['bn1.weight'])
  np.testing.assert_array_equal(s['block4']['shortcut_bn']['var'],
                                sd['layer2.0.downsample.1.running_var'])
  np.testing.assert_array_equal(p['block9']['conv2']['kernel'],
                                sd['layer3.1.conv2.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(s['block16']['bn3']['mean'], sd['layer4.2.bn3.running_mean'])
  np.testing.assert_array_equal(p['head']['fc']['kernel'], sd['fc.weight'].T)
  n_file = sum(1 for k in sd if not k.endswith('num_batches_tracked'))
  assert len(jax.tree_util.tree_leaves(loaded)) == n_file == len(
      jax.tree_util.tree_leaves(variables))


def test_safetensors_and_our_names_load_the_same(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  sd = torchvision_state()
  _, variables = model_variables()
  st = os.path.join(tmp_path, 'w.safetensors')
  save_file(sd, st)
  ours = save(tmp_path, torchvision_resnet.to_flax(sd), 'ours.npz')
  a, b = weights.load_weights(st, variables), weights.load_weights(ours, variables)
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize('edit, message', [
    (lambda sd: sd.pop('layer3.1.bn2.running_var'),
     r"no 'batch_stats/block9/bn2/var' \(shape \(16,\)\), which the model needs"),
    (lambda sd: sd.update({'layer1.0.conv2.weight': np.zeros((4, 4, 1, 1), np.float32)}),
     r"'params/block1/conv2/kernel' has shape \(1, 1, 4, 4\), the model's is \(3, 3, 4, 4\)"),
    (lambda sd: sd.update({'layer4.3.conv1.weight': np.zeros((32, 128, 1, 1), np.float32)}),
     r"'params/block17/conv1/kernel' is not a variable of the model"),
    (lambda sd: sd.update({'layer1.0.se.weight': np.zeros(3, np.float32)}),
     r"'layer1.0.se.weight' is not a variable of a torchvision bottleneck ResNet"),
])
def test_a_file_that_does_not_fit_names_the_first_mismatch(tmp_path, edit, message):
  sd = torchvision_state()
  edit(sd)
  path = save(tmp_path, sd)
  with pytest.raises(weights.WeightsError, match=message) as e:
    weights.load_weights(path, model_variables()[1])
  assert '\n' not in str(e.value) and str(e.value).startswith(path)


def test_missing_unknown_and_corrupt_files_are_one_line(tmp_path):
  variables = model_variables()[1]
  with pytest.raises(weights.WeightsError, match=r'nope.npz: no such weights file$'):
    weights.load_weights(os.path.join(tmp_path, 'nope.npz'), variables)
  with pytest.raises(weights.WeightsError, match=r"unknown weights format '.pth'; known: "
                                                 r'.npz, .safetensors'):
    weights.load_weights(os.path.join(tmp_path, 'w.pth'), variables)
  bad = os.path.join(tmp_path, 'bad.npz')
  with open(bad, 'wb') as f:
    f.write(b'not a zip file at all' * 10)
  with pytest.raises(weights.WeightsError, match=r'bad.npz: not a readable .npz file') as e:
    weights.load_weights(bad, variables)
  assert '\n' not in str(e.value)


def _config(path, exclude=''):
  c = base_config()
  c.model.name = 'resnet50'
  c.model.kwargs = ml_collections.ConfigDict({'width': WIDTH, 'stage_sizes': (1, 1, 1, 1)})
  c.model.init_from, c.model.init_exclude = path, exclude
  return c


def test_config_init_from_keeps_the_excluded_head_and_loads_the_rest(tmp_path):
  """A 1000-class file into a 10-class model: one line naming the head without
  `init_exclude`; with 'head' the state holds the file's backbone, its own head."""
  path = save(tmp_path, torchvision_state(stages=(1, 1, 1, 1), classes=1000))
  model = models.get_model('resnet50', num_classes=10, width=WIDTH, stage_sizes=(1, 1, 1, 1))
  with pytest.raises(ConfigError, match=r"^config.model.init_from: .*'params/head/fc/bias'"
                                        r' has shape \(1000,\), the model.s is \(10,\)'):
    build.initial_weights(_config(path), model, SAMPLE)
  config = _config(path, exclude='head')
  arrays = build.initial_weights(config, model, SAMPLE)
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), SAMPLE, train=False))
  rng = np.random.default_rng(1)
  fresh_vars = jax.tree_util.tree_map(
      lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), abstract)
  fresh = core.TrainState(step=jnp.zeros((), jnp.int32), params=fresh_vars['params'],
                          batch_stats=fresh_vars['batch_stats'], opt_state={},
                          meta_params={}, meta_opt_state={}, rng=jax.random.PRNGKey(0))
  state = build.with_initial_weights(config, fresh, arrays)
  np.testing.assert_array_equal(state.params['block2']['shortcut_conv']['kernel'],
                                arrays['params/block2/shortcut_conv/kernel'])
  np.testing.assert_array_equal(state.batch_stats['stem']['bn']['var'],
                                arrays['batch_stats/stem/bn/var'])
  np.testing.assert_array_equal(state.params['head']['fc']['kernel'],
                                fresh.params['head']['fc']['kernel'])
  assert build.initial_weights(_config(''), model, SAMPLE) is None


def test_resnet_input_normalisation_is_torchvision_normalize():
  kw = dict(num_classes=3, width=4, stage_sizes=(1, 1, 1, 1))
  mean, std = (0.7, 0.6, 0.5), (0.3, 0.2, 0.1)
  plain = models.get_model('resnet50', **kw)
  normed = models.get_model('resnet50', input_mean=mean, input_std=std, **kw)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 16, 16, 3)), jnp.float32)
  abstract = jax.eval_shape(lambda: plain.init(jax.random.PRNGKey(0), x, train=False))
  rng = np.random.default_rng(1)
  variables = jax.tree_util.tree_map(
      lambda a: jnp.asarray(rng.uniform(0.5, 1.5, size=a.shape), a.dtype), abstract)
  both = jax.jit(lambda v, x: (normed.apply(v, x, train=False), plain.apply(
      v, (x - jnp.asarray(mean)) / jnp.asarray(std), train=False)))
  got, want = both(variables, x)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  with pytest.raises(ValueError, match='same length'):
    models.get_model('resnet50', input_mean=mean, **kw).init(jax.random.PRNGKey(0), x,
                                                             train=False)
