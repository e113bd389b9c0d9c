"""torchvision ResNet state dict -> this package's `ResNet` variable names.

torchvision's bottleneck ResNets (resnet50, resnet101, resnet152; v1.5) and
`famus_jax.models.ResNet` have the same layers in the same order:

  torchvision                          famus_jax (collection/module/variable)
  conv1.weight (O, I, H, W)            params/stem/conv/kernel (H, W, I, O)
  bn1.weight / .bias                   params/stem/bn/scale / bias
  bn1.running_mean / .running_var      batch_stats/stem/bn/mean / var
  layer{s}.{i}.conv{k}, .bn{k}         block{b}/conv{k}, bn{k}; b counts the
                                       bottlenecks of all stages from 1
  layer{s}.{i}.downsample.0 / .1       block{b}/shortcut_conv / shortcut_bn
  fc.weight (O, I) / fc.bias           params/head/fc/kernel (I, O) / bias

`num_batches_tracked` has no counterpart and is dropped. No torch is needed:
the state dict is read from a .npz or .safetensors file. Make one on a machine
with torchvision, e.g.

  python -c "import numpy as np, torchvision; np.savez('resnet50_torchvision.npz', \\
      **{k: v.numpy() for k, v in torchvision.models.resnet50( \\
      weights='IMAGENET1K_V1').state_dict().items()})"

then convert it once (or pass it to `model.init_from` as it is: it is
converted on load):

  python -m famus_jax.models.weights resnet50_torchvision.npz resnet50_imagenet.npz
"""

from __future__ import annotations

import re

import numpy as np

_BLOCK = re.compile(r'^layer(\d+)\.(\d+)\.(.+)$')
# torchvision module (inside a block, or at the top) -> ours
_MODULES = {'conv1': 'conv1', 'conv2': 'conv2', 'conv3': 'conv3', 'bn1': 'bn1',
            'bn2': 'bn2', 'bn3': 'bn3', 'downsample.0': 'shortcut_conv',
            'downsample.1': 'shortcut_bn'}
_TOP = {'conv1': 'stem/conv', 'bn1': 'stem/bn', 'fc': 'head/fc'}
# torchvision variable -> (collection, ours)
_VARIABLES = {'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}


def is_torchvision_resnet(arrays: dict) -> bool:
  """Whether `arrays` is keyed like a torchvision ResNet state dict."""
  return 'conv1.weight' in arrays and any(k.startswith('layer1.0.') for k in arrays)


def block_numbers(names) -> dict[tuple[int, int], int]:
  """(stage, index in stage) -> our block number b (1, 2, ... in forward order)."""
  pairs = sorted({(int(m.group(1)), int(m.group(2)))
                  for m in map(_BLOCK.match, names) if m})
  return {pair: b for b, pair in enumerate(pairs, start=1)}


def _convert(variable: str, array: np.ndarray, ours: str):
  """(our name, array) of one torchvision tensor."""
  if variable in _VARIABLES:
    collection, name = _VARIABLES[variable]
    return f'{collection}/{ours}/{name}', array
  if array.ndim == 4:  # conv kernel (O, I, H, W) -> (H, W, I, O)
    return f'params/{ours}/kernel', np.transpose(array, (2, 3, 1, 0))
  if array.ndim == 2:  # dense (O, I) -> (I, O)
    return f'params/{ours}/kernel', array.T
  kind = 'scale' if variable == 'weight' else 'bias'
  return f'params/{ours}/{kind}', array


def to_flax(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A torchvision bottleneck-ResNet state dict under this package's names.

  Raises:
    ValueError: a key that is not part of a torchvision ResNet (named).
  """
  blocks = block_numbers(state)
  out = {}
  for key, array in state.items():
    module, _, variable = key.rpartition('.')
    if variable == 'num_batches_tracked':
      continue
    m = _BLOCK.match(module)
    if m and m.group(3) in _MODULES:
      ours = f'block{blocks[(int(m.group(1)), int(m.group(2)))]}/{_MODULES[m.group(3)]}'
    elif module in _TOP:
      ours = _TOP[module]
    else:
      raise ValueError(f'{key!r} is not a variable of a torchvision bottleneck ResNet')
    name, value = _convert(variable, np.asarray(array), ours)
    out[name] = value
  return out
