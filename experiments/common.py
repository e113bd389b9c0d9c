"""Shared helpers for experiment scripts: machine description, result files, timing,
quiet logs."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import statistics
import sys
import time

import jax

from famus_jax.training import build as build_lib
from famus_jax.training import plots
from famus_jax.training.signals import Preempted

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(os.path.dirname(__file__), 'results')
# Loggers a study silences: every run's progress and checkpoint messages.
RUN_LOGGERS = ('absl', 'jax', 'famus_jax', 'orbax')


@contextlib.contextmanager
def quiet_logs(names=RUN_LOGGERS, level: int = logging.ERROR):
  """Inside the block, the loggers `names` report from `level` only; their
  levels are restored afterwards (the caller's process is left as found)."""
  loggers = [logging.getLogger(name) for name in names]
  before = [logger.level for logger in loggers]
  for logger in loggers:
    logger.setLevel(level)
  try:
    yield
  finally:
    for logger, old in zip(loggers, before):
      logger.setLevel(old)


def run_study(main) -> None:
  """Runs a study's main; SIGTERM / SIGINT (the run's checkpoint saved) ends in one line."""
  try:
    main()
  except Preempted as e:
    sys.exit(f'{e}. Finished rows are kept in the results file; the same command continues.')


def save_figure(fig, path: str, title: str, machine: dict | None = None,
                rect=(0, 0, 1, 1)) -> None:
  """A study's figure: its title (with the machine when given), laid out, saved, closed."""
  if machine:
    title += f" ({machine['device_kind']}, {machine['cpu_count']} cores)"
  fig.suptitle(title)
  plots.save(fig, path, dpi=110, rect=rect)


def machine() -> dict:
  """What the numbers were measured on."""
  device = jax.devices()[0]
  return {
      'platform': device.platform,
      'device_kind': device.device_kind,
      'device_count': jax.device_count(),
      'cpu_count': os.cpu_count(),
      'processor': platform.processor() or platform.machine(),
      'hostname': platform.node(),
      'jax_version': jax.__version__,
      'python': platform.python_version(),
  }


def host_kind() -> str:
  """Short tag for result file names: 'cpu', or the accelerator kind ('h100', ...)."""
  device = jax.devices()[0]
  if device.platform == 'cpu':
    return 'cpu'
  return device.device_kind.lower().replace('nvidia ', '').replace(' ', '-')


def write_json(name: str, payload: dict, results_dir: str = RESULTS_DIR) -> str:
  os.makedirs(results_dir, exist_ok=True)
  path = os.path.join(results_dir, name)
  with open(path, 'w') as f:
    json.dump(payload, f, indent=2, sort_keys=True)
  return path


def time_call(fn, carry, *args, warmup: int = 2, repeats: int = 5):
  """Median wall time (ms) of `carry = fn(carry, *args)[0]`, after warm-up.

  The first output is fed back (so donated buffers stay valid) and every call
  is synchronised with `block_until_ready`.
  """
  for _ in range(warmup):
    carry = jax.block_until_ready(fn(carry, *args))[0]
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    carry = jax.block_until_ready(fn(carry, *args))[0]
    times.append((time.perf_counter() - start) * 1e3)
  return statistics.median(times), carry


def compiled_flops(jitted, *args) -> float:
  """FLOPs of the compiled program from XLA's cost analysis (NaN if unknown)."""
  try:
    cost = jitted.lower(*args).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0]
    return float(cost.get('flops', float('nan')))
  except Exception:  # pylint: disable=broad-except
    return float('nan')


def load_runs(path: str) -> list[dict]:
  """The `runs` of an existing results JSON (none if the file is absent)."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return json.load(f)['runs']


def replace_run(runs: list[dict], row: dict, keys=('method', 'setting', 'seed')) -> list[dict]:
  """`runs` with `row` in place of any run that has the same `keys`."""
  key = tuple(row[k] for k in keys)
  return [r for r in runs if tuple(r[k] for k in keys) != key] + [row]


def step_parts(model, images, num_classes: int, **meta) -> build_lib.Parts:
  """The builder's parts of a meta step outside a run, for `model` on images
  shaped like `images`: SGD at a constant lr 0.05 (momentum 0.9, decay 5e-4),
  the meta model's Adam (lr 1e-3, decay 1e-4) and `meta` (config.meta fields
  over `base_config()`'s)."""
  return build_lib.build_from_fields({'optim.lr': 0.05}, meta=meta, num_classes=num_classes,
                                     image_shape=images.shape[1:], model=model)
