"""Fixed-shape batches drawn from per-epoch index sets (pseudo-clean / -noisy).

The sets change every epoch, the jitted steps must not: an `IndexStream`
yields index batches of one fixed size from any non-empty set (a fresh
permutation per pass; drawn with replacement when the set is smaller than a
batch), and `BatchFetcher` turns indices into augmented numpy batches (the
same augmentations as the grain loader, seeded by (seed, view, draw), so a run
is reproducible). `ensure_min_size` is the fallback for degenerate GMM splits.
"""

from __future__ import annotations

import concurrent.futures
from typing import Callable, Iterator

import numpy as np

from famus_jax.data import augment as augment_lib
from famus_jax.data.sources import get_batch

AUGMENTS = ('data', 'shift', 'none')


class IndexStream:
  """Endless fixed-size index batches from `indices`.

  Args:
    indices: (K,) int, K >= 1: the set to draw from (e.g. the pseudo-clean set).
    batch_size: indices per batch.
    seed: stream seed (with the pass number it seeds each permutation).
  """

  def __init__(self, indices, batch_size: int, seed: int):
    self.indices = np.asarray(indices, np.int64)
    if self.indices.size == 0:
      raise ValueError('IndexStream: empty index set (use ensure_min_size first)')
    self.batch_size = int(batch_size)
    self.seed = int(seed) % 2**32
    self._pass, self._pos, self._order = 0, 0, None

  def _rng(self, n: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([self.seed, n, 0x1D5]))

  def __iter__(self):
    return self

  def __next__(self) -> np.ndarray:
    k, b = self.indices.size, self.batch_size
    if k < b:  # too small for a permutation batch: with replacement
      self._pass += 1
      return self._rng(self._pass).choice(self.indices, size=b, replace=True)
    if self._order is None or self._pos + b > k:
      self._order = self.indices[self._rng(self._pass).permutation(k)]
      self._pass += 1
      self._pos = 0
    out = self._order[self._pos:self._pos + b]
    self._pos += b
    return out


def ensure_min_size(selected: np.ndarray, score: np.ndarray, min_size: int
                    ) -> tuple[np.ndarray, bool]:
  """`selected` indices, or the `min_size` highest-`score` examples if fewer.

  Returns (indices, fell_back).
  """
  selected = np.asarray(selected, np.int64)
  if selected.size >= min_size:
    return selected, False
  k = min(int(min_size), score.size)
  top = np.argsort(-np.asarray(score), kind='stable')[:k]
  return np.sort(top).astype(np.int64), True


class BatchFetcher:
  """Records of `source` at given indices, augmented; views seeded apart.

  Args:
    source: random-access split (`get_batch`).
    augment: a name of `famus_jax.data.augment.SSL_AUGMENTATIONS`.
    seed: base seed; view v of draw k uses SeedSequence([seed, v, k]).
  """

  def __init__(self, source, augment: str, seed: int):
    self.source, self.augment, self.seed = source, augment, int(seed) % 2**32
    self.crop_size = getattr(source, 'crop_size', None)

  def __call__(self, indices: np.ndarray, draw: int, views: int = 1) -> dict:
    """{'image' [, 'image2', ...], 'label', 'true_label', 'index'} numpy batch."""
    raw = get_batch(self.source, indices)
    out = {'label': np.asarray(raw['label'], np.int32),
           'true_label': np.asarray(raw['true_label'], np.int32),
           'index': np.asarray(indices, np.int32)}
    for v in range(views):
      rng = np.random.default_rng(np.random.SeedSequence([self.seed, v, int(draw), 0xA62]))
      key = 'image' if v == 0 else f'image{v + 1}'
      out[key] = augment_lib.augment_numpy(rng, raw['image'], self.augment, self.crop_size,
                                           registry=augment_lib.SSL_AUGMENTATIONS)
    return out


class Prefetcher:
  """Runs `make(k)` for k = 0, 1, ... `depth` ahead in a thread (decoding and
  augmentation overlap the jitted steps; results are identical to calling
  `make` in order)."""

  def __init__(self, make: Callable[[int], dict], depth: int = 2):
    self._make, self._depth = make, max(int(depth), 0)
    self._pool = (concurrent.futures.ThreadPoolExecutor(max_workers=1)
                  if self._depth else None)
    self._queue: list = []
    self._next = 0

  def _submit(self):
    k, self._next = self._next, self._next + 1
    self._queue.append(self._pool.submit(self._make, k))

  def __iter__(self) -> Iterator[dict]:
    return self

  def __next__(self) -> dict:
    if self._pool is None:
      k, self._next = self._next, self._next + 1
      return self._make(k)
    while len(self._queue) < self._depth:
      self._submit()
    out = self._queue.pop(0).result()
    self._submit()
    return out

  def close(self):
    if self._pool is not None:
      for f in self._queue:
        f.cancel()
      self._pool.shutdown(wait=True)
      self._pool = None
