"""Parameter counts of every backbone and forward/backward time of the CIFAR ones.

Prints a table and writes
``experiments/results/model_timing_<kind>.json`` (kind: 'cpu' or the
accelerator, e.g. 'h100') with

* the parameter count of every registered model (``jax.eval_shape``, nothing
  allocated) at the class counts used in the paper, against the reference;
* the median wall time (ms) of one jitted forward + backward (train mode:
  batch statistics, BN state update, mean cross-entropy, gradient w.r.t. all
  parameters) at the paper's batch size for the CIFAR models, 32x32x3 inputs,
  after a warm-up call, plus the compile time and XLA's FLOP estimate;
* the digits CNN/MLP sanity run: test accuracy and wall time (including
  init and compilation) of plain CE + Adam on sklearn's ``load_digits``
  (pixels / 16, 8x8x1, stratified 70/30 split), as in tests/test_models.py.

Usage::

  python -m experiments.benchmarks.model_timing                 # everything
  python -m experiments.benchmarks.model_timing --skip-wrn28    # without WRN-28-10 (slow on CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import common
from famus_jax import models

RESULTS_DIR = common.RESULTS_DIR

# (model, num_classes, input HxWxC) for the parameter table.
COUNT_SETTINGS = [
    ("preact_resnet18", 10, (32, 32, 3)),
    ("preact_resnet18", 100, (32, 32, 3)),
    ("wrn28_10", 10, (32, 32, 3)),
    ("wrn28_10", 100, (32, 32, 3)),
    ("wrn40_2", 10, (32, 32, 3)),
    ("resnet32", 10, (32, 32, 3)),
    ("resnet32", 100, (32, 32, 3)),
    ("resnet50", 1000, (224, 224, 3)),
    ("resnet50", 14, (224, 224, 3)),     # Clothing1M
    ("inception_resnet_v2", 1000, (299, 299, 3)),
    ("inception_resnet_v2", 50, (299, 299, 3)),  # mini-WebVision
    ("digits_mlp", 10, (8, 8, 1)),
    ("digits_cnn", 10, (8, 8, 1)),
]

# CIFAR models at the batch sizes of the paper / MW-Net code.
TIMING_SETTINGS = [
    ("preact_resnet18", 64),
    ("wrn28_10", 100),
    ("wrn40_2", 64),
    ("resnet32", 100),
    ("resnet32", 128),
]


def machine() -> dict:
  device = jax.devices()[0]
  return {
      "platform": device.platform,
      "device_kind": device.device_kind,
      "device_count": jax.device_count(),
      "cpu_count": os.cpu_count(),
      "processor": platform.processor() or platform.machine(),
      "hostname": platform.node(),
      "jax_version": jax.__version__,
      "python": platform.python_version(),
  }


def host_kind() -> str:
  device = jax.devices()[0]
  if device.platform == "cpu":
    return "cpu"
  return device.device_kind.lower().replace("nvidia ", "").replace(" ", "-")


def abstract_variables(model, shape):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.eval_shape(
      lambda x: model.init({"params": jax.random.key(0)}, x, train=False), x)


def materialize(abstract, seed=0):
  """Random concrete variables without model.init (whose threefry PRNG is
  slow to compile on CPU); He-normal kernels, BN scale 1, bias 0."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if path[0].key == "batch_stats":
      return jnp.full(leaf.shape, 1.0 if name == "var" else 0.0, leaf.dtype)
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(size=leaf.shape).astype(np.float32)
                         * np.float32(np.sqrt(2.0 / fan_in)))
    if name == "scale":
      return jnp.ones(leaf.shape, leaf.dtype)
    return jnp.zeros(leaf.shape, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def count_params(name, num_classes, shape) -> dict:
  model = models.get_model(name, num_classes=num_classes)
  variables = abstract_variables(model, (1,) + shape)
  n = models.param_count(variables["params"])
  row = {"model": name, "num_classes": num_classes, "params": n,
         "blocks": models.num_blocks(variables["params"])}
  ref = models.REFERENCE_PARAM_COUNTS.get(name)
  if ref is not None and ref[0] == num_classes:
    row.update(reference=ref[1], published=ref[2],
               rel_diff=(n - ref[1]) / ref[1])
  return row


def time_fwd_bwd(name, batch, repeats, warmup=1) -> dict:
  model = models.get_model(name, num_classes=10)
  shape = (batch, 32, 32, 3)
  variables = materialize(abstract_variables(model, shape))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=shape), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)

  def loss(params, stats, x, y):
    logits, upd = model.apply({"params": params, "batch_stats": stats}, x,
                              train=True, mutable=["batch_stats"],
                              rngs={"dropout": jax.random.key(0)})
    return (optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(),
            upd["batch_stats"])

  fwd_bwd = jax.jit(jax.value_and_grad(loss, has_aux=True))
  args = (variables["params"], variables["batch_stats"], x, y)
  start = time.perf_counter()
  compiled = fwd_bwd.lower(*args).compile()
  compile_s = time.perf_counter() - start
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan")))
  except Exception:  # pylint: disable=broad-except
    flops = float("nan")
  for _ in range(warmup):
    jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append((time.perf_counter() - start) * 1e3)
  return {"model": name, "batch": batch, "input": list(shape[1:]),
          "ms_median": statistics.median(times), "ms_all": times,
          "repeats": repeats, "warmup": warmup, "compile_s": compile_s,
          "xla_flops": flops,
          "gflops_per_s": flops / statistics.median(times) / 1e6,
          "loadavg_after": os.getloadavg()[0]}


