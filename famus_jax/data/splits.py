"""Meta-set and long-tail index selection (pure, seeded)."""

from __future__ import annotations

import numpy as np

from famus_jax.data.config import DataConfigError

# Independent random streams derived from config.seed.
STREAM_META = 0x3E7A
STREAM_LONG_TAIL = 0x10A6
STREAM_NOISE = 0x4015E
STREAM_CLOTHING_META = 0xC107


def rng_for(seed: int, stream: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence([int(seed), int(stream)]))


def split_meta_set(labels, num_classes: int, per_class: int, seed: int
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Draws ``per_class`` examples of every class (by ``labels``) as a meta set.

  Returns ``(rest_indices, meta_indices)``, both sorted, disjoint, covering
  ``range(len(labels))``. ``per_class == 0`` gives an empty meta set. Labels
  < 0 (unknown) are never drawn. Raises DataConfigError (naming
  ``config.data.meta_per_class`` and its largest possible value) if a class has
  fewer than ``per_class`` examples.
  """
  labels = np.asarray(labels)
  n = labels.shape[0]
  if per_class < 0:
    raise ValueError(f"per_class={per_class}: must be >= 0")
  if per_class == 0:
    return np.arange(n), np.zeros((0,), np.int64)
  counts = np.bincount(labels[labels >= 0], minlength=num_classes)[:num_classes]
  if counts.min() < per_class:
    smallest = int(counts.argmin())
    raise DataConfigError(
        f"config.data.meta_per_class={per_class}: class {smallest} has only "
        f"{counts[smallest]} examples to draw the clean meta set from (the fewest of "
        f"any class); must be <= {counts[smallest]}")
  rng = rng_for(seed, STREAM_META)
  meta = []
  for c in range(num_classes):
    idx = np.flatnonzero(labels == c)
    meta.append(rng.choice(idx, size=per_class, replace=False))
  meta = np.sort(np.concatenate(meta))
  rest = np.setdiff1d(np.arange(n), meta, assume_unique=True)
  return rest, meta


def long_tail_counts(n_max: int, num_classes: int, imbalance_factor: float) -> np.ndarray:
  """``n_i = int(n_max * mu**i)`` with ``mu = (1 / IF) ** (1 / (C - 1))``.

  Evaluated as ``n_max * (1 / IF) ** (i / (C - 1))`` (the long-tail CIFAR
  reference code's expression; equal to ``mu**i`` but without the round-off
  that repeated powers accumulate, so class C - 1 keeps exactly
  ``n_max / IF`` when that is an integer). Class 0 keeps ``n_max``.
  """
  if imbalance_factor < 1:
    raise ValueError(f"imbalance_factor={imbalance_factor}: must be >= 1")
  if num_classes == 1:
    return np.array([n_max])
  inv = 1.0 / imbalance_factor
  return np.array([int(n_max * inv ** (i / (num_classes - 1.0)))
                   for i in range(num_classes)], np.int64)


def long_tail_indices(labels, num_classes: int, imbalance_factor: float, seed: int,
                      n_max: int | None = None) -> np.ndarray:
  """Indices (sorted) of a long-tailed subset: class i keeps ``n_max * mu**i``.

  ``n_max`` defaults to the smallest class count, so every class can supply its
  quota (CIFAR: 5,000 minus the meta set per class). Which examples of a class
  are kept is drawn with ``seed``.
  """
  labels = np.asarray(labels)
  per_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
  available = min(p.size for p in per_class)
  if n_max is None:
    n_max = available
  elif n_max > available:
    raise DataConfigError(
        f"config.data.train_per_class={n_max}: the smallest class has only {available} "
        f"training examples (after the meta set is drawn); must be <= {available} "
        "(0 = all)")
  counts = long_tail_counts(n_max, num_classes, imbalance_factor)
  rng = rng_for(seed, STREAM_LONG_TAIL)
  keep = [rng.choice(p, size=k, replace=False) for p, k in zip(per_class, counts)]
  return np.sort(np.concatenate(keep)).astype(np.int64)
