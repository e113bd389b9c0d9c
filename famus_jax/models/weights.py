"""Backbone weights from a file (`config.model.init_from`).

A weights file is `.npz` (numpy) or `.safetensors` (the `safetensors` package,
`pip install safetensors`), one array per model variable, keyed by its
collection and its Flax path joined with '/': `params/stem/conv/kernel`,
`batch_stats/block1/bn1/mean`, `params/head/fc/bias`. A torchvision ResNet
state dict saved in either format (keys `conv1.weight`,
`layer1.0.bn1.running_mean`, ...) is recognised and converted on load
(`famus_jax.models.torchvision_resnet`). The command line writes the converted
file once:

  python -m famus_jax.models.weights resnet50_torchvision.npz resnet50_imagenet.npz

`merge_weights` puts the file's arrays into the model's variables and checks
them: every variable the model has must be in the file with the model's shape,
and the file may hold nothing else, except under the module prefixes of
`exclude` (e.g. 'head': a 1000-class ImageNet classifier is left out and the
model's fresh 14-class head kept). A failed check raises `WeightsError`, one
line naming the file, the first variable that does not match and both shapes.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable, Iterable

from etils import epy
import flax
import numpy as np

from famus_jax.models import torchvision_resnet

with epy.lazy_imports():  # optional: only .safetensors files need it
  from safetensors import numpy as safetensors_numpy

COLLECTIONS = ('params', 'batch_stats')


class WeightsError(ValueError):
  """A weights file is missing, unreadable or does not fit the model (one line)."""


def _read_npz(path: str) -> dict[str, np.ndarray]:
  with np.load(path, allow_pickle=False) as f:
    return {k: np.asarray(f[k]) for k in f.files}


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  try:
    return safetensors_numpy.load_file(path)
  except ImportError:
    raise WeightsError(f'{path}: reading .safetensors needs the safetensors package '
                       '(pip install safetensors), or save the weights as .npz') from None


READERS: dict[str, Callable[[str], dict]] = {'.npz': _read_npz,
                                             '.safetensors': _read_safetensors}


def read_weights(path: str) -> dict[str, np.ndarray]:
  """Name -> array of a weights file; torchvision ResNet names are converted."""
  ext = os.path.splitext(path)[1].lower()
  if ext not in READERS:
    raise WeightsError(f'{path}: unknown weights format {ext or "(no extension)"!r}; '
                       f'known: {", ".join(READERS)}')
  if not os.path.isfile(path):
    raise WeightsError(f'{path}: no such weights file')
  try:
    arrays = READERS[ext](path)
  except WeightsError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (any decoder's error)
    first = (str(e).splitlines() or [''])[0][:120]
    raise WeightsError(f'{path}: not a readable {ext} file ({type(e).__name__}: '
                       f'{first})') from None
  if torchvision_resnet.is_torchvision_resnet(arrays):
    try:
      arrays = torchvision_resnet.to_flax(arrays)
    except ValueError as e:
      raise WeightsError(f'{path}: {e}') from None
  return arrays


def _excluded(name: str, exclude: Iterable[str]) -> bool:
  module_path = name.split('/', 1)[1] if '/' in name else name
  return any(module_path == p or module_path.startswith(p + '/') for p in exclude)


def merge_weights(variables: dict, arrays: dict[str, np.ndarray], *, source: str,
                  exclude: Iterable[str] = ()) -> dict:
  """`variables` (concrete, or `jax.eval_shape`'s to check only) with the file's
  arrays in place; excluded variables keep theirs."""
  exclude = tuple(p.strip('/') for p in exclude if p.strip('/'))
  flat = flax.traverse_util.flatten_dict(
      {k: v for k, v in variables.items() if k in COLLECTIONS}, sep='/')
  out = {}
  for name, var in flat.items():  # the model's order: the first mismatch is named
    if _excluded(name, exclude):
      out[name] = var
      continue
    if name not in arrays:
      raise WeightsError(f'{source}: no {name!r} (shape {tuple(var.shape)}), which the '
                         f'model needs; {_hint(arrays)}')
    if tuple(arrays[name].shape) != tuple(var.shape):
      raise WeightsError(f'{source}: {name!r} has shape {tuple(arrays[name].shape)}, the '
                         f'model\'s is {tuple(var.shape)}; a different model or width? '
                         '(model.init_exclude leaves a module out, e.g. \'head\')')
    out[name] = np.asarray(arrays[name], dtype=var.dtype)
  extra = [k for k in arrays if k not in flat and not _excluded(k, exclude)]
  if extra:
    raise WeightsError(f'{source}: {extra[0]!r} is not a variable of the model '
                       f'({len(extra)} such); a deeper model? (model.init_exclude '
                       'leaves a module out)')
  return flax.traverse_util.unflatten_dict(out, sep='/')


def _hint(arrays: dict) -> str:
  names = sorted(arrays)[:2]
  return (f'the file\'s names look like {names}' if names else 'the file is empty')


def load_weights(path: str, variables: dict, exclude: Iterable[str] = ()) -> dict[str, Any]:
  """`read_weights` + `merge_weights`: the model's variables from `path`."""
  return merge_weights(variables, read_weights(path), source=path, exclude=exclude)


def main(argv=None):
  parser = argparse.ArgumentParser(
      description='Convert a torchvision ResNet state dict (.npz or .safetensors) to '
                  "famus_jax's names (the file model.init_from reads).")
  parser.add_argument('source', help='torchvision state dict, .npz or .safetensors')
  parser.add_argument('target', help='output .npz')
  args = parser.parse_args(argv)
  arrays = read_weights(args.source)  # converted when torchvision-named
  np.savez(args.target, **arrays)
  print(f'{args.target}: {len(arrays)} arrays, '
        f'{sum(a.size for a in arrays.values()):,} values')


if __name__ == '__main__':
  main()
