"""The run harness: everything a training loop needs besides its own plan.

    with Run(config, workdir) as run:
      ...                      # load data, build steps, loop
    run.write_summary(summary)

`Run` owns the workdir (`config.json` and the resume guard: the same workdir
must hold the same experiment), the device mesh, the `Checkpointer`, the
metric writers and progress bar (process 0 only), the SIGTERM/SIGINT
`StopFlag`, the NaN/Inf check of parameters and losses, the compiled-once
check of a dict of jitted programs, the evaluation of any `eval_fn` over
padded batches of a split, cleanup on exit (whatever happened) and the
summary files. The standard loop (`famus_jax.train`) and Algorithm 2
(`famus_jax.alg2.cotrain`) are orchestrators on top of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from typing import Any, Callable, Iterable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

from famus_jax import data as data_lib
from famus_jax.training import checkpoint as checkpoint_lib
from famus_jax.training import config as config_lib
from famus_jax.training import metrics as metrics_lib
from famus_jax.training import sharding as sharding_lib
from famus_jax.training import signals
from famus_jax.training.config import ConfigError


class NonFiniteLossError(RuntimeError):
  """The loss (or the parameters) became NaN/Inf; the run stopped."""

  def __init__(self, step: int, checkpoint_step: Optional[int], directory: str):
    self.step, self.checkpoint_step = step, checkpoint_step
    kept = (f'the last good checkpoint is step {checkpoint_step} in {directory}'
            if checkpoint_step is not None else 'no checkpoint was saved before it')
    super().__init__(f'non-finite loss or parameters at step {step}; stopped, {kept}')


class Preempted(RuntimeError):
  """SIGTERM / SIGINT: a checkpoint was saved; re-run the command to continue."""

  def __init__(self, step: int, signum: int):
    self.step, self.signum = step, signum
    super().__init__(f'stopped by signal {signal.Signals(signum).name} at step {step}; '
                     'checkpoint saved, re-run the same command to continue')


class RecompilationError(RuntimeError):
  """A jitted function of the loop compiled more than once."""


# ---------------------------------------------------------------------------
# Checks on compiled programs and metrics.


def compile_count(fn: Callable) -> Optional[int]:
  """How many programs the jitted `fn` holds (None: not a jitted function)."""
  size = getattr(fn, '_cache_size', None)  # jax's per-function compile cache
  return None if size is None else int(size())


def compiled_counts(programs: dict[str, Callable]) -> dict[str, int]:
  counts = {name: compile_count(fn) for name, fn in programs.items()}
  return {name: n for name, n in counts.items() if n is not None}


def check_compiled_once(programs: dict[str, Callable]) -> dict[str, int]:
  """Compile counts of `programs`; `RecompilationError` if any compiled twice."""
  counts = compiled_counts(programs)
  bad = {k: v for k, v in counts.items() if v > 1}
  if bad:
    raise RecompilationError(
        f'train-loop functions compiled more than once: {bad} (an input shape, '
        'dtype or sharding changed between iterations)')
  return counts


first_non_finite = metrics_lib.first_non_finite


# ---------------------------------------------------------------------------
# Padded batches of a whole split.


def padded_batches(source, batch_size: int, data_config) -> Iterator[tuple[dict, int]]:
  """(batch, n) over `source` in order, each padded to `batch_size` rows.

  The batch holds 'image', 'label', 'index' and 'mask' (True on the n real
  rows); one shape for the whole pass, so the consumer compiles once.
  """
  loader = data_lib.make_loader(source, batch_size=batch_size, seed=0, shuffle=False,
                                num_epochs=1, drop_remainder=False,
                                num_workers=int(data_config.num_workers),
                                prefetch=int(data_config.prefetch))
  try:
    for b in loader:
      n = b['label'].shape[0]
      host = {'image': b['image'], 'label': b['label'], 'index': b['index'],
              'mask': np.ones((n,), np.bool_)}
      if n < batch_size:
        host = {k: np.concatenate([v, np.zeros((batch_size - n,) + v.shape[1:], v.dtype)])
                for k, v in host.items()}
      yield host, n
  finally:
    loader.close()


def means(totals: dict[str, float]) -> dict[str, float]:
  """Sums over a split divided by its example count ('count')."""
  count = max(float(totals['count']), 1.0)
  return {k: float(v) / count for k, v in totals.items() if k != 'count'}


# ---------------------------------------------------------------------------
# The harness.


class Run:
  """Context manager owning a run's workdir, mesh, checkpoints and writers.

  Attributes (inside the `with`):
    workdir: absolute path.
    is_main: this process writes the files (process 0).
    mesh: 1-D data-parallel mesh over `config.train.num_devices` devices.
    ckpt: the `Checkpointer` of `workdir/checkpoints`.
    stop: the `StopFlag` (`stop.signum` set by SIGTERM/SIGINT).
  """

  def __init__(self, config, workdir: str, *, resumable: tuple[str, ...] = ()):
    self.config = config
    self.workdir = os.path.abspath(workdir)
    self.is_main = jax.process_index() == 0
    self.resumable = resumable  # config prefixes that may change on resume
    self.start_time = time.perf_counter()
    self.mesh = self.ckpt = self.stop = None
    self._stack = contextlib.ExitStack()

  def __enter__(self) -> 'Run':
    os.makedirs(self.workdir, exist_ok=True)
    self.check_resume()
    try:
      self.mesh = sharding_lib.make_mesh(int(self.config.train.num_devices))
    except ValueError as e:
      raise ConfigError(str(e)) from None
    self.ckpt = self.closing(checkpoint_lib.Checkpointer(
        os.path.join(self.workdir, 'checkpoints'),
        keep=int(self.config.train.keep_checkpoints)))
    self.stop = self._stack.enter_context(signals.StopFlag())
    return self

  def __exit__(self, exc_type, exc, tb):
    if isinstance(exc, NonFiniteLossError):
      self.write_failure('non_finite', exc.step, str(exc))
    self._stack.close()
    return False

  # -- workdir -------------------------------------------------------------------

  @property
  def config_path(self) -> str:
    return os.path.join(self.workdir, 'config.json')

  def check_resume(self) -> None:
    """`ConfigError` when the workdir holds a run of a different config."""
    if not os.path.exists(self.config_path):
      return
    with open(self.config_path) as f:
      saved = json.load(f)
    current = json.loads(json.dumps(metrics_lib.jsonable(
        config_lib.config_to_dict(self.config))))
    conflicts = [k for k in config_lib.resume_conflicts(saved, current)
                 if not k.startswith(self.resumable)]
    if conflicts:
      raise ConfigError(
          f'--workdir={self.workdir} holds a run with a different config (config.'
          f'{conflicts[0]}{" and others" if len(conflicts) > 1 else ""}); use a new '
          'workdir, or the same config to resume')

  def write_config(self) -> None:
    if self.is_main:
      metrics_lib.write_json(self.config_path, config_lib.config_to_dict(self.config))

  def closing(self, obj):
    """Registers `obj.close()` for the end of the run; returns `obj`."""
    if obj is not None:
      self._stack.callback(obj.close)
    return obj

  def writer(self, factory: Callable[[], Any]):
    """`factory()` on process 0 (closed at the end), None on the others."""
    return self.closing(factory()) if self.is_main else None

  def progress(self, total: int, initial: int, desc: str):
    """A tqdm bar on process 0 with `train.progress`, else None."""
    if not (self.is_main and self.config.train.progress):
      return None
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    return self.closing(tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True))

  def load_dataset(self):
    """The data splits of `config.data` (noise reports written by process 0)."""
    return data_lib.load_dataset(self.config.data, int(self.config.seed),
                                 self.workdir if self.is_main else None)

  # -- devices -------------------------------------------------------------------

  def device_batch(self, host: dict, keys: Iterable[str]) -> dict:
    """`host[keys]` as global arrays sharded along the batch axis of the mesh."""
    return sharding_lib.global_batch({k: host[k] for k in keys}, self.mesh)

  def replicate(self, tree):
    """`tree` replicated on every device of the mesh."""
    return sharding_lib.replicate(tree, self.mesh)

  def device_summary(self) -> dict:
    devs = list(self.mesh.devices.flat)
    return {'num_devices': len(devs), 'platform': devs[0].platform,
            'device_kind': devs[0].device_kind, 'process_count': jax.process_count()}

  # -- checks ----------------------------------------------------------------------

  @property
  def stop_requested(self) -> Optional[int]:
    """The signal number of a pending SIGTERM/SIGINT, else None."""
    return self.stop.signum

  def non_finite(self, step: int) -> NonFiniteLossError:
    """The error for a NaN/Inf at `step`, naming the last good checkpoint."""
    return NonFiniteLossError(step, self.ckpt.latest_step(), self.ckpt.directory)

  def check_finite(self, rows: list[dict], first_step: int,
                   keys: Iterable[str] = ('loss',)) -> None:
    """Raises `NonFiniteLossError` at the first non-finite row (row i is step
    `first_step + i`)."""
    bad = first_non_finite(rows, keys)
    if bad is not None:
      raise self.non_finite(first_step + bad)

  check_compiled_once = staticmethod(check_compiled_once)

  # -- evaluation --------------------------------------------------------------

  def evaluate(self, eval_fn: Callable, args: tuple, source, batch_size: int
               ) -> dict[str, float]:
    """Sums of `eval_fn(*args, batch)` over `source` in padded batches.

    `eval_fn` takes a batch {'image', 'label', 'mask'} sharded over the mesh
    and returns sums that ignore the padding rows (with 'count' = Σ mask).
    """
    totals = None
    for host, _ in padded_batches(source, batch_size, self.config.data):
      out = eval_fn(*args, self.device_batch(host, ('image', 'label', 'mask')))
      totals = out if totals is None else jax.tree_util.tree_map(jnp.add, totals, out)
    return {k: float(v) for k, v in jax.device_get(totals).items()}

  # -- summary -------------------------------------------------------------------

  def common_summary(self, data_info: dict) -> dict:
    """The summary fields every loop reports: devices, data, wall time."""
    return {'devices': self.device_summary(),
            'wall_time_s': time.perf_counter() - self.start_time,
            'data': {k: data_info.get(k) for k in (
                'name', 'num_train', 'num_meta', 'num_test', 'realised_noise_rate',
                'noise_type') if k in data_info}}

  def write_summary(self, summary: dict) -> None:
    if self.is_main:
      metrics_lib.write_json(os.path.join(self.workdir, 'summary.json'), summary)

  def write_failure(self, status: str, step: int, message: str) -> None:
    """`summary.json` of a run that stopped (non-finite loss)."""
    self.write_summary({'status': status, 'step': step, 'message': message})
