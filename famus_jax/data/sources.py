"""Random-access sources (grain-compatible) and the DataSplits container.

A source has ``__len__`` and ``__getitem__(i) -> dict`` with
``image`` (H, W, C; uint8, or float32 in [0, 1] for digits), ``label`` (int32;
the noisy label for a training split, the clean one for meta/test),
``true_label`` (int32; -1 where unknown, e.g. web images nobody verified) and
``index`` (int32, the position within that split). ``get_batch(indices)``
returns the same keys stacked, and is what the loader calls.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from etils import epy
import numpy as np

with epy.lazy_imports():  # imported when an image file is read
  from PIL import Image


class DatasetMissingError(FileNotFoundError):
  """The prepared data is not where the config says; str() is a one-line how-to."""

  def __init__(self, message: str):
    super().__init__(" ".join(message.split()))

  def __str__(self):
    return self.args[0]


class DataFileError(ValueError):
  """A data file is damaged or not the file it should be; str() names it and
  what to do (one line)."""


class ArraySource:
  """An in-memory split: whole arrays, random access by position."""

  def __init__(self, images, labels, true_labels=None, source_index=None):
    self.images = np.asarray(images)
    self.labels = np.asarray(labels, np.int32)
    self.true_labels = (self.labels.copy() if true_labels is None
                        else np.asarray(true_labels, np.int32))
    n = self.images.shape[0]
    if self.labels.shape != (n,) or self.true_labels.shape != (n,):
      raise ValueError("images, labels and true_labels must have the same length")
    # Position of each example in the data set's original split (analysis).
    self.source_index = (np.arange(n) if source_index is None
                         else np.asarray(source_index, np.int64))

  def __len__(self):
    return self.images.shape[0]

  def __getitem__(self, i):
    i = int(i)
    if i < 0:
      i += len(self)
    return {"image": self.images[i], "label": self.labels[i],
            "true_label": self.true_labels[i], "index": np.int32(i)}

  def get_batch(self, indices) -> dict[str, np.ndarray]:
    idx = np.asarray(indices, np.int64)
    return {"image": self.images[idx], "label": self.labels[idx],
            "true_label": self.true_labels[idx], "index": idx.astype(np.int32)}

  def subset(self, indices) -> "ArraySource":
    idx = np.asarray(indices, np.int64)
    return ArraySource(self.images[idx], self.labels[idx], self.true_labels[idx],
                       self.source_index[idx])

  def with_labels(self, labels) -> "ArraySource":
    return ArraySource(self.images, labels, self.true_labels, self.source_index)

  def __repr__(self):
    return (f"ArraySource(n={len(self)}, image={self.images.shape[1:]}"
            f" {self.images.dtype})")


def load_image(path: str, resize: int) -> np.ndarray:
  """Decodes a JPEG/PNG, resizes its short side to ``resize`` and centre-crops
  it to ``resize x resize`` (uint8 RGB). Random crops are the loader's job."""
  with Image.open(path) as im:
    if im.format == "JPEG":
      im.draft("RGB", (resize, resize))  # decode at a reduced scale when possible
    im = im.convert("RGB")
    w, h = im.size
    scale = resize / min(w, h)
    nw, nh = max(resize, round(w * scale)), max(resize, round(h * scale))
    im = im.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - resize) // 2, (nh - resize) // 2
    im = im.crop((left, top, left + resize, top + resize))
    return np.asarray(im, np.uint8)


class ImageFileSource:
  """A split of image files decoded lazily with PIL (Clothing1M, WebVision).

  Records hold the ``resize x resize`` image; ``crop_size`` is the network's
  input size that the loader's crop produces. Picklable (plain attributes), so
  grain worker processes can decode in parallel.
  """

  def __init__(self, root: str, paths, labels, true_labels, *, resize: int,
               crop_size: int):
    self.root = root
    self.paths = np.asarray(paths, dtype=object)
    self.labels = np.asarray(labels, np.int32)
    self.true_labels = np.asarray(true_labels, np.int32)
    self.resize = int(resize)
    self.crop_size = int(crop_size)
    if not len(self.paths) == len(self.labels) == len(self.true_labels):
      raise ValueError("paths, labels and true_labels must have the same length")

  def __len__(self):
    return len(self.paths)

  def _image(self, i):
    return load_image(os.path.join(self.root, self.paths[i]), self.resize)

  def __getitem__(self, i):
    i = int(i)
    return {"image": self._image(i), "label": self.labels[i],
            "true_label": self.true_labels[i], "index": np.int32(i)}

  def get_batch(self, indices) -> dict[str, np.ndarray]:
    idx = np.asarray(indices, np.int64)
    return {"image": np.stack([self._image(i) for i in idx]),
            "label": self.labels[idx], "true_label": self.true_labels[idx],
            "index": idx.astype(np.int32)}

  def subset(self, indices) -> "ImageFileSource":
    idx = np.asarray(indices, np.int64)
    return ImageFileSource(self.root, self.paths[idx], self.labels[idx],
                           self.true_labels[idx], resize=self.resize,
                           crop_size=self.crop_size)

  def __repr__(self):
    return f"ImageFileSource(n={len(self)}, root={self.root!r}, resize={self.resize})"


def get_batch(source, indices) -> dict[str, np.ndarray]:
  """Stacked records of ``source`` at ``indices`` (any random-access source)."""
  if hasattr(source, "get_batch"):
    return source.get_batch(indices)
  recs = [source[int(i)] for i in indices]
  return {k: np.stack([np.asarray(r[k]) for r in recs]) for k in recs[0]}


def as_arrays(source, batch_size: int = 1024) -> dict[str, np.ndarray]:
  """Whole split as numpy arrays: image, label, true_label, index.

  Free for an ArraySource; any other source is read record by record (for
  Clothing1M's million images that is slow and large: use a loader instead).
  """
  if isinstance(source, ArraySource):
    return {"image": source.images, "label": source.labels,
            "true_label": source.true_labels,
            "index": np.arange(len(source), dtype=np.int32)}
  n = len(source)
  parts = [get_batch(source, range(s, min(n, s + batch_size)))
           for s in range(0, n, batch_size)]
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@dataclasses.dataclass(frozen=True)
class DataSplits:
  """What a loader returns.

  ``train`` carries noisy labels (``label``) and the true ones
  (``true_label``) kept aside for analysis; ``meta`` is the clean meta set
  (None when ``meta_per_class == 0``); ``test`` the clean test set.
  ``image_shape`` is the network's input shape (after any crop).
  ``extra_test`` holds further evaluation sets (WebVision: the ILSVRC12
  validation images of the same classes). ``train_sampler`` is the sampler
  the training loader should use (Clothing1M: noise-balanced), else None.
  """
  train: Any
  meta: Any
  test: Any
  num_classes: int
  image_shape: tuple
  info: dict
  extra_test: dict = dataclasses.field(default_factory=dict)
  train_sampler: Any = None
