"""Shared building blocks for the backbones.

Conventions used by every model in this package:

* inputs are NHWC; they are cast to the compute ``dtype`` at the stem;
* parameters are always float32 (``param_dtype``), the compute ``dtype`` is
  float32 by default (bfloat16 is meant for GPUs/TPUs);
* batch norm keeps its running statistics in the ``batch_stats`` collection
  and uses them when ``train=False``;
* logits are returned as float32 whatever the compute dtype.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from famus_jax.models import cpu_conv, fused_bn

Dtype = Any

# conv_impl options of the models: 'xla' = lax.conv_general_dilated as is;
# 'cpu' = cpu_conv (same values, derivatives in the forms XLA:CPU runs fast);
# 'auto' = 'cpu' when JAX's default backend is the CPU, else 'xla'.
CONV_IMPLS = ("auto", "xla", "cpu")
# norm_impl options: 'flax' = nn.BatchNorm then ReLU; 'fused' = fused_bn
# (BN + [residual add] + ReLU as one custom_jvp function, same variables).
NORM_IMPLS = ("flax", "fused")

# PyTorch-style He initialisation (kaiming_normal_, mode='fan_out'), as used by
# torchvision's ResNet and the Wide-ResNet reference code.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
dense_init = nn.initializers.lecun_normal()


def canonical_dtype(dtype: Dtype) -> jnp.dtype:
  """Maps 'float32' / 'bfloat16' / jnp dtypes to a numpy dtype object."""
  try:
    out = jnp.dtype(dtype)
  except TypeError as e:  # pragma: no cover - message only
    raise ValueError(f"Unknown compute dtype {dtype!r}") from e
  if out not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16),
                 jnp.dtype(jnp.float16)):
    raise ValueError(
        f"Compute dtype must be float32, bfloat16 or float16, got {dtype!r}")
  return out


def resolve_conv_impl(impl: str) -> str:
  """'xla' or 'cpu' for a conv_impl option ('auto' follows jax.default_backend())."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}")
  if impl == "auto":
    return "cpu" if jax.default_backend() == "cpu" else "xla"
  return impl


def conv(features: int, kernel: int | tuple[int, int], *, stride: int = 1,
         padding: Any = None, use_bias: bool = False, dtype: Dtype,
         name: str, impl: str = "xla") -> nn.Conv:
  """A Conv with float32 params and PyTorch-style explicit padding.

  ``padding=None`` means symmetric ``k // 2`` padding (PyTorch ``padding=k//2``)
  so that strided convs see the same pixels as the reference implementations
  (Flax's 'SAME' pads asymmetrically for even inputs). ``impl``: one of
  ``CONV_IMPLS``; parameters and values are the same for all of them.
  """
  if isinstance(kernel, int):
    kernel = (kernel, kernel)
  if padding is None:
    padding = tuple((k // 2, k // 2) for k in kernel)
  conv_fn = (cpu_conv.conv_general_dilated if resolve_conv_impl(impl) == "cpu"
             else None)
  return nn.Conv(features, kernel, strides=(stride, stride), padding=padding,
                 use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=conv_init, name=name, conv_general_dilated=conv_fn)


def batch_norm(train: bool, *, dtype: Dtype, name: str,
               epsilon: float = 1e-5, momentum: float = 0.9,
               scale_init=nn.initializers.ones) -> nn.BatchNorm:
  """BatchNorm with PyTorch defaults (momentum 0.1 == Flax momentum 0.9)."""
  return nn.BatchNorm(use_running_average=not train, momentum=momentum,
                      epsilon=epsilon, dtype=dtype, param_dtype=jnp.float32,
                      scale_init=scale_init, name=name)


def batch_norm_relu(x, train: bool, *, impl: str, dtype: Dtype, name: str,
                    residual=None):
  """relu(BatchNorm(x) [+ residual]) as `batch_norm` + ReLU or fused (``impl``).

  Call inside a compact method: the BN module is created under ``name`` with
  the same variables for every ``impl`` (one of ``NORM_IMPLS``).
  """
  if impl not in NORM_IMPLS:
    raise ValueError(f"norm_impl must be one of {NORM_IMPLS}, got {impl!r}")
  if impl == "fused":
    return fused_bn.BatchNormReLU(use_running_average=not train, dtype=dtype,
                                  name=name)(x, residual)
  y = batch_norm(train, dtype=dtype, name=name)(x)
  return nn.relu(y if residual is None else y + residual)


def dense(features: int, *, dtype: Dtype, name: str,
          use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype,
                  param_dtype=jnp.float32, kernel_init=dense_init,
                  bias_init=nn.initializers.zeros, name=name)


def global_avg_pool(x: jnp.ndarray) -> jnp.ndarray:
  return jnp.mean(x, axis=(1, 2))


class ClassifierHead(nn.Module):
  """[BN-ReLU] -> global average pool -> [dropout] -> Dense (float32 logits)."""
  num_classes: int
  dtype: Dtype = jnp.float32
  pre_norm: bool = False
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool):
    if self.pre_norm:
      x = batch_norm(train, dtype=self.dtype, name="bn")(x)
      x = nn.relu(x)
    x = global_avg_pool(x)
    if self.dropout > 0:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = dense(self.num_classes, dtype=self.dtype, name="fc")(x)
    return jnp.asarray(x, jnp.float32)

