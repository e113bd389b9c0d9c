"""Inception-ResNet-v2 (Szegedy et al., 2017) in the timm / TF-slim layout.

This is the layout used by the WebVision baselines (timm
``inception_resnet_v2``, ported from TF-slim): the stem ends with the
``Mixed_5b`` Inception module (320 channels), followed by 10 x Block35
(Inception-ResNet-A, residual scale 0.17), Mixed_6a (Reduction-A),
20 x Block17 (Inception-ResNet-B, scale 0.10), Mixed_7a (Reduction-B),
9 x Block8 (Inception-ResNet-C, scale 0.20) plus a final Block8 without ReLU
(scale 1.0), a 1x1 conv to 1536 channels, global average pool and a linear
classifier. Every conv except the residual "up" projections is
conv(no bias)-BN(eps=1e-3)-ReLU. 55,843,464 parameters with 1000 classes.

Block structure (``block b`` for FaMUS): each Inception-ResNet module and each
reduction module is one block, so the default network has
10 + 1 + 20 + 1 + 10 = 42 blocks:

* ``stem``: conv2d_1a ... conv2d_4a and mixed_5b (not residual);
* ``block1``-``block10``: Block35; ``block11``: Mixed_6a;
* ``block12``-``block31``: Block17; ``block32``: Mixed_7a;
* ``block33``-``block42``: Block8 (the last one without ReLU);
* ``head``: conv2d_7b (1x1 -> 1536), pool, dropout, fc.

The minimum input size is 75x75 (VALID convs/pools as in the reference).
``width_mult`` scales every channel count and ``repeats`` the number of
A/B/C modules; both exist to build tiny versions for tests.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import flax.linen as nn

from famus_jax.models.common import (Dtype, batch_norm, canonical_dtype, conv,
                                     dense, global_avg_pool)

_P1 = ((1, 1), (1, 1))


class BasicConv(nn.Module):
  """conv (no bias) - BN(eps=1e-3) - ReLU. ``padding`` 'VALID' or explicit."""
  features: int
  kernel: tuple[int, int] | int
  stride: int = 1
  padding: object = "VALID"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = conv(self.features, self.kernel, stride=self.stride,
             padding=self.padding, dtype=self.dtype, name="conv")(x)
    x = batch_norm(train, dtype=self.dtype, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _max_pool(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class _Module(nn.Module):
  """Base with channel scaling; subclasses use ``self.c(n)``."""
  width_mult: float = 1.0
  dtype: Dtype = jnp.float32

  def c(self, n: int) -> int:
    return max(1, int(round(n * self.width_mult)))

  def bc(self, n, kernel, name, stride=1, padding="VALID"):
    return BasicConv(self.c(n), kernel, stride=stride, padding=padding,
                     dtype=self.dtype, name=name)


class Mixed5b(_Module):
  """Inception-A style module 192 -> 320 channels (end of the stem)."""

  @nn.compact
  def __call__(self, x, train: bool):
    x0 = self.bc(96, 1, "branch0")(x, train)
    x1 = self.bc(48, 1, "branch1_0")(x, train)
    x1 = self.bc(64, 5, "branch1_1", padding=((2, 2), (2, 2)))(x1, train)
    x2 = self.bc(64, 1, "branch2_0")(x, train)
    x2 = self.bc(96, 3, "branch2_1", padding=_P1)(x2, train)
    x2 = self.bc(96, 3, "branch2_2", padding=_P1)(x2, train)
    x3 = nn.avg_pool(x, (3, 3), strides=(1, 1), padding=_P1,
                     count_include_pad=False)
    x3 = self.bc(64, 1, "branch3_1")(x3, train)
    return jnp.concatenate([x0, x1, x2, x3], axis=-1)


class Stem(_Module):

  @nn.compact
  def __call__(self, x, train: bool):
    x = self.bc(32, 3, "conv2d_1a", stride=2)(x, train)
    x = self.bc(32, 3, "conv2d_2a")(x, train)
    x = self.bc(64, 3, "conv2d_2b", padding=_P1)(x, train)
    x = _max_pool(x)
    x = self.bc(80, 1, "conv2d_3b")(x, train)
    x = self.bc(192, 3, "conv2d_4a")(x, train)
    x = _max_pool(x)
    return Mixed5b(self.width_mult, self.dtype, name="mixed_5b")(x, train)


class _Residual(_Module):
  """Shared tail: concat -> 1x1 conv (with bias) back to C -> x + s * y."""
  scale: float = 1.0
  activate: bool = True

  def residual(self, x, branches):
    y = jnp.concatenate(branches, axis=-1)
    y = conv(x.shape[-1], 1, padding="VALID", use_bias=True, dtype=self.dtype,
             name="up")(y)
    y = x + self.scale * y
    return nn.relu(y) if self.activate else y


class Block35(_Residual):
  """Inception-ResNet-A (35x35 grid in the paper), 320 channels."""

  @nn.compact
  def __call__(self, x, train: bool):
    x0 = self.bc(32, 1, "branch0")(x, train)
    x1 = self.bc(32, 1, "branch1_0")(x, train)
    x1 = self.bc(32, 3, "branch1_1", padding=_P1)(x1, train)
    x2 = self.bc(32, 1, "branch2_0")(x, train)
    x2 = self.bc(48, 3, "branch2_1", padding=_P1)(x2, train)
    x2 = self.bc(64, 3, "branch2_2", padding=_P1)(x2, train)
    return self.residual(x, [x0, x1, x2])


class Mixed6a(_Module):
  """Reduction-A: 320 -> 1088 channels, stride 2."""

  @nn.compact
  def __call__(self, x, train: bool):
    x0 = self.bc(384, 3, "branch0", stride=2)(x, train)
    x1 = self.bc(256, 1, "branch1_0")(x, train)
    x1 = self.bc(256, 3, "branch1_1", padding=_P1)(x1, train)
    x1 = self.bc(384, 3, "branch1_2", stride=2)(x1, train)
    return jnp.concatenate([x0, x1, _max_pool(x)], axis=-1)


class Block17(_Residual):
  """Inception-ResNet-B (17x17 grid), 1088 channels."""

  @nn.compact
  def __call__(self, x, train: bool):
    x0 = self.bc(192, 1, "branch0")(x, train)
    x1 = self.bc(128, 1, "branch1_0")(x, train)
    x1 = self.bc(160, (1, 7), "branch1_1", padding=((0, 0), (3, 3)))(x1, train)
    x1 = self.bc(192, (7, 1), "branch1_2", padding=((3, 3), (0, 0)))(x1, train)
    return self.residual(x, [x0, x1])


class Mixed7a(_Module):
  """Reduction-B: 1088 -> 2080 channels, stride 2."""

  @nn.compact
  def __call__(self, x, train: bool):
    x0 = self.bc(256, 1, "branch0_0")(x, train)
    x0 = self.bc(384, 3, "branch0_1", stride=2)(x0, train)
    x1 = self.bc(256, 1, "branch1_0")(x, train)
    x1 = self.bc(288, 3, "branch1_1", stride=2)(x1, train)
    x2 = self.bc(256, 1, "branch2_0")(x, train)
    x2 = self.bc(288, 3, "branch2_1", padding=_P1)(x2, train)
    x2 = self.bc(320, 3, "branch2_2", stride=2)(x2, train)
    return jnp.concatenate([x0, x1, x2, _max_pool(x)], axis=-1)


class Block8(_Residual):
  """Inception-ResNet-C (8x8 grid), 2080 channels."""

  @nn.compact
  def __call__(self, x, train: bool):
    x0 = self.bc(192, 1, "branch0")(x, train)
    x1 = self.bc(192, 1, "branch1_0")(x, train)
    x1 = self.bc(224, (1, 3), "branch1_1", padding=((0, 0), (1, 1)))(x1, train)
    x1 = self.bc(256, (3, 1), "branch1_2", padding=((1, 1), (0, 0)))(x1, train)
    return self.residual(x, [x0, x1])


class Head(_Module):
  num_classes: int = 1000
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool):
    x = self.bc(1536, 1, "conv2d_7b")(x, train)
    x = global_avg_pool(x)
    if self.dropout > 0:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = dense(self.num_classes, dtype=self.dtype, name="fc")(x)
    return jnp.asarray(x, jnp.float32)


class InceptionResNetV2(nn.Module):
  """Inception-ResNet-v2.

  Attributes:
    num_classes: size of the classifier (1000 for ImageNet/WebVision-1000,
      50 for mini-WebVision).
    width_mult: multiplies every channel count (1.0 = the paper).
    repeats: number of (A, B, C) Inception-ResNet modules; (10, 20, 10) is the
      paper (the last C module has no ReLU).
    dropout: dropout before the classifier (train only).
    dtype: compute dtype; params stay float32.
  """
  num_classes: int = 1000
  width_mult: float = 1.0
  repeats: Sequence[int] = (10, 20, 10)
  dropout: float = 0.0
  dtype: Dtype = "float32"

  def __post_init__(self):
    if len(self.repeats) != 3 or min(self.repeats) < 1:
      raise ValueError(f"repeats must be 3 positive ints, got {self.repeats}")
    if self.width_mult <= 0:
      raise ValueError(f"width_mult must be > 0, got {self.width_mult}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool):
    dtype = canonical_dtype(self.dtype)
    kw = dict(width_mult=self.width_mult, dtype=dtype)
    x = jnp.asarray(x, dtype)
    if min(x.shape[1:3]) < 75:
      raise ValueError(f"Inception-ResNet-v2 needs inputs >= 75x75, got {x.shape}")
    x = Stem(**kw, name="stem")(x, train)
    n_a, n_b, n_c = self.repeats
    b = 0

    def name():
      nonlocal b
      b += 1
      return f"block{b}"

    for _ in range(n_a):
      x = Block35(**kw, scale=0.17, name=name())(x, train)
    x = Mixed6a(**kw, name=name())(x, train)
    for _ in range(n_b):
      x = Block17(**kw, scale=0.10, name=name())(x, train)
    x = Mixed7a(**kw, name=name())(x, train)
    for i in range(n_c):
      last = i == n_c - 1
      x = Block8(**kw, scale=1.0 if last else 0.20, activate=not last,
                 name=name())(x, train)
    return Head(**kw, num_classes=self.num_classes, dropout=self.dropout,
                name="head")(x, train)
