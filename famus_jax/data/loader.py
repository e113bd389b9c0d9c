"""grain input pipeline: deterministic, epoch-aligned batches, exact resume.

The pipeline is a ``grain.MapDataset`` whose element ``k`` is *batch* ``k``:
epoch ``e = k // batches_per_epoch`` uses the permutation drawn from
``(seed, e)`` (or the sampler's epoch draw), so every epoch is a fresh,
reproducible shuffle, no example is dropped or repeated within an epoch (apart
from the remainder ``drop_remainder`` drops), and a batch never straddles two
epochs. The records of a batch are fetched with ``source.get_batch`` and
augmented with a numpy generator seeded by ``(seed, k)``: the output depends
on ``k`` only, never on threads or worker processes, which is what makes
``get_state``/``set_state`` resume exact. Prefetching is grain's: threads
(``to_iter_dataset``) and, with ``num_workers > 0``, worker processes
(``mp_prefetch``).

Batches are dicts of numpy arrays: ``image`` float32 (B, H, W, C) in [0, 1]
(uint8 / 255; no mean/std normalisation — the model does that if it wants),
``label``, ``true_label``, ``index`` int32.
"""

from __future__ import annotations

import sys
import threading

from absl import flags
import grain
import numpy as np

from famus_jax.data import augment as augment_lib
from famus_jax.data.config import AUGMENTS
from famus_jax.data.sources import get_batch


