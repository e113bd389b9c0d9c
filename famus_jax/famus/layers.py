"""Candidate layers of a base network and the static meta scope.

A *layer* is a `famus_jax.models.Layer` (forward order, name, parameter paths,
residual block). `meta.candidate_layers` picks which layers may ever carry a
meta-gradient path: 'all', 'top:N' (the last N in forward order) or a
comma-separated list of layer names. Leaves outside the candidates never get a
path, so the compiled program does not compute their terms at all.
"""

from typing import Any, Sequence

from famus_jax import models

PyTree = Any
GRANULARITIES = ('module', 'tensor')


def network_layers(model, params: PyTree, sample_images, granularity: str = 'module'):
  """All parameterised layers of `model` in forward order (`models.Layer` tuple)."""
  if granularity not in GRANULARITIES:
    raise ValueError(f'meta.granularity must be one of {GRANULARITIES}, got '
                     f'{granularity!r}.')
  return models.model_layers(model, params, sample_images[:1], granularity)


def select_candidates(layers: Sequence, spec: str) -> tuple:
  """Candidate layers from `meta.candidate_layers` ('all' | 'top:N' | names)."""
  layers = tuple(layers)
  spec = (spec or 'all').strip()
  if spec == 'all':
    return layers
  if spec.startswith('top:'):
    try:
      n = int(spec[4:])
    except ValueError:
      n = -1
    if not 1 <= n <= len(layers):
      raise ValueError(f'meta.candidate_layers={spec!r}: N must be an integer in '
                       f'[1, {len(layers)}] (the network has {len(layers)} layers).')
    return layers[-n:]
  names = [s.strip() for s in spec.split(',') if s.strip()]
  by_name = {layer.name: layer for layer in layers}
  unknown = [n for n in names if n not in by_name]
  if unknown:
    raise ValueError(f'meta.candidate_layers names unknown layers {unknown}; use '
                     f"'all', 'top:N' or names such as {[l.name for l in layers[-3:]]}.")
  keep = set(names)
  return tuple(layer for layer in layers if layer.name in keep)


def leaf_names(layers: Sequence) -> frozenset:
  """'/'-joined parameter leaf names of the given layers."""
  return frozenset('/'.join(p) for layer in layers for p in layer.paths)


def block_layers(layers: Sequence, block: int) -> tuple:
  """Layers of residual block `block` (1-based, as in the paper's Table 4)."""
  blocks = sorted({layer.block for layer in layers})
  residual = [b for b in blocks if 0 < b < max(blocks)] or blocks
  if block not in residual:
    raise ValueError(f'meta.b={block} is not a residual block of this network; '
                     f'choose 1 ≤ meta.b ≤ {max(residual)}.')
  return tuple(layer for layer in layers if layer.block == block)
