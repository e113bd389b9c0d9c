"""Post-activation ResNets (He et al. 2016).

* ``CifarResNet`` -- the CIFAR ResNet-(6n+2) of He et al. Sec. 4.2: 3x3 conv
  stem with 16 channels (+BN-ReLU), three stages of n basic blocks with
  16 / 32 / 64 channels, global average pool, linear. Shortcuts are option A
  (parameter-free: stride-2 subsampling + zero-padding of the new channels), as
  in the paper and in MW-Net's long-tailed CIFAR code. ResNet-32 (n = 5):
  464,154 parameters for 10 classes ("0.46 M" in the paper), 15 blocks.
* ``ResNet`` -- the ImageNet ResNet in torchvision's layout (v1.5: the stride
  sits on the 3x3 conv of the bottleneck; projection shortcuts are 1x1 conv +
  BN). ResNet-50: 25,557,032 parameters with a 1000-class head, 16 blocks.

Top-level modules: ``stem``, ``block1`` ... ``blockB``, ``head``.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import flax.linen as nn

from famus_jax.models.common import (NORM_IMPLS, ClassifierHead, Dtype,
                                     batch_norm, batch_norm_relu, canonical_dtype,
                                     conv, resolve_conv_impl)


class CifarStem(nn.Module):
  """3x3 conv + BN + ReLU."""
  features: int
  dtype: Dtype = jnp.float32
  conv_impl: str = "xla"
  norm_impl: str = "flax"

  @nn.compact
  def __call__(self, x, train: bool):
    x = conv(self.features, 3, dtype=self.dtype, name="conv",
             impl=self.conv_impl)(x)
    return batch_norm_relu(x, train, impl=self.norm_impl, dtype=self.dtype,
                           name="bn")


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN (+ shortcut), ReLU.

  ``shortcut='A'``: parameter-free (subsample + zero-pad channels);
  ``shortcut='B'``: 1x1 conv + BN projection when the shape changes.
  """
  features: int
  stride: int = 1
  shortcut: str = "A"
  dtype: Dtype = jnp.float32
  conv_impl: str = "xla"
  norm_impl: str = "flax"

  @nn.compact
  def __call__(self, x, train: bool):
    y = conv(self.features, 3, stride=self.stride, dtype=self.dtype,
             name="conv1", impl=self.conv_impl)(x)
    y = batch_norm_relu(y, train, impl=self.norm_impl, dtype=self.dtype,
                        name="bn1")
    y = conv(self.features, 3, dtype=self.dtype, name="conv2",
             impl=self.conv_impl)(y)
    projects = self.shortcut == "B" and (self.stride != 1 or x.shape[-1] != self.features)
    if self.norm_impl == "fused" and not projects:
      # bn2 + residual add + ReLU in one; a projection would be called before
      # bn2 here, so with one bn2 stays unfused (same layer call order).
      return batch_norm_relu(y, train, impl="fused", dtype=self.dtype,
                             name="bn2", residual=self._shortcut(x, train))
    y = batch_norm(train, dtype=self.dtype, name="bn2")(y)
    return nn.relu(y + self._shortcut(x, train))

  def _shortcut(self, x, train: bool):
    in_ch = x.shape[-1]
    if self.stride == 1 and in_ch == self.features:
      return x
    if self.shortcut == "A":
      if self.features < in_ch:
        raise ValueError("option-A shortcut cannot reduce channels")
      x = x[:, ::self.stride, ::self.stride, :]
      extra = self.features - in_ch
      return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    if self.shortcut == "B":
      x = conv(self.features, 1, stride=self.stride, padding="VALID",
               dtype=self.dtype, name="shortcut_conv", impl=self.conv_impl)(x)
      return batch_norm(train, dtype=self.dtype, name="shortcut_bn")(x)
    raise ValueError(f"shortcut must be 'A' or 'B', got {self.shortcut!r}")


