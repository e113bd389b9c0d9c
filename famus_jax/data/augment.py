"""Batch augmentation: numpy (runs in the grain pipeline) and jax (on device).

The default is the numpy path inside the grain pipeline (see
``experiments/augment_benchmark.py`` and its JSON for the measurement behind
that choice). ``augment_batch_jax`` is the equivalent on-device version for a
training step that wants to augment inside ``jit``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def crop_flip_numpy(rng: np.random.Generator, images: np.ndarray, pad: int = 4
                    ) -> np.ndarray:
  """Zero-pad by ``pad``, random crop back to (H, W), random horizontal flip.

  ``images``: (B, H, W, C). Vectorised over the batch (one gather).
  """
  b, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  oy = rng.integers(0, 2 * pad + 1, size=b)
  ox = rng.integers(0, 2 * pad + 1, size=b)
  flip = rng.random(b) < 0.5
  rows = oy[:, None] + np.arange(h)[None, :]  # (B, H)
  cols = ox[:, None] + np.arange(w)[None, :]  # (B, W)
  cols = np.where(flip[:, None], cols[:, ::-1], cols)
  return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def random_crop_flip_numpy(rng: np.random.Generator, images: np.ndarray,
                           size: int) -> np.ndarray:
  """Random ``size x size`` crop (no padding) + random horizontal flip."""
  b, h, w, _ = images.shape
  if size > h or size > w:
    raise ValueError(f"crop size {size} exceeds the image size {(h, w)}")
  oy = rng.integers(0, h - size + 1, size=b)
  ox = rng.integers(0, w - size + 1, size=b)
  flip = rng.random(b) < 0.5
  rows = oy[:, None] + np.arange(size)[None, :]
  cols = ox[:, None] + np.arange(size)[None, :]
  cols = np.where(flip[:, None], cols[:, ::-1], cols)
  return images[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def center_crop_numpy(images: np.ndarray, size: int) -> np.ndarray:
  _, h, w, _ = images.shape
  if size > h or size > w:
    raise ValueError(f"crop size {size} exceeds the image size {(h, w)}")
  top, left = (h - size) // 2, (w - size) // 2
  return images[:, top:top + size, left:left + size]


@functools.partial(jax.jit, static_argnames=("pad",))
def augment_batch_jax(rng, images, pad: int = 4):
  """On-device crop (``pad``-pixel zero padding) + horizontal flip.

  ``rng``: a ``jax.random`` key; ``images``: (B, H, W, C). Jit-compiled; call it
  inside the training step (or as is) with a fresh key per step.
  """
  b, h, w, c = images.shape
  k_y, k_x, k_f = jax.random.split(rng, 3)
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  oy = jax.random.randint(k_y, (b,), 0, 2 * pad + 1)
  ox = jax.random.randint(k_x, (b,), 0, 2 * pad + 1)
  flip = jax.random.bernoulli(k_f, 0.5, (b,))
  crop = jax.vmap(lambda im, y, x: jax.lax.dynamic_slice(im, (y, x, 0), (h, w, c)))(
      padded, oy, ox)
  return jnp.where(flip[:, None, None, None], crop[:, :, ::-1], crop)
