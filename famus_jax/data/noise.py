"""Synthetic label noise as pure, seeded functions.

Every noise model is a row-stochastic transition matrix ``T`` with
``T[i, j] = P(noisy = j | true = i)``; the noisy label of each example is drawn
independently from the row of its true label with a ``numpy`` generator seeded
by ``seed`` (same seed -> same labels, whatever else happens in the process).

* ``symmetric`` — with probability ``rate`` the label is replaced by a class
  drawn uniformly at random. ``include_true=True`` (the paper's definition)
  draws among all C classes, so the label may stay the same and the realised
  rate is ``rate * (C - 1) / C``; ``include_true=False`` draws among the other
  C - 1 classes and the realised rate is ``rate``.
* ``asymmetric`` — class-dependent flips with probability ``rate``: CIFAR-10
  truck→automobile, bird→airplane, deer→horse, cat↔dog; CIFAR-100 each class
  → the next class (cyclically) within its super-class; Fashion-MNIST (passed
  as ``mapping=FASHION_MNIST_ASYMMETRIC`` by its loader) T-shirt/top↔shirt,
  pullover→coat, sandal→sneaker, sneaker→ankle boot.
* ``pairflip`` — class i → class (i + 1) mod C with probability ``rate``.
"""

from __future__ import annotations

import numpy as np

# CIFAR-10 class ids: 0 airplane, 1 automobile, 2 bird, 3 cat, 4 deer, 5 dog,
# 6 frog, 7 horse, 8 ship, 9 truck.
CIFAR10_ASYMMETRIC = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}

# Fashion-MNIST class ids: 0 T-shirt/top, 1 trouser, 2 pullover, 3 dress,
# 4 coat, 5 sandal, 6 shirt, 7 sneaker, 8 bag, 9 ankle boot. Flips between the
# visually confusable garments and shoes, on the pattern of the CIFAR-10 map
# (Patrini et al., CVPR 2017): T-shirt/top <-> shirt (the class pair that
# classifiers confuse most on this data set; Xiao et al. 2017, arXiv:1708.07747,
# report shirt as the hardest class), pullover -> coat, sandal -> sneaker,
# sneaker -> ankle boot. Each class receives flips from at most one other
# class, so below 50 % every noisy class keeps a clean majority.
FASHION_MNIST_ASYMMETRIC = {0: 6, 6: 0, 2: 4, 5: 7, 7: 9}

# Super-class (coarse label) of each CIFAR-100 fine label, in the fine-label
# order of the CIFAR-100 release (and of tfds `cifar100`'s `label`).
CIFAR100_COARSE = np.array([
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
], dtype=np.int32)


def cifar100_asymmetric_map() -> dict[int, int]:
  """Fine class -> the next fine class (by id, cyclically) in its super-class."""
  mapping = {}
  for coarse in range(20):
    members = np.flatnonzero(CIFAR100_COARSE == coarse)
    for a, b in zip(members, np.roll(members, -1)):
      mapping[int(a)] = int(b)
  return mapping


def _check(labels, num_classes, rate):
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError("labels must be a 1-D integer array")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes})")
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"noise rate {rate!r} must lie in [0, 1]")
  return labels


def symmetric_matrix(num_classes: int, rate: float, include_true: bool = True) -> np.ndarray:
  c = num_classes
  if include_true:
    t = np.full((c, c), rate / c)
    t[np.diag_indices(c)] += 1.0 - rate
  else:
    if c < 2:
      raise ValueError("symmetric noise excluding the true class needs >= 2 classes")
    t = np.full((c, c), rate / (c - 1))
    t[np.diag_indices(c)] = 1.0 - rate
  return t


def mapping_matrix(num_classes: int, rate: float, mapping: dict[int, int]) -> np.ndarray:
  t = np.eye(num_classes)
  for src, dst in mapping.items():
    if src != dst:
      t[src, src] = 1.0 - rate
      t[src, dst] = rate
  return t


def asymmetric_mapping(num_classes: int) -> dict[int, int]:
  if num_classes == 10:
    return dict(CIFAR10_ASYMMETRIC)
  if num_classes == 100:
    return cifar100_asymmetric_map()
  raise ValueError(
      "asymmetric noise is defined for CIFAR-10 (10 classes) and CIFAR-100 "
      f"(100 classes), got {num_classes} classes; pass mapping= explicitly")


def pairflip_mapping(num_classes: int) -> dict[int, int]:
  return {i: (i + 1) % num_classes for i in range(num_classes)}


