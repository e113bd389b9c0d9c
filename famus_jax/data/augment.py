"""Batch augmentation: numpy (runs in the grain pipeline) and jax (on device).

Default: the numpy path inside the grain pipeline (``make_loader(augment=...)``).
Measured with ``experiments/benchmarks/augment_benchmark.py`` on a 2-core CPU (shared,
load average 6-7; ``experiments/results/augment_benchmark_cpu.json``): alone,
the jitted kernel is faster on data already on the device (CIFAR batch 64:
0.17 ms vs 0.48 ms numpy; Clothing1M 256->224, batch 32: 1.2 ms vs 5.5 ms),
but counting the host-to-device copy it is comparable (0.40 ms; 4.3 ms), and
in a loop "next batch -> jitted step" the loader-without-augmentation, grain
and in-jit variants are within the machine's noise of one another (batch 64:
medians 111 / 114 / 107 ms per step; minima 57 / 54 / 54 ms). Augmentation is
< 1 % of a real CPU step (PreActResNet-18 at batch 64: ~1.5 s), so the choice
rests on the rest: in grain it overlaps the step (prefetch threads or worker
processes), the large-image crop has to happen before batching anyway
(decoded images are 256x256, the network takes 224x224, and cropping on the
host ships 23 % fewer bytes), it is a pure function of (seed, batch index), so
resuming a checkpointed iterator is exact without threading an RNG through
the training step, and the step stays augmentation-free. ``augment_batch_jax``
remains for runs that want it on an accelerator: loader ``augment='none'``
and call it inside the step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _crop_flip(images, padded, oy, ox, flip, h, w):
  # A slice copy per image: 3-5x faster than one fancy-index gather over the
  # batch (measured with experiments/benchmarks/augment_benchmark.py).
  out = np.empty((images.shape[0], h, w, images.shape[3]), images.dtype)
  for i in range(images.shape[0]):
    crop = padded[i, oy[i]:oy[i] + h, ox[i]:ox[i] + w]
    out[i] = crop[:, ::-1] if flip[i] else crop
  return out


def crop_flip_numpy(rng: np.random.Generator, images: np.ndarray, pad: int = 4
                    ) -> np.ndarray:
  """Zero-pad by ``pad``, random crop back to (H, W), random horizontal flip.

  ``images``: (B, H, W, C). The offsets and flips are drawn from ``rng``.
  """
  b, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  oy = rng.integers(0, 2 * pad + 1, size=b)
  ox = rng.integers(0, 2 * pad + 1, size=b)
  flip = rng.random(b) < 0.5
  return _crop_flip(images, padded, oy, ox, flip, h, w)


def random_crop_flip_numpy(rng: np.random.Generator, images: np.ndarray,
                           size: int) -> np.ndarray:
  """Random ``size x size`` crop (no padding) + random horizontal flip."""
  b, h, w, _ = images.shape
  if size > h or size > w:
    raise ValueError(f"crop size {size} exceeds the image size {(h, w)}")
  oy = rng.integers(0, h - size + 1, size=b)
  ox = rng.integers(0, w - size + 1, size=b)
  flip = rng.random(b) < 0.5
  return _crop_flip(images, images, oy, ox, flip, size, size)


def center_crop_numpy(images: np.ndarray, size: int) -> np.ndarray:
  _, h, w, _ = images.shape
  if size > h or size > w:
    raise ValueError(f"crop size {size} exceeds the image size {(h, w)}")
  top, left = (h - size) // 2, (w - size) // 2
  return images[:, top:top + size, left:left + size]


def _fit(images: np.ndarray, crop_size) -> np.ndarray:
  """The centre `crop_size` square when the images are larger, else as they are."""
  if crop_size is not None and images.shape[1] != crop_size:
    return center_crop_numpy(images, crop_size)
  return images


def shift_numpy(rng: np.random.Generator, images: np.ndarray, pad: int = 1) -> np.ndarray:
  """Random translation by up to `pad` pixels (zero padding, no flip). (B,H,W,C)."""
  b, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  oy = rng.integers(0, 2 * pad + 1, size=b)
  ox = rng.integers(0, 2 * pad + 1, size=b)
  out = np.empty_like(images)
  for i in range(b):
    out[i] = padded[i, oy[i]:oy[i] + h, ox[i]:ox[i] + w]
  return out


# `config.data.augment` -> fn(rng, images, crop_size, pad): the loader's augmentations.
AUGMENTATIONS = {
    "none": lambda rng, x, crop, pad: _fit(x, crop),
    "crop_flip": lambda rng, x, crop, pad: _fit(crop_flip_numpy(rng, x, pad), crop),
    "resize_crop": lambda rng, x, crop, pad: random_crop_flip_numpy(rng, x,
                                                                   crop or x.shape[1]),
    "center_crop": lambda rng, x, crop, pad: _fit(x, crop),
}
# Algorithm 2's SSL views may also be shifted by one pixel (`alg2.ssl.augment`).
SSL_AUGMENTATIONS = {**AUGMENTATIONS,
                     "shift": lambda rng, x, crop, pad: shift_numpy(rng, _fit(x, crop), 1)}


def augment_numpy(rng: np.random.Generator, images: np.ndarray, augment: str,
                  crop_size=None, pad: int = 4, registry=None) -> np.ndarray:
  """`registry[augment]` (default `AUGMENTATIONS`) of a batch, as float32 in
  [0, 1] (uint8 inputs are scaled by 1/255)."""
  images = (registry or AUGMENTATIONS)[augment](rng, images, crop_size, pad)
  if images.dtype == np.uint8:
    return images.astype(np.float32) * np.float32(1.0 / 255.0)
  return np.ascontiguousarray(images, np.float32)


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
