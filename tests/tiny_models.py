"""Tiny Flax models and data shared by the core tests (small shapes, fast compiles)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from famus_jax.training import build as build_lib
from famus_jax.training import config as config_lib

NUM_CLASSES = 3


class TinyMLP(nn.Module):
  """Flatten → Dense(5) → tanh → Dense(C); no batch norm."""
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x, train: bool):
    del train
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_classes)(jnp.tanh(nn.Dense(5)(x)))


class TinyCNN(nn.Module):
  """Conv(3×3, 4) → BatchNorm → ReLU → mean pool → Dense(C)."""
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(4, (3, 3), dtype=x.dtype, param_dtype=x.dtype)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                     dtype=x.dtype, param_dtype=x.dtype)(x)
    x = jnp.mean(nn.relu(x), axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=x.dtype, param_dtype=x.dtype)(x)


def make_batches(seed=0, n=6, m=5, shape=(4, 4, 2), dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  train = {'image': jnp.asarray(rng.normal(size=(n, *shape)), dtype),
           'label': jnp.asarray(rng.integers(0, NUM_CLASSES, n), jnp.int32)}
  val = {'image': jnp.asarray(rng.normal(size=(m, *shape)), dtype),
         'label': jnp.asarray(rng.integers(0, NUM_CLASSES, m), jnp.int32)}
  return train, val


def init_model(model, images, seed=0):
  """Returns (params, batch_stats or None) with parameters in the images' dtype."""
  variables = model.init(jax.random.PRNGKey(seed), images, train=False)
  variables = jax.tree_util.tree_map(lambda x: x.astype(images.dtype), variables)
  return variables['params'], variables.get('batch_stats')


def tiny_setup(model, images, *, num_classes=NUM_CLASSES, **fields):
  """The builder's `StepSetup` (`famus_jax.training.build`) for `model` on
  images of `images`' shape: `base_config()` with a constant learning rate and
  `fields` set ('meta__method', 'optim__lr', ... as in `tiny_config`)."""
  c = config_lib.with_fields(config_lib.base_config(), {
      'optim.schedule': 'constant', **{k.replace('__', '.'): v for k, v in fields.items()}})
  return build_lib.build(c, num_classes=num_classes, image_shape=images.shape[1:],
                         model=model).setup
