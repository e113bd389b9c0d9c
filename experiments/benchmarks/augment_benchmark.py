"""Where should crop/flip augmentation run: in the grain pipeline or in jit?

Measures, on this machine's CPU (JAX CPU backend):

1. the cost of augmenting one batch alone: the numpy version the grain
   pipeline runs (``crop_flip_numpy``; ``random_crop_flip_numpy`` for the
   256 -> 224 large-image crop) vs the jitted jax version
   (``augment_batch_jax``; a ``dynamic_slice`` crop for 256 -> 224). numpy
   works on the uint8 records (what the pipeline holds before its float
   conversion), jax on the float32 batch already on the device ("jit+put"
   adds the host-to-device copy);
2. end to end, a loop of "next batch -> jitted training-step stand-in":
   (A) the loader augments (``augment='crop_flip'``, prefetch threads, so the
   augmentation overlaps the step) vs (B) the loader does not augment and the
   step applies ``augment_batch_jax`` inside the same ``jit``; a loader
   without augmentation and the step alone (no loader) are the baselines.

Writes ``experiments/results/augment_benchmark_<platform>.json`` and prints a
table. Timings are medians over repeats; the machine is shared, so treat
differences under ~10 % as noise.

  python -m experiments.benchmarks.augment_benchmark [--quick]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from famus_jax import data
from famus_jax.data import augment as aug


def _median_time(fn, repeats, inner):
  fn()  # warm-up / compile
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    for _ in range(inner):
      fn()
    times.append((time.perf_counter() - t) / inner)
  return statistics.median(times)


@functools.partial(jax.jit, static_argnames=("size",))
def random_crop_flip_jax(rng, images, size):
  b, h, w, c = images.shape
  k_y, k_x, k_f = jax.random.split(rng, 3)
  oy = jax.random.randint(k_y, (b,), 0, h - size + 1)
  ox = jax.random.randint(k_x, (b,), 0, w - size + 1)
  flip = jax.random.bernoulli(k_f, 0.5, (b,))
  crop = jax.vmap(lambda im, y, x: jax.lax.dynamic_slice(im, (y, x, 0), (size, size, c)))(
      images, oy, ox)
  return jnp.where(flip[:, None, None, None], crop[:, :, ::-1], crop)


def bench_alone(repeats, inner):
  rows = []
  rng = np.random.default_rng(0)
  key = jax.random.PRNGKey(0)
  for name, shape, kind in (("cifar 32x32 crop_flip", (64, 32, 32, 3), "pad"),
                            ("cifar 32x32 crop_flip", (128, 32, 32, 3), "pad"),
                            ("clothing 256->224 crop+flip", (32, 256, 256, 3), "crop")):
    u8 = rng.integers(0, 256, size=shape, dtype=np.uint8)
    f32 = u8.astype(np.float32) / 255.0
    dev = jax.device_put(f32)
    if kind == "pad":
      np_fn = lambda: aug.crop_flip_numpy(rng, u8, 4)
      jx_fn = lambda: aug.augment_batch_jax(key, dev, pad=4).block_until_ready()
      jx_put = lambda: aug.augment_batch_jax(key, jax.device_put(f32), pad=4).block_until_ready()
    else:
      np_fn = lambda: aug.random_crop_flip_numpy(rng, u8, 224)
      jx_fn = lambda: random_crop_flip_jax(key, dev, 224).block_until_ready()
      jx_put = lambda: random_crop_flip_jax(key, jax.device_put(f32), 224).block_until_ready()
    row = {"case": name, "batch": shape[0],
           "numpy_ms": 1e3 * _median_time(np_fn, repeats, inner),
           "jax_jit_ms": 1e3 * _median_time(jx_fn, repeats, inner),
           "jax_jit_with_transfer_ms": 1e3 * _median_time(jx_put, repeats, inner)}
    rows.append(row)
  return rows


def _make_step(width):
  """A jitted stand-in for a training step: a small conv net's forward+backward."""
  k1, k2 = jax.random.split(jax.random.PRNGKey(1))
  params = {"w1": jax.random.normal(k1, (3, 3, 3, width)) * 0.1,
            "w2": jax.random.normal(k2, (3, 3, width, width)) * 0.1}

  def loss(p, x):
    y = jax.lax.conv_general_dilated(x, p["w1"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = jax.nn.relu(y)
    y = jax.lax.conv_general_dilated(y, p["w2"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.mean(y ** 2)

  @jax.jit
  def step_plain(p, x):
    g = jax.grad(loss)(p, x)
    return jax.tree.map(lambda a, b: a - 1e-3 * b, p, g)

  @jax.jit
  def step_aug(p, x, key):
    x = aug.augment_batch_jax(key, x, pad=4)
    g = jax.grad(loss)(p, x)
    return jax.tree.map(lambda a, b: a - 1e-3 * b, p, g)

  return params, step_plain, step_aug


def bench_end_to_end(rounds, seg, batch, width):
  """Per-step time of four loops, interleaved in segments of ``seg`` steps.

  Fine interleaving makes the (shared) machine's load drift hit every variant
  alike; the median and the minimum over segments are reported.
  """
  rng = np.random.default_rng(0)
  src = data.ArraySource(rng.integers(0, 256, (4096, 32, 32, 3), dtype=np.uint8),
                         rng.integers(0, 10, 4096))
  params, step_plain, step_aug = _make_step(width)
  key = jax.random.PRNGKey(0)
  x_fixed = src.images[:batch].astype(np.float32) / 255.0

  state = {}
  for v in ("none", "grain", "jit", "step_only"):
    loader = None
    if v != "step_only":
      loader = data.make_loader(src, batch_size=batch, seed=0,
                                augment="crop_flip" if v == "grain" else "none")
    state[v] = [loader, params, 0]

  def segment(v):
    loader, p, i = state[v]
    t = time.perf_counter()
    for _ in range(seg):
      if v == "step_only":
        p = step_plain(p, x_fixed)
      elif v == "jit":
        p = step_aug(p, next(loader)["image"], jax.random.fold_in(key, i))
      else:
        p = step_plain(p, next(loader)["image"])
      i += 1
    jax.block_until_ready(p)
    state[v] = [loader, p, i]
    return (time.perf_counter() - t) / seg

  for v in state:  # compile + fill the prefetch buffers
    segment(v)
  times = {v: [] for v in state}
  for _ in range(rounds):
    for v in state:
      times[v].append(segment(v))
  med = {v: 1e3 * statistics.median(t) for v, t in times.items()}
  low = {v: 1e3 * min(t) for v, t in times.items()}
  return {"batch": batch, "conv_width": width, "rounds": rounds, "steps_per_segment": seg,
          "median_ms_per_step": med, "min_ms_per_step": low,
          "raw_segment_ms": {v: [round(1e3 * x, 2) for x in t] for v, t in times.items()}}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  repeats, inner, rounds = (3, 5, 6) if args.quick else (7, 20, 30)
  backend = jax.default_backend()
  alone = bench_alone(repeats, inner)
  e2e = [bench_end_to_end(rounds, 10, 64, 32), bench_end_to_end(rounds, 10, 128, 16)]

  print(f"\nAugmentation alone ({backend}, {os.cpu_count()} cores), ms per batch (median):")
  print(f"{'case':32s} {'B':>4s} {'numpy':>9s} {'jax jit':>9s} {'jit+put':>9s}")
  for r in alone:
    print(f"{r['case']:32s} {r['batch']:4d} {r['numpy_ms']:9.3f} {r['jax_jit_ms']:9.3f} "
          f"{r['jax_jit_with_transfer_ms']:9.3f}")
  print("\nEnd to end, loader + jitted step stand-in, ms per step, median (min):")
  print(f"{'B':>4s} {'step only':>16s} {'loader, no aug':>16s} {'grain aug':>16s} "
        f"{'jit aug':>16s}")
  for r in e2e:
    cells = [f"{r['median_ms_per_step'][v]:7.2f} ({r['min_ms_per_step'][v]:6.2f})"
             for v in ("step_only", "none", "grain", "jit")]
    print(f"{r['batch']:4d} " + " ".join(f"{c:>16s}" for c in cells))

  result = {
      "backend": backend, "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
      "machine": platform.machine(), "jax": jax.__version__, "quick": args.quick,
      "augment_alone": alone, "end_to_end": e2e,
  }
  out = args.out or os.path.join(common.RESULTS_DIR, f"augment_benchmark_{backend}.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
  print(f"\nwrote {out}")


if __name__ == "__main__":
  main()