def transition_matrix(noise_type: str, num_classes: int, rate: float,
                      include_true: bool = True, mapping=None) -> np.ndarray:
  """The nominal transition matrix of a noise model."""
  if noise_type == "none":
    return np.eye(num_classes)
  if noise_type == "symmetric":
    return symmetric_matrix(num_classes, rate, include_true)
  if noise_type == "asymmetric":
    return mapping_matrix(num_classes, rate, mapping or asymmetric_mapping(num_classes))
  if noise_type == "pairflip":
    return mapping_matrix(num_classes, rate, pairflip_mapping(num_classes))
  raise ValueError(f"noise_type={noise_type!r}: must be one of 'none', "
                   "'symmetric', 'asymmetric', 'pairflip'")


def sample_from_transition(labels, matrix: np.ndarray, seed: int) -> np.ndarray:
  """Draws noisy[i] ~ matrix[labels[i]] independently; pure in (labels, seed)."""
  labels = np.asarray(labels)
  rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x4E015E]))
  u = rng.random(labels.shape[0])
  cdf = np.cumsum(matrix, axis=1)
  cdf[:, -1] = 1.0  # guard against round-off
  noisy = np.empty_like(labels, dtype=np.int32)
  # Chunked so that 1M x 100 classes does not allocate 800 MB at once.
  for s in range(0, labels.shape[0], 65536):
    rows = cdf[labels[s:s + 65536]]
    noisy[s:s + 65536] = (u[s:s + 65536, None] >= rows).sum(axis=1)
  return noisy


def symmetric_noise(labels, num_classes: int, rate: float, seed: int,
                    include_true: bool = True) -> np.ndarray:
  labels = _check(labels, num_classes, rate)
  return sample_from_transition(labels, symmetric_matrix(num_classes, rate, include_true), seed)


def asymmetric_noise(labels, num_classes: int, rate: float, seed: int,
                     mapping: dict[int, int] | None = None) -> np.ndarray:
  labels = _check(labels, num_classes, rate)
  mapping = asymmetric_mapping(num_classes) if mapping is None else mapping
  return sample_from_transition(labels, mapping_matrix(num_classes, rate, mapping), seed)


def pairflip_noise(labels, num_classes: int, rate: float, seed: int) -> np.ndarray:
  labels = _check(labels, num_classes, rate)
  return sample_from_transition(
      labels, mapping_matrix(num_classes, rate, pairflip_mapping(num_classes)), seed)


def noise_report(true_labels, noisy_labels, num_classes: int) -> dict:
  """Realised noise rate and empirical transition matrix.

  Examples whose true label is unknown (-1) are left out. A class with no
  example gets the identity row, so every row sums to 1.
  """
  true_labels = np.asarray(true_labels)
  noisy_labels = np.asarray(noisy_labels)
  known = true_labels >= 0
  t, n = true_labels[known], noisy_labels[known]
  counts = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(counts, (t, n), 1)
  rows = counts.sum(1, keepdims=True)
  matrix = np.where(rows > 0, counts / np.maximum(rows, 1), np.eye(num_classes))
  return {
      "realised_noise_rate": float(np.mean(t != n)) if t.size else float("nan"),
      "num_known_true_labels": int(t.size),
      "num_examples": int(true_labels.size),
      "transition_matrix": matrix.tolist(),
  }


def apply_noise(labels, num_classes: int, noise_type: str, rate: float, seed: int,
                include_true: bool = True, mapping=None) -> tuple[np.ndarray, dict]:
  """Noisy labels and a report (requested/realised rate, both matrices)."""
  labels = _check(labels, num_classes, rate)
  if noise_type == "none":
    noisy = labels.astype(np.int32).copy()
  elif noise_type == "symmetric":
    noisy = symmetric_noise(labels, num_classes, rate, seed, include_true)
  elif noise_type == "asymmetric":
    noisy = asymmetric_noise(labels, num_classes, rate, seed, mapping)
  elif noise_type == "pairflip":
    noisy = pairflip_noise(labels, num_classes, rate, seed)
  else:
    transition_matrix(noise_type, num_classes, rate)  # raises the ValueError
  report = noise_report(labels, noisy, num_classes)
  report.update(
      noise_type=noise_type,
      requested_noise_rate=float(rate),
      noise_include_true=bool(include_true),
      nominal_transition_matrix=transition_matrix(
          noise_type, num_classes, rate, include_true, mapping).tolist(),
  )
  return noisy, report
