"""A small ResNet for 28x28x1 images (Fashion-MNIST) that a CPU trains in minutes.

``FashionResNet``: the digits/CIFAR family's post-activation ResNet sized for
28x28 inputs: 3x3 conv stem (+BN-ReLU) at full resolution, then
``len(stage_sizes)`` stages of basic blocks with ``width * 2**s`` channels,
the first block of every stage at stride 2 with a 1x1 conv + BN projection
(28 -> 14 -> 7 -> 4 pixels), global average pool, linear.
Default (width 16, stage_sizes (1, 1, 1)): 3 blocks, 16/32/64 channels,
about 2.7 M multiply-adds per image, 78,042 parameters for 10 classes.

Top-level modules: ``stem``, ``block1`` ... ``blockB`` (B = sum of
``stage_sizes``), ``head`` — FaMUS's block structure (``structure.py``).
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import flax.linen as nn

from famus_jax.models.common import ClassifierHead, Dtype, canonical_dtype
from famus_jax.models.resnet import BasicBlock, CifarStem


class FashionResNet(nn.Module):
  """Post-activation ResNet for (N, 28, 28, C) inputs.

  Attributes:
    num_classes: size of the classifier.
    width: stem channels; stage s (0-based) has ``width * 2**s`` channels.
    stage_sizes: basic blocks per stage; every stage starts at stride 2.
    dtype: compute dtype; params stay float32.
  """
  num_classes: int = 10
  width: int = 16
  stage_sizes: Sequence[int] = (1, 1, 1)
  dtype: Dtype = "float32"

  def __post_init__(self):
    if self.width < 1:
      raise ValueError(f"width must be >= 1, got {self.width}")
    if not self.stage_sizes or min(self.stage_sizes) < 1:
      raise ValueError(f"stage_sizes must be non-empty, each >= 1, got {self.stage_sizes}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool):
    dtype = canonical_dtype(self.dtype)
    x = jnp.asarray(x, dtype)
    x = CifarStem(self.width, dtype=dtype, name="stem")(x, train)
    b = 0
    for s, n in enumerate(self.stage_sizes):
      for i in range(n):
        b += 1
        x = BasicBlock(self.width * 2**s, stride=2 if i == 0 else 1, shortcut="B",
                       dtype=dtype, name=f"block{b}")(x, train)
    return ClassifierHead(self.num_classes, dtype=dtype, name="head")(x, train)