def digits_run(name, epochs, lr=3e-3, batch=64) -> dict:
  """Train `name` on sklearn digits (same protocol as tests/test_models.py)."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  start = time.perf_counter()
  digits = load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]
  x_tr, x_te, y_tr, y_te = train_test_split(
      images, digits.target.astype(np.int32), test_size=0.3, random_state=0,
      stratify=digits.target)
  model = models.get_model(name, num_classes=10)
  variables = jax.jit(lambda k: model.init(k, jnp.asarray(x_tr[:2]),
                                           train=False))(jax.random.key(0))
  init_s = time.perf_counter() - start
  tx = optax.adam(lr)

  @jax.jit
  def step(params, stats, opt, x, y):
    def loss(p):
      logits, upd = model.apply({"params": p, **stats}, x, train=True,
                                mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, y).mean(), upd

    (_, stats), g = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, updates), stats, opt

  params = variables["params"]
  stats = {k: v for k, v in variables.items() if k != "params"}
  opt = tx.init(params)
  rng = np.random.default_rng(0)
  steps = 0
  for _ in range(epochs):
    perm = rng.permutation(len(x_tr))
    for i in range(len(x_tr) // batch):
      idx = perm[i * batch:(i + 1) * batch]
      params, stats, opt = step(params, stats, opt, x_tr[idx], y_tr[idx])
      steps += 1
  logits = jax.jit(lambda p, s, x: model.apply({"params": p, **s}, x,
                                               train=False))(params, stats, x_te)
  acc = float(np.mean(np.asarray(logits.argmax(-1)) == y_te))
  return {"model": name, "epochs": epochs, "steps": steps, "batch": batch,
          "lr": lr, "optimizer": "adam", "test_accuracy": acc,
          "n_train": len(x_tr), "n_test": len(x_te),
          "init_s": init_s, "total_s": time.perf_counter() - start,
          "params": models.param_count(params)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--wrn28-repeats", type=int, default=3,
                      help="repeats for WRN-28-10 (tens of seconds a step on CPU)")
  parser.add_argument("--skip-wrn28", action="store_true")
  parser.add_argument("--out", default=None, help="result file name")
  args = parser.parse_args(argv)

  result = {"machine": machine(), "loadavg_start": os.getloadavg()[0],
            "params": [], "timing": [], "digits": []}

  print(f"{'model':22s} {'classes':>7s} {'params':>12s} {'reference':>12s} "
        f"{'published':>9s} {'blocks':>6s}")
  for name, num_classes, shape in COUNT_SETTINGS:
    row = count_params(name, num_classes, shape)
    result["params"].append(row)
    ref = f"{row['reference']:,d}" if "reference" in row else "-"
    print(f"{name:22s} {num_classes:7d} {row['params']:12,d} {ref:>12s} "
          f"{row.get('published', ''):>9s} {row['blocks']:6d}")

  print(f"\n{'model':22s} {'batch':>5s} {'fwd+bwd ms':>11s} {'compile s':>9s} "
        f"{'GFLOP/s':>8s}")
  for name, batch in TIMING_SETTINGS:
    if name == "wrn28_10" and args.skip_wrn28:
      continue
    repeats = args.wrn28_repeats if name == "wrn28_10" else args.repeats
    row = time_fwd_bwd(name, batch, repeats)
    result["timing"].append(row)
    print(f"{name:22s} {batch:5d} {row['ms_median']:11.1f} "
          f"{row['compile_s']:9.1f} {row['gflops_per_s']:8.1f}", flush=True)

  print(f"\n{'digits model':22s} {'epochs':>6s} {'test acc':>8s} {'total s':>8s}")
  for name, epochs in [("digits_cnn", 6), ("digits_mlp", 30)]:
    row = digits_run(name, epochs)
    result["digits"].append(row)
    print(f"{name:22s} {epochs:6d} {row['test_accuracy']:8.4f} "
          f"{row['total_s']:8.1f}", flush=True)

  result["loadavg_end"] = os.getloadavg()[0]
  os.makedirs(RESULTS_DIR, exist_ok=True)
  path = os.path.join(RESULTS_DIR, args.out or f"model_timing_{host_kind()}.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=2, sort_keys=True)
  print(f"\nwrote {path}")


if __name__ == "__main__":
  main()
