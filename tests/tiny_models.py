"""Tiny Flax models and data shared by the core tests (small shapes, fast compiles)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from famus_jax.training import build as build_lib

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


# The meta optimizer the core tests' references write out: SGD, β = 0.1, no decay.
SGD_META = {'optimizer': 'sgd', 'lr': 0.1, 'weight_decay': 0.0}  # config.meta fields


def tiny_parts(model, images, *, num_classes=NUM_CLASSES, meta=None, **fields):
  """The builder's `Parts` (`famus_jax.training.build.build_from_fields`) for
  `model` on images of `images`' shape: `base_config()` with a constant
  learning rate, `meta` ({'sampler': 'famus', ...}: fields of config.meta) and
  `fields` ('meta__method', 'optim__lr', ...: '__' for '.') set."""
  return build_lib.build_from_fields({k.replace('__', '.'): v for k, v in fields.items()},
                                     meta=meta, num_classes=num_classes,
                                     image_shape=images.shape[1:], model=model)


def tiny_setup(model, images, **kwargs):
  """The `StepSetup` of `tiny_parts(model, images, **kwargs)`."""
  return tiny_parts(model, images, **kwargs).setup
