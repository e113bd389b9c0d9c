"""Wide Residual Networks (Zagoruyko & Komodakis, 2016).

WRN-d-k: 3x3 conv stem with 16 channels, three stages of N = (d - 4) / 6
pre-activation wide blocks with 16k / 32k / 64k channels (stride 1, 2, 2),
then BN-ReLU-global-avg-pool-linear. Blocks are BN-ReLU-conv3x3-BN-ReLU-
[dropout]-conv3x3; when the channel count or stride changes, the shortcut is a
1x1 conv applied to the pre-activated input (as in the reference Lua/PyTorch
code). Convs have no bias.

WRN-28-10 (CIFAR-10): 36,479,194 parameters, 12 residual blocks.
WRN-40-2 (CIFAR-10): 2,243,546 parameters, 18 residual blocks.

Top-level modules: ``stem``, ``block1`` ... ``block{3N}``, ``head``.
"""

from __future__ import annotations

import jax.numpy as jnp
import flax.linen as nn

from famus_jax.models.common import ClassifierHead, canonical_dtype, Dtype
from famus_jax.models.preact_resnet import ConvStem, PreActBlock


class WideResNet(nn.Module):
  """WRN-depth-width.

  Attributes:
    num_classes: size of the classifier.
    depth: total depth d, with (d - 4) % 6 == 0.
    width: widening factor k.
    dropout: dropout rate between the two convs of each block (train only).
    base_width: channels of the stem (16 in the paper; smaller for tests).
    dtype: compute dtype; params stay float32.
  """
  num_classes: int = 10
  depth: int = 28
  width: int = 10
  dropout: float = 0.0
  base_width: int = 16
  dtype: Dtype = "float32"

  def __post_init__(self):
    if (self.depth - 4) % 6 != 0 or self.depth < 10:
      raise ValueError(f"WRN depth must be 6N+4 with N >= 1, got {self.depth}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
    super().__post_init__()

  @property
  def blocks_per_stage(self) -> int:
    return (self.depth - 4) // 6

  @nn.compact
  def __call__(self, x, train: bool):
    dtype = canonical_dtype(self.dtype)
    x = jnp.asarray(x, dtype)
    x = ConvStem(self.base_width, dtype=dtype, name="stem")(x, train)
    b = 0
    for s in range(3):
      for i in range(self.blocks_per_stage):
        b += 1
        x = PreActBlock(self.base_width * self.width * 2**s,
                        stride=2 if (s > 0 and i == 0) else 1,
                        dropout=self.dropout, dtype=dtype,
                        name=f"block{b}")(x, train)
    return ClassifierHead(self.num_classes, dtype=dtype, pre_norm=True,
                          name="head")(x, train)