class CifarResNet(nn.Module):
  """CIFAR ResNet-(6n+2).

  Attributes:
    num_classes: size of the classifier.
    depth: 6n + 2 (32 -> 5 blocks per stage).
    width: channels of the first stage (16 in the paper); stages use
      width, 2*width, 4*width.
    shortcut: 'A' (paper, parameter-free) or 'B' (1x1 conv + BN projection).
    dtype: compute dtype; params stay float32.
    conv_impl: 'auto' (default: 'cpu' on the CPU backend, else 'xla'), 'xla'
      or 'cpu' (common.CONV_IMPLS); same parameters and values.
    norm_impl: 'flax' (default: nn.BatchNorm, then ReLU) or 'fused'
      (common.NORM_IMPLS; BN + residual add + ReLU as one function with a
      compact derivative, models/fused_bn.py); same parameters and values.
  """
  num_classes: int = 10
  depth: int = 32
  width: int = 16
  shortcut: str = "A"
  dtype: Dtype = "float32"
  conv_impl: str = "auto"
  norm_impl: str = "flax"

  def __post_init__(self):
    if (self.depth - 2) % 6 != 0 or self.depth < 8:
      raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {self.depth}")
    if self.shortcut not in ("A", "B"):
      raise ValueError(f"shortcut must be 'A' or 'B', got {self.shortcut!r}")
    resolve_conv_impl(self.conv_impl)  # validates
    if self.norm_impl not in NORM_IMPLS:
      raise ValueError(f"norm_impl must be one of {NORM_IMPLS}, got {self.norm_impl!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool):
    dtype = canonical_dtype(self.dtype)
    impl = resolve_conv_impl(self.conv_impl)
    x = jnp.asarray(x, dtype)
    x = CifarStem(self.width, dtype=dtype, conv_impl=impl, norm_impl=self.norm_impl,
                  name="stem")(x, train)
    n = (self.depth - 2) // 6
    b = 0
    for s in range(3):
      for i in range(n):
        b += 1
        x = BasicBlock(self.width * 2**s, stride=2 if (s > 0 and i == 0) else 1,
                       shortcut=self.shortcut, dtype=dtype, conv_impl=impl,
                       norm_impl=self.norm_impl, name=f"block{b}")(x, train)
    return ClassifierHead(self.num_classes, dtype=dtype, name="head")(x, train)


class ImageNetStem(nn.Module):
  """7x7/2 conv + BN + ReLU + 3x3/2 max-pool (torchvision)."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = conv(self.features, 7, stride=2, dtype=self.dtype, name="conv")(x)
    x = nn.relu(batch_norm(train, dtype=self.dtype, name="bn")(x))
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class Bottleneck(nn.Module):
  """1x1 - 3x3(stride) - 1x1(x4) bottleneck with BN, projection = conv1x1+BN."""
  features: int  # bottleneck width; output has 4x this
  stride: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    out_ch = 4 * self.features
    y = conv(self.features, 1, padding="VALID", dtype=self.dtype, name="conv1")(x)
    y = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(y))
    y = conv(self.features, 3, stride=self.stride, dtype=self.dtype,
             name="conv2")(y)
    y = nn.relu(batch_norm(train, dtype=self.dtype, name="bn2")(y))
    y = conv(out_ch, 1, padding="VALID", dtype=self.dtype, name="conv3")(y)
    y = batch_norm(train, dtype=self.dtype, name="bn3")(y)
    if self.stride != 1 or x.shape[-1] != out_ch:
      x = conv(out_ch, 1, stride=self.stride, padding="VALID", dtype=self.dtype,
               name="shortcut_conv")(x)
      x = batch_norm(train, dtype=self.dtype, name="shortcut_bn")(x)
    return nn.relu(y + x)


class ResNet(nn.Module):
  """ImageNet-style bottleneck ResNet (torchvision layout).

  Attributes:
    num_classes: size of the classifier (1000 for ImageNet, 14 for Clothing1M).
    stage_sizes: bottleneck blocks per stage; (3, 4, 6, 3) is ResNet-50.
    width: stem channels / first-stage bottleneck width (64 in the paper).
    dtype: compute dtype; params stay float32.
    input_mean, input_std: per-channel (x − mean) / std of the [0, 1] input
      before the stem, as torchvision's `Normalize` in front of pretrained
      weights; () (default) leaves the input as is.
  """
  num_classes: int = 1000
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  dtype: Dtype = "float32"
  input_mean: Sequence[float] = ()
  input_std: Sequence[float] = ()

  @nn.compact
  def __call__(self, x, train: bool):
    dtype = canonical_dtype(self.dtype)
    if len(self.input_mean) != len(self.input_std):
      raise ValueError(f"input_mean {tuple(self.input_mean)} and input_std "
                       f"{tuple(self.input_std)} must have the same length")
    if self.input_mean:
      x = (x - jnp.asarray(self.input_mean, jnp.float32)) / jnp.asarray(
          self.input_std, jnp.float32)
    x = jnp.asarray(x, dtype)
    x = ImageNetStem(self.width, dtype=dtype, name="stem")(x, train)
    b = 0
    for s, n in enumerate(self.stage_sizes):
      for i in range(n):
        b += 1
        x = Bottleneck(self.width * 2**s, stride=2 if (s > 0 and i == 0) else 1,
                       dtype=dtype, name=f"block{b}")(x, train)
    return ClassifierHead(self.num_classes, dtype=dtype, name="head")(x, train)
