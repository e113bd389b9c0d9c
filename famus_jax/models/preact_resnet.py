"""PreActResNet-18 (He et al. 2016, identity mappings) with a CIFAR stem.

Layout as in DivideMix's ``PreResNet.py`` (the paper's CIFAR / CNWL backbone):
3x3 conv stem with 64 channels, four stages of two ``PreActBlock`` s with
64/128/256/512 channels, then BN-ReLU-global-avg-pool-linear. A 1x1 conv
(no BN) projects the pre-activated input when the shape changes.
11,172,170 parameters for 10 classes.

Top-level modules: ``stem`` (the conv), ``block1`` ... ``block8``, ``head``.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import flax.linen as nn

from famus_jax.models.common import (ClassifierHead, Dtype, batch_norm,
                                     canonical_dtype, conv)


class ConvStem(nn.Module):
  """A single 3x3 conv (no BN: the first block pre-activates)."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    del train
    return conv(self.features, 3, dtype=self.dtype, name="conv")(x)


class PreActBlock(nn.Module):
  """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with an identity / 1x1-conv shortcut."""
  features: int
  stride: int = 1
  dtype: Dtype = jnp.float32
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool):
    out = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(x))
    needs_proj = self.stride != 1 or x.shape[-1] != self.features
    # The projection shortcut sees the pre-activated input (DivideMix/kuangliu).
    shortcut = out if needs_proj else x
    y = conv(self.features, 3, stride=self.stride, dtype=self.dtype,
             name="conv1")(out)
    y = nn.relu(batch_norm(train, dtype=self.dtype, name="bn2")(y))
    if self.dropout > 0:
      y = nn.Dropout(self.dropout, deterministic=not train)(y)
    y = conv(self.features, 3, dtype=self.dtype, name="conv2")(y)
    if needs_proj:
      shortcut = conv(self.features, 1, stride=self.stride, padding="VALID",
                      dtype=self.dtype, name="shortcut")(shortcut)
    return y + shortcut


class PreActResNet(nn.Module):
  """Pre-activation ResNet with a CIFAR stem.

  Attributes:
    num_classes: size of the classifier.
    width: channels of the first stage (stage s has ``width * 2**s``).
    stage_sizes: blocks per stage; (2, 2, 2, 2) is PreActResNet-18.
    dtype: compute dtype ('float32' or 'bfloat16'); params stay float32.
  """
  num_classes: int = 10
  width: int = 64
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  dtype: Dtype = "float32"

  @nn.compact
  def __call__(self, x, train: bool):
    dtype = canonical_dtype(self.dtype)
    x = jnp.asarray(x, dtype)
    x = ConvStem(self.width, dtype=dtype, name="stem")(x, train)
    b = 0
    for s, n in enumerate(self.stage_sizes):
      for i in range(n):
        b += 1
        x = PreActBlock(self.width * 2**s, stride=2 if (s > 0 and i == 0) else 1,
                        dtype=dtype, name=f"block{b}")(x, train)
    return ClassifierHead(self.num_classes, dtype=dtype, pre_norm=True,
                          name="head")(x, train)
