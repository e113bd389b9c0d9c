"""Small models for the embedded 8x8x1 digits data (sklearn ``load_digits``).

* ``DigitsMLP``: flatten -> ``depth`` x (Dense(width) + ReLU) -> Dense.
  No batch norm, so it has no ``batch_stats`` collection. Its first hidden
  layer is the ``stem``, hidden layers 2..depth are ``block1`` ...
  ``block{depth-1}`` (plain, not residual), the classifier is the ``head``.
  Default (width 64, depth 2): 8,970 parameters for 10 classes.
* ``DigitsCNN``: a tiny post-activation ResNet: 3x3 conv stem (+BN-ReLU),
  ``depth`` basic blocks with width, 2*width, 4*width, ... channels (the
  first at stride 1, the others at stride 2, with 1x1 conv + BN
  projections), global average pool, linear.
  Default (width 16, depth 3): channels 16/32/64, 3 blocks, 77,754
  parameters for 10 classes.
"""

from __future__ import annotations

import jax.numpy as jnp
import flax.linen as nn

from famus_jax.models.common import (ClassifierHead, Dtype, canonical_dtype,
                                     dense)
from famus_jax.models.resnet import BasicBlock, CifarStem


class DenseReLU(nn.Module):
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    del train
    return nn.relu(dense(self.features, dtype=self.dtype, name="dense")(x))


class DenseHead(nn.Module):
  num_classes: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    del train
    x = dense(self.num_classes, dtype=self.dtype, name="fc")(x)
    return jnp.asarray(x, jnp.float32)


class DigitsMLP(nn.Module):
  """MLP for NHWC (or already flat) inputs.

  Attributes:
    num_classes: size of the classifier.
    width: hidden units per layer.
    depth: number of hidden layers (>= 1).
    dtype: compute dtype; params stay float32.
  """
  num_classes: int = 10
  width: int = 64
  depth: int = 2
  dtype: Dtype = "float32"

  def __post_init__(self):
    if self.depth < 1:
      raise ValueError(f"depth must be >= 1, got {self.depth}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool):
    dtype = canonical_dtype(self.dtype)
    x = jnp.asarray(x, dtype).reshape((x.shape[0], -1))
    x = DenseReLU(self.width, dtype=dtype, name="stem")(x, train)
    for b in range(1, self.depth):
      x = DenseReLU(self.width, dtype=dtype, name=f"block{b}")(x, train)
    return DenseHead(self.num_classes, dtype=dtype, name="head")(x, train)


class DigitsCNN(nn.Module):
  """Tiny ResNet for 8x8x1 images.

  Attributes:
    num_classes: size of the classifier.
    width: stem channels; block b has ``width * 2**(b-1)`` channels.
    depth: number of residual blocks (each its own stage).
    dtype: compute dtype; params stay float32.
  """
  num_classes: int = 10
  width: int = 16
  depth: int = 3
  dtype: Dtype = "float32"

  def __post_init__(self):
    if self.depth < 1:
      raise ValueError(f"depth must be >= 1, got {self.depth}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool):
    dtype = canonical_dtype(self.dtype)
    x = jnp.asarray(x, dtype)
    x = CifarStem(self.width, dtype=dtype, name="stem")(x, train)
    for b in range(1, self.depth + 1):
      x = BasicBlock(self.width * 2**(b - 1), stride=1 if b == 1 else 2,
                     shortcut="B", dtype=dtype, name=f"block{b}")(x, train)
    return ClassifierHead(self.num_classes, dtype=dtype, name="head")(x, train)
