"""The look-ahead update `ŵ = U(w, g)` of Virtual-Train, gates and meta scope.

`U` is plain SGD, `ŵ = w − α g`, by default. Given the base optax optimizer and
its state, `U` is that optimizer's update instead (momentum, weight decay), so
the look-ahead follows the real update exactly. Both meta-gradient paths
differentiate `U` with JAX, so any optax transformation is handled; with a
restricted meta scope the forward-mode path assumes `U` acts leaf by leaf (true
for SGD, momentum, weight decay and Adam).
"""

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Lookahead:
  """Look-ahead update rule. `tx=None`: plain SGD with learning rate `lr`."""
  lr: Any = None
  tx: Optional[optax.GradientTransformation] = None
  opt_state: Any = None

  def __call__(self, params: PyTree, grads: PyTree) -> PyTree:
    if self.tx is None:
      return jax.tree_util.tree_map(lambda w, g: w - self.lr * g, params, grads)
    updates, _ = self.tx.update(grads, self.opt_state, params)
    return optax.apply_updates(params, updates)


def leaf_path(path) -> str:
  """'/'-joined name of a pytree key path, e.g. 'block3/conv1/kernel'."""
  parts = []
  for key in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
  return '/'.join(parts)


def leaf_paths(tree: PyTree) -> list[str]:
  """Names of all leaves of a params tree, in jax's flattening order."""
  return [leaf_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def scope_mask(params: PyTree, scope: Optional[frozenset]) -> PyTree:
  """Python-bool tree: True where a leaf may carry a meta-gradient path."""
  paths = jax.tree_util.tree_flatten_with_path(params)[0]
  treedef = jax.tree_util.tree_structure(params)
  flags = [scope is None or leaf_path(p) in scope for p, _ in paths]
  return jax.tree_util.tree_unflatten(treedef, flags)


def check_scope(params: PyTree, scope: Optional[frozenset]) -> None:
  """Raises ValueError when the scope names leaves the params do not have."""
  if scope is None:
    return
  known = set(leaf_paths(params))
  unknown = sorted(set(scope) - known)
  if unknown:
    raise ValueError(f'Meta scope names unknown parameters {unknown[:5]}; '
                     f'known leaves look like {sorted(known)[:5]}.')
  if not scope:
    raise ValueError('Meta scope is empty: at least one parameter must carry '
                     'the meta gradient.')


def route_gradient(grads: PyTree, mask: PyTree, gate: Optional[PyTree]) -> PyTree:
  """Decides which look-ahead terms carry a meta-gradient path.

  The value is always `g` (ŵ is the full look-ahead). A leaf outside the scope
  carries no path (`stop_gradient(g)`); inside, a gate r carries the path
  `r·g + stop_gradient((1 − r)·g)`, whose derivative is `r` in g and `g` in r
  (the FaMUS straight-through surrogate `∂L/∂r = ⟨∂L/∂g, g⟩`).
  """
  def route(g, keep, r):
    if not keep:
      return jax.lax.stop_gradient(g)
    if r is None:
      return g
    return r * g + jax.lax.stop_gradient((1.0 - r) * g)

  if gate is None:
    return jax.tree_util.tree_map(lambda g, k: route(g, k, None), grads, mask)
  return jax.tree_util.tree_map(route, grads, mask, gate)


def split_by_mask(tree: PyTree, mask: PyTree) -> tuple[list, list]:
  """Flat leaves of `tree` split into (masked-in, masked-out) lists."""
  leaves = jax.tree_util.tree_leaves(tree)
  flags = jax.tree_util.tree_leaves(mask)
  return ([l for l, f in zip(leaves, flags) if f],
          [l for l, f in zip(leaves, flags) if not f])


def merge_by_mask(inside: list, outside: list, mask: PyTree) -> PyTree:
  """Inverse of `split_by_mask`."""
  flags = jax.tree_util.tree_leaves(mask)
  it_in, it_out = iter(inside), iter(outside)
  leaves = [next(it_in) if f else next(it_out) for f in flags]
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(mask), leaves)


def tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
  """Σ over leaves of ⟨a, b⟩."""
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                            jax.tree_util.tree_leaves(b)))
