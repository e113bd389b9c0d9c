"""Layer and block structure of a Flax Linen model, in forward order.

FaMUS (and the per-layer analyses of the paper, e.g. Table 4's "block b")
needs the list of a model's layers in the order they are applied, grouped into
blocks. ``model_layers`` finds it for any Flax Linen model by recording the
order in which modules are entered during an abstract forward pass
(``flax.linen.intercept_methods`` inside ``jax.eval_shape``), so nothing is
computed and nothing relies on dict key order (JAX sorts dict keys).

Block convention (all models in ``famus_jax.models``): the top-level
submodules are ``stem``, ``block1`` ... ``blockB`` (one per residual block, in
forward order) and ``head``; ``stem`` is block 0, ``blockb`` is block b and
``head`` is block B + 1.

Models that do not follow this convention (any top-level parameter scope whose
name is not ``stem``, ``block<int>`` or ``head``) are grouped by top-level
submodule instead: the k-th top-level submodule to be called (0-based) is
block k; parameters created directly by the top-level module itself form
their own group at the position of their first use (the top module is entered
first, so such parameters get block 0 and shift the submodules by one).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn
from flax import traverse_util
from flax.core import unfreeze

_BLOCK_RE = re.compile(r"^block([1-9][0-9]*)$")
_CONV_TYPES = (nn.Conv, nn.ConvTranspose, nn.ConvLocal)
_DENSE_TYPES = (nn.Dense, nn.DenseGeneral, nn.Einsum)
_NORM_TYPES = (nn.BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
_COLLECTIONS = ("params", "batch_stats")


@dataclasses.dataclass(frozen=True)
class Layer:
  """One layer (module or tensor) of a model.

  Attributes:
    name: '/'-joined module path, e.g. 'block3/conv1' (with granularity
      'tensor': 'block3/conv1/kernel').
    paths: the parameter-leaf paths of this layer inside the params dict, e.g.
      (('block3', 'conv1', 'kernel'),), in the module's own (sorted) order.
    block: 0 for the stem, 1..B for residual blocks, B + 1 for the head.
    kind: 'conv' | 'dense' | 'norm' | 'other'.
  """
  name: str
  paths: tuple[tuple[str, ...], ...]
  block: int
  kind: str


def follows_block_convention(top_level_names) -> bool:
  """True iff every name is 'stem', 'head' or 'block<b>' (b >= 1)."""
  names = list(top_level_names)
  return bool(names) and all(
      n in ("stem", "head") or _BLOCK_RE.match(n) for n in names)


def num_blocks(params: Mapping[str, Any]) -> int:
  """Number of residual blocks B of a model following the convention.

  ``params`` is the 'params' collection (or a full variables dict).
  """
  params = _params_of(params)
  found = [int(m.group(1)) for k in params if (m := _BLOCK_RE.match(k))]
  return max(found, default=0)


def block_index(path: Sequence[str], num_blocks: int) -> int:
  """Block of a parameter path: 0 'stem', b 'block<b>', num_blocks+1 'head'.

  A leading collection name ('params', 'batch_stats') is ignored, so paths
  from either the params dict or the full variables dict work.
  """
  path = tuple(path)
  if path and path[0] in _COLLECTIONS and len(path) > 1:
    path = path[1:]
  if not path:
    raise ValueError("empty parameter path")
  top = path[0]
  if top == "stem":
    return 0
  if top == "head":
    return num_blocks + 1
  m = _BLOCK_RE.match(top)
  if m:
    b = int(m.group(1))
    if b > num_blocks:
      raise ValueError(f"{'/'.join(path)} is block {b} > num_blocks={num_blocks}")
    return b
  raise ValueError(
      f"parameter path {'/'.join(path)!r} does not start with 'stem', "
      f"'block<b>' or 'head'")


def _params_of(params):
  """Accepts either the 'params' collection or a {'params': ...} variables dict."""
  params = unfreeze(params) if not isinstance(params, dict) else params
  if "params" in params and isinstance(params["params"], Mapping) and set(
      params) <= {"params", "batch_stats", "intermediates", "cache"}:
    params = params["params"]
  return unfreeze(params) if not isinstance(params, dict) else params


def _module_kind(module: nn.Module) -> str:
  if isinstance(module, _CONV_TYPES):
    return "conv"
  if isinstance(module, _DENSE_TYPES):
    return "dense"
  if isinstance(module, _NORM_TYPES):
    return "norm"
  return "other"


def _default_apply_kwargs(model: nn.Module) -> dict[str, Any]:
  try:
    sig = inspect.signature(type(model).__call__)
  except (TypeError, ValueError):  # pragma: no cover
    return {}
  if "train" in sig.parameters:
    return {"train": False}
  if "deterministic" in sig.parameters:
    return {"deterministic": True}
  return {}


def module_call_order(model: nn.Module, params: Mapping[str, Any],
                      sample_input: Any,
                      apply_kwargs: Mapping[str, Any] | None = None
                      ) -> dict[tuple[str, ...], tuple[int, str]]:
  """Module path -> (index of first entry, kind), recorded abstractly.

  Runs ``model.apply`` under ``jax.eval_shape`` (no FLOPs, no compile) with
  every mutable collection allowed, so missing ``batch_stats`` are created on
  the fly and only the parameter tree needs to be provided.
  """
  params = _params_of(params)
  if apply_kwargs is None:
    apply_kwargs = _default_apply_kwargs(model)
  order: dict[tuple[str, ...], tuple[int, str]] = {}

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if module.scope is not None:
      path = tuple(module.path)
      if path not in order:
        order[path] = (len(order), _module_kind(module))
    return next_fun(*args, **kwargs)

  kwargs = dict(apply_kwargs)
  # Dropout is normally off (train=False); the rng only makes models that
  # draw dropout masks regardless traceable. No 'params' rng: a parameter
  # missing from `params` is an error, not silently created.
  rngs = kwargs.pop("rngs", {"dropout": jax.random.key(0)})

  def run(p, x):
    with nn.intercept_methods(interceptor):
      return model.apply({"params": p}, x, mutable=True, rngs=rngs, **kwargs)

  jax.eval_shape(run, params, sample_input)
  return order


def module_flops(model: nn.Module, params: Mapping[str, Any], sample_input: Any,
                 apply_kwargs: Mapping[str, Any] | None = None
                 ) -> dict[tuple[str, ...], int]:
  """Forward FLOPs (2 × multiply-adds) of each module that owns a 'kernel'
  (convolutions, dense layers) on `sample_input`, recorded abstractly.

  A kernel of shape (..., O) maps each of the output's prod(shape) / O
  positions through prod(kernel.shape) multiply-adds, so a module's FLOPs are
  2 · prod(output.shape) · prod(kernel.shape[:-1]) (grouped convolutions
  included). Other operations (normalisation, activations) are not counted.
  """
  flat = traverse_util.flatten_dict(_params_of(params))
  kernels = {path[:-1]: value.shape for path, value in flat.items() if path[-1] == "kernel"}
  if apply_kwargs is None:
    apply_kwargs = _default_apply_kwargs(model)
  flops: dict[tuple[str, ...], int] = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    path = tuple(module.path) if module.scope is not None else None
    if (context.method_name == "__call__" and path in kernels
        and hasattr(out, "shape") and path not in flops):
      flops[path] = 2 * math.prod(out.shape) * math.prod(kernels[path][:-1])
    return out

  kwargs = dict(apply_kwargs)
  rngs = kwargs.pop("rngs", {"dropout": jax.random.key(0)})

  def run(p, x):
    with nn.intercept_methods(interceptor):
      return model.apply({"params": p}, x, mutable=True, rngs=rngs, **kwargs)

  jax.eval_shape(run, _params_of(params), sample_input)
  return flops


def model_layers(model: nn.Module, params: Mapping[str, Any], sample_input: Any,
                 granularity: str = "module", *,
                 apply_kwargs: Mapping[str, Any] | None = None
                 ) -> tuple[Layer, ...]:
  """The model's parametrised layers in forward (call) order.

  Args:
    model: any Flax Linen module.
    params: its 'params' collection (a full ``{'params': ..., 'batch_stats':
      ...}`` variables dict is accepted too; paths are then still relative to
      the params collection). Only shapes matter: abstract
      ``jax.ShapeDtypeStruct`` leaves (from ``jax.eval_shape(model.init, ...)``)
      work.
    sample_input: an input batch (or a ``jax.ShapeDtypeStruct``) of the shape
      the model is applied to.
    granularity: 'module' -- one Layer per module that owns parameters (e.g.
      a Conv's kernel and bias, a BatchNorm's scale and bias); 'tensor' --
      one Layer per parameter tensor.
    apply_kwargs: extra keyword arguments for ``model.apply``; by default
      ``train=False`` if ``__call__`` takes ``train`` (``deterministic=True``
      if it takes ``deterministic``).

  Returns:
    A tuple of ``Layer`` in forward order: a module's layer comes at the
    position where the module is first entered. Every parameter leaf is in
    exactly one Layer. Parameters of modules that are never entered in the
    forward pass (unused parameters) come last, in path order. ``block`` follows
    the stem/block<b>/head convention when the model does (see the module
    docstring for the fallback otherwise).
  """
  if granularity not in ("module", "tensor"):
    raise ValueError(f"granularity must be 'module' or 'tensor', got {granularity!r}")
  params = _params_of(params)
  flat = traverse_util.flatten_dict(params)
  if not flat:
    return ()
  by_module: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
  for path in flat:
    by_module.setdefault(tuple(path[:-1]), []).append(tuple(path))

  order = module_call_order(model, params, sample_input, apply_kwargs)
  unused = sorted(m for m in by_module if m not in order)
  modules = sorted((m for m in by_module if m in order),
                   key=lambda m: order[m][0]) + unused

  block_of = _block_of(params, by_module, order)
  layers = []
  for m in modules:
    kind = order[m][1] if m in order else "other"
    paths = tuple(sorted(by_module[m]))
    if granularity == "module":
      layers.append(Layer("/".join(m), paths, block_of(m), kind))
    else:
      for p in paths:
        layers.append(Layer("/".join(p), (p,), block_of(m), kind))
  return tuple(layers)


def _block_of(params, by_module, order):
  """module path -> block index: the stem/block<b>/head convention when the
  model follows it, else the call-order rank of its top-level submodule."""
  top_names = {m[0] if m else "" for m in by_module}
  if follows_block_convention(top_names):
    nb = num_blocks(params)
    return lambda m: block_index(m + ("_",), nb)
  tops = sorted({m[:1] for m in by_module},
                key=lambda t: order.get(t, (len(order) + 1,))[0])
  rank = {t: i for i, t in enumerate(tops)}
  return lambda m: rank[m[:1]]


def param_count(tree) -> int:
  """Total number of elements of the leaves (arrays or ShapeDtypeStructs)."""
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))