class NoiseBalancedSampler:
  """Clothing1M's sampler: ``num_batches`` mini-batches per epoch, each class
  (by noisy label) equally represented.

  Per epoch it draws ``num_batches * batch_size`` examples: the quota is split
  evenly over the classes present (the remainder goes to randomly chosen
  classes), each class's quota is drawn without replacement (a class with
  fewer examples than its quota contributes all of them, then repeats drawn at
  random: the only repeats within an epoch), and the draw is shuffled.
  Deterministic in ``(seed, epoch)``.
  """

  def __init__(self, labels, num_classes: int, num_batches: int = 1000):
    labels = np.asarray(labels)
    self.num_classes = int(num_classes)
    self.num_batches = int(num_batches)
    self.class_indices = [np.flatnonzero(labels == c) for c in range(num_classes)]
    self.present = [c for c in range(num_classes) if self.class_indices[c].size]
    if not self.present:
      raise ValueError("NoiseBalancedSampler: no labelled example")

  def num_batches_per_epoch(self, dataset_size: int, batch_size: int) -> int:
    del dataset_size, batch_size
    return self.num_batches

  def epoch_indices(self, epoch: int, seed: int, batch_size: int) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), 0xBA1]))
    total = self.num_batches * batch_size
    k = len(self.present)
    quota = np.full(k, total // k)
    quota[rng.choice(k, size=total % k, replace=False)] += 1
    parts = []
    for c, q in zip(self.present, quota):
      idx = self.class_indices[c]
      if q <= idx.size:
        parts.append(rng.choice(idx, size=q, replace=False))
      else:
        parts.append(np.concatenate([rng.permutation(idx),
                                     rng.choice(idx, size=q - idx.size)]))
    return rng.permutation(np.concatenate(parts))


class _EpochBatches(grain.MapDataset):
  """Element k = (k, example indices of batch k)."""

  def __init__(self, size, batch_size, seed, shuffle, num_epochs, drop_remainder,
               sampler):
    super().__init__()
    self._size, self._b, self._seed = size, batch_size, seed
    self._shuffle, self._drop, self._sampler = shuffle, drop_remainder, sampler
    if sampler is not None:
      self.batches_per_epoch = sampler.num_batches_per_epoch(size, batch_size)
    elif drop_remainder:
      self.batches_per_epoch = size // batch_size
    else:
      self.batches_per_epoch = -(-size // batch_size)
    if self.batches_per_epoch == 0:
      raise ValueError(
          f"a split of {size} examples gives no batch of {batch_size} with "
          "drop_remainder=True; lower the batch size or set drop_remainder=False")
    self._length = (sys.maxsize if num_epochs is None
                    else num_epochs * self.batches_per_epoch)
    self._cache, self._lock = {}, threading.Lock()

  def __len__(self):
    return self._length

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_cache"], state["_lock"] = {}, None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def epoch_order(self, epoch: int) -> np.ndarray:
    with self._lock:
      order = self._cache.get(epoch)
      if order is None:
        if self._sampler is not None:
          order = self._sampler.epoch_indices(epoch, self._seed, self._b)
        elif self._shuffle:
          rng = np.random.default_rng(
              np.random.SeedSequence([int(self._seed), int(epoch), 0x5EF]))
          order = rng.permutation(self._size)
        else:
          order = np.arange(self._size)
        if len(self._cache) >= 4:
          self._cache.pop(min(self._cache))
        self._cache[epoch] = order
      return order

  def __getitem__(self, k):
    if isinstance(k, slice):
      return self.slice(k)
    epoch, j = divmod(int(k), self.batches_per_epoch)
    order = self.epoch_order(epoch)
    return int(k), order[j * self._b:(j + 1) * self._b]


class _FetchAndAugment:
  """Batch k's records, augmented with a generator seeded by (seed, k)."""

  def __init__(self, source, augment, seed, pad, crop_size):
    self.source, self.augment, self.seed = source, augment, seed
    self.pad, self.crop_size = pad, crop_size

  def __call__(self, element):
    k, indices = element
    batch = dict(get_batch(self.source, indices))
    images = batch["image"]
    rng = np.random.default_rng(np.random.SeedSequence([int(self.seed), k, 0xA06]))
    batch["image"] = augment_lib.augment_numpy(rng, images, self.augment, self.crop_size,
                                               self.pad)
    for key in ("label", "true_label", "index"):
      batch[key] = np.asarray(batch[key], np.int32)
    return batch


class Loader:
  """Iterator over batches with ``get_state``/``set_state`` for exact resume.

  The state is a small JSON-serialisable dict. ``batches_per_epoch`` and
  ``len()`` (batches in total, None-epochs -> ``sys.maxsize``) are exposed.
  """

  def __init__(self, dataset, batches, fingerprint):
    self._dataset = dataset
    self._batches = batches
    self._fingerprint = fingerprint
    self._it = iter(dataset)
    self.batches_per_epoch = batches.batches_per_epoch
    # Worker processes hand batches over in shared memory; copy them into
    # ordinary arrays so their lifetime is the caller's (no shared-memory
    # segments kept alive by references the training loop holds).
    self._copy = fingerprint["num_workers"] > 0

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self._it)
    if self._copy:
      batch = {k: np.array(v) for k, v in batch.items()}
    return batch

  def __len__(self):
    return len(self._batches)

  def get_state(self) -> dict:
    return {"grain": self._it.get_state(), **self._fingerprint}

  def set_state(self, state: dict) -> None:
    for key, want in self._fingerprint.items():
      if state.get(key) != want:
        raise ValueError(
            f"loader state was saved with {key}={state.get(key)!r}, this loader "
            f"has {key}={want!r}")
    self._it.set_state(state["grain"])

  def close(self):
    close = getattr(self._it, "close", None)
    if close is not None:
      close()


def make_loader(source, *, batch_size: int, seed: int, shuffle: bool = True,
                num_epochs: int | None = None, augment: str = "none",
                drop_remainder: bool = True, num_workers: int = 0,
                sampler=None, prefetch: int = 2, pad: int = 4,
                crop_size: int | None = None) -> Loader:
  """A checkpointable iterator of numpy batches over ``source``.

  Args:
    source: a random-access source (``ArraySource``, ``ImageFileSource``, or
      anything with ``__len__``/``__getitem__`` returning the record dict).
    batch_size: examples per batch.
    seed: drives the per-epoch shuffles, the sampler and the augmentation.
    shuffle: fresh permutation each epoch (else the split's order).
    num_epochs: None cycles forever.
    augment: 'none' | 'crop_flip' | 'resize_crop' | 'center_crop'; on a
      large-image source (one with ``crop_size``) 'none' centre-crops.
    drop_remainder: drop each epoch's last partial batch.
    num_workers: grain worker processes (0 = prefetch threads only).
    sampler: e.g. ``NoiseBalancedSampler``; decides each epoch's examples.
    prefetch: batches buffered ahead (0 = synchronous).
    pad: padding of 'crop_flip'.
    crop_size: output size of the crops; default ``source.crop_size``.
  """
  if augment not in AUGMENTS:
    raise ValueError(f"augment={augment!r}: must be one of {', '.join(map(repr, AUGMENTS))}")
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size}: must be >= 1")
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"num_epochs={num_epochs}: must be >= 1 or None")
  if crop_size is None:
    crop_size = getattr(source, "crop_size", None)
  seed = int(seed) % 2**32
  batches = _EpochBatches(len(source), batch_size, seed, shuffle, num_epochs,
                          drop_remainder, sampler)
  ds = batches.map(_FetchAndAugment(source, augment, seed, pad, crop_size))
  threads = 0 if prefetch == 0 else (1 if num_workers else 2)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                            prefetch_buffer_size=max(prefetch, 1)))
  if num_workers > 0:
    # grain's worker processes read absl flags; outside an absl app (tests,
    # notebooks) they are unparsed and grain would raise: use the defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=max(prefetch, 1)))
  fingerprint = {"size": len(source), "batch_size": batch_size, "seed": seed,
                 "shuffle": bool(shuffle), "augment": augment,
                 "num_workers": num_workers,
                 "sampler": type(sampler).__name__ if sampler is not None else None}
  return Loader(ds, batches, fingerprint)
