"""Backbones for FaMUS experiments.

All models are Flax Linen modules called as ``model.apply(variables, x,
train=...)`` with NHWC float inputs; they return float32 logits of shape
``(N, num_classes)``. Batch-norm running statistics live in the
``batch_stats`` collection (used when ``train=False``, updated when
``train=True`` with ``mutable=['batch_stats']``); dropout draws from the
``'dropout'`` rng and is active only for ``train=True`` and rate > 0.
Parameters are float32; ``dtype`` is the compute dtype.

Every model's top-level submodules are ``stem``, ``block1`` ... ``blockB``
(forward order) and ``head``; see ``structure.model_layers`` for the layer
list and ``structure.block_index`` for the block of a parameter path.

Registry (``get_model(name, num_classes=..., dtype=..., **kwargs)``):

==================== ========================== ====== ============================
name                 class (defaults)           blocks params (classes)
==================== ========================== ====== ============================
preact_resnet18      PreActResNet(width=64)     8      11,172,170 (10)
wide_resnet          WideResNet(depth, width)   (d-4)/2 -
wrn28_10             WideResNet(28, 10)         12     36,479,194 (10)
wrn40_2              WideResNet(40, 2)          18     2,243,546 (10)
resnet32             CifarResNet(depth=32)      15     464,154 (10)
resnet50             ResNet((3, 4, 6, 3))       16     25,557,032 (1000)
inception_resnet_v2  InceptionResNetV2          42     55,843,464 (1000)
digits_mlp           DigitsMLP(64, depth=2)     1      8,970 (10)
digits_cnn           DigitsCNN(16, depth=3)     3      77,754 (10)
fashion_resnet       FashionResNet(16, (1,1,1)) 3      78,042 (10)
==================== ========================== ====== ============================

Presets only set defaults: any attribute of the class may be overridden via
``**kwargs`` (e.g. ``get_model('resnet50', num_classes=14, width=8)``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn

from famus_jax.models.common import canonical_dtype
from famus_jax.models.digits import DigitsCNN, DigitsMLP
from famus_jax.models.fashion import FashionResNet
from famus_jax.models.inception_resnet_v2 import InceptionResNetV2
from famus_jax.models.preact_resnet import PreActResNet
from famus_jax.models.resnet import CifarResNet, ResNet
from famus_jax.models.structure import (Layer, block_index,
                                        follows_block_convention,
                                        model_layers, num_blocks, param_count)
from famus_jax.models.wide_resnet import WideResNet

__all__ = [
    "MODELS", "get_model", "Layer", "model_layers", "block_index",
    "num_blocks", "param_count", "follows_block_convention",
    "REFERENCE_PARAM_COUNTS", "EXPECTED_NUM_BLOCKS", "PreActResNet",
    "WideResNet", "CifarResNet", "ResNet", "InceptionResNetV2", "DigitsMLP",
    "DigitsCNN", "FashionResNet",
]


def _preset(cls, **defaults) -> Callable[..., nn.Module]:
  ctor = functools.partial(cls, **defaults)
  ctor.__name__ = cls.__name__  # type: ignore[attr-defined]
  return ctor


MODELS: dict[str, Callable[..., nn.Module]] = {
    "preact_resnet18": _preset(PreActResNet, width=64, stage_sizes=(2, 2, 2, 2)),
    "wide_resnet": _preset(WideResNet),
    "wrn28_10": _preset(WideResNet, depth=28, width=10),
    "wrn40_2": _preset(WideResNet, depth=40, width=2),
    "resnet32": _preset(CifarResNet, depth=32, width=16),
    "resnet50": _preset(ResNet, stage_sizes=(3, 4, 6, 3), width=64),
    "inception_resnet_v2": _preset(InceptionResNetV2),
    "digits_mlp": _preset(DigitsMLP),
    "digits_cnn": _preset(DigitsCNN),
    "fashion_resnet": _preset(FashionResNet),
}

# name -> (num_classes, exact reference count, published figure). The exact
# counts are those of the reference implementations named in each module
# (DivideMix PreResNet18, Zagoruyko's WRN, He et al. option-A ResNet-32,
# torchvision resnet50, timm inception_resnet_v2); the published figures are
# the rounded numbers quoted in the papers.
REFERENCE_PARAM_COUNTS: dict[str, tuple[int, int, str]] = {
    "preact_resnet18": (10, 11_172_170, "11.17M"),
    "wrn28_10": (10, 36_479_194, "36.5M"),
    "wrn40_2": (10, 2_243_546, "2.2M"),
    "resnet32": (10, 464_154, "0.46M"),
    "resnet50": (1000, 25_557_032, "25.6M"),
    "inception_resnet_v2": (1000, 55_843_464, "55.8M"),
}

EXPECTED_NUM_BLOCKS: dict[str, int] = {
    "preact_resnet18": 8, "wrn28_10": 12, "wrn40_2": 18, "wide_resnet": 12,
    "resnet32": 15, "resnet50": 16, "inception_resnet_v2": 42,
    "digits_mlp": 1, "digits_cnn": 3, "fashion_resnet": 3,
}


def _fields(cls) -> set[str]:
  return {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}


def get_model(name: str, *, num_classes: int, dtype: Any = "float32",
              **kwargs) -> nn.Module:
  """Builds the registered model ``name``.

  Args:
    name: a key of ``MODELS`` (``config.model.name``).
    num_classes: classifier size.
    dtype: compute dtype, 'float32' (default) or 'bfloat16'; parameters are
      float32 either way and logits are cast to float32.
    **kwargs: attributes of the model class (width, depth, dropout, ...).

  Raises:
    ValueError: unknown name (the message lists the known ones), bad dtype,
      a width or depth < 1 or other invalid attribute values.
    TypeError: a keyword that the model class does not have.
  """
  if name not in MODELS:
    raise ValueError(
        f"Unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
  ctor = MODELS[name]
  cls = ctor.func if isinstance(ctor, functools.partial) else ctor
  allowed = _fields(cls) - {"num_classes", "dtype"}
  unknown = set(kwargs) - allowed
  if unknown:
    raise TypeError(
        f"Model {name!r} got unexpected keyword argument(s) "
        f"{sorted(unknown)}; allowed: {sorted(allowed)}")
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
  for size in ("width", "depth"):  # a zero width would fail deep inside the init
    value = kwargs.get(size, 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{size} must be a positive int, got {value!r}")
  canonical_dtype(dtype)  # validates
  return ctor(num_classes=num_classes, dtype=dtype, **kwargs)
