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
import logging
import math
import os
import shutil
import signal
import tempfile
import time
from typing import Any, Callable, Iterable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

from famus_jax import data as data_lib
from famus_jax.training import checkpoint as checkpoint_lib
from famus_jax.training import config as config_lib
from famus_jax.training import lock as lock_lib
from famus_jax.training import logfile
from famus_jax.training import metrics as metrics_lib
from famus_jax.training import sharding as sharding_lib
from famus_jax.training import signals
from famus_jax.training.config import ConfigError
from famus_jax.training.writes import writing

log = logging.getLogger('famus_jax.run')


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


class FiniteWatch:
  """The per-iteration NaN/Inf check, one iteration behind the device.

  `add(step, flag)` reads the on-device flag of the *previous* iteration (done
  or nearly: the new one depends on it), so the host never waits for the
  iteration it just launched. A run therefore stops at most one iteration
  after the first non-finite one, and names that one.
  """

  def __init__(self):
    self._pending: Optional[tuple[int, Any]] = None

  def add(self, step: int, flag) -> Optional[int]:
    """Queues `flag` of `step`; returns the previous step if it was non-finite."""
    previous, self._pending = self._pending, (step, flag)
    return self._check(previous)

  def flush(self) -> Optional[int]:
    """Checks the last queued step (before a save, an evaluation, the end)."""
    previous, self._pending = self._pending, None
    return self._check(previous)

  @staticmethod
  def _check(entry) -> Optional[int]:
    if entry is not None and not bool(jax.device_get(entry[1])):
      return entry[0]
    return None


class ChanceWatch:
  """Warns once when a whole evaluation period trained at chance level.

  Chance level: the loss the run learns from (the validation loss of the meta
  steps where a row has one, else the training loss) never went below
  `fraction` × log C in the period: a learning rate far too high or too low.
  """

  def __init__(self, num_classes: int, fraction: float = 0.98):
    self.level = math.log(num_classes)
    self.fraction = fraction
    self.losses: list[float] = []
    self.first_step: Optional[int] = None
    self.warned = False

  def add(self, row: dict) -> None:
    loss = row.get('val_loss', row.get('loss'))
    if loss is not None:
      self.losses.append(float(loss))
      self.first_step = row['step'] if self.first_step is None else self.first_step

  def end_period(self, step: int) -> bool:
    """At an evaluation: warns (once per run) if the period was at chance."""
    losses, first, self.losses, self.first_step = self.losses, self.first_step, [], None
    at_chance = bool(losses) and min(losses) >= self.fraction * self.level
    if at_chance and not self.warned:
      self.warned = True
      log.warning('training stayed at chance level up to step %d: since step %d the '
                  'loss never went below %.3f (%d %% of log %d = %.3f, the loss of a '
                  'uniform prediction); check optim.lr (far too high or too low)', step,
                  first, self.fraction * self.level, round(100 * self.fraction),
                  round(math.exp(self.level)), self.level)
    return at_chance


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
    self._staging: Optional[str] = None
    self._finite_watch = FiniteWatch()
    self._stack = contextlib.ExitStack()

  def __enter__(self) -> 'Run':
    try:
      return self._enter()
    except BaseException:
      self._stack.close()  # the lock, the staged data files
      raise

  def _enter(self) -> 'Run':
    if self.is_main:  # one run per workdir, released when the run ends
      self._stack.enter_context(lock_lib.WorkdirLock(self.workdir))
    else:
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
    """`config.json`, the data files staged by `load_dataset` and the log file
    (`log.txt`): call it once the run's checks have passed (a failed start
    leaves the workdir as it was)."""
    if not self.is_main:
      return
    if self._staging is not None:
      for name in sorted(os.listdir(self._staging)):
        with writing(os.path.join(self.workdir, name)):
          shutil.move(os.path.join(self._staging, name), os.path.join(self.workdir, name))
    metrics_lib.write_json(self.config_path, config_lib.config_to_dict(self.config))
    self.closing(logfile.LogFile(os.path.join(self.workdir, logfile.LOG_NAME)))

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
    """The data splits of `config.data`. Process 0's noise files
    (`noisy_labels.npz`, `noise_report.json`) wait in a staging directory
    until `write_config`."""
    if self.is_main and self._staging is None:
      self._staging = self._stack.enter_context(
          tempfile.TemporaryDirectory(prefix='famus_jax_staging_'))
    try:
      splits = data_lib.load_dataset(self.config.data, int(self.config.seed),
                                     self._staging)
    except data_lib.DataConfigError as e:  # a value the data do not allow
      raise ConfigError(str(e)) from None
    if splits.info.get('noisy_labels_path'):
      splits.info['noisy_labels_path'] = os.path.join(
          self.workdir, os.path.basename(splits.info['noisy_labels_path']))
    return splits

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

  def check_iteration(self, step: int, finite_flag) -> None:
    """The per-iteration NaN/Inf check: `NonFiniteLossError` naming the first
    non-finite iteration, at most one iteration after it (`FiniteWatch`)."""
    bad = self._finite_watch.add(step, finite_flag)
    if bad is not None:
      raise self.non_finite(bad)

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
    """`summary.json` of a run that stopped (non-finite loss). A completed
    run's summary is kept: its checkpoints, not the run, went bad."""
    path = os.path.join(self.workdir, 'summary.json')
    if os.path.exists(path):
      with open(path) as f:
        if json.load(f).get('status') == 'completed':
          return
    self.write_summary({'status': status, 'step': step, 'message': message})
