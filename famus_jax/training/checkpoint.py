"""Checkpoints with orbax-checkpoint: train state + data iterator states,
checked on restore.

A checkpoint `workdir/checkpoints/<step>/` holds the `TrainState` (`state/`,
arrays restored with the shardings of the state they are restored into), the
JSON states of the data loaders (`data/`) and a SHA-256 per state leaf
(`checksum/`), all written by orbax into a temporary directory renamed when
complete, so a run killed mid-save leaves no half-written step directory
(temporary leftovers are removed when the manager is next opened). Saves are
synchronous: when `save` returns the checkpoint is on disk. A save the file
system refuses (a full disk, a read-only mount) raises `WriteError` (one line:
the path, the free space, the newest complete checkpoint) and removes its
partial files; orbax's own reports of it, tracebacks from its worker threads,
go to the run's log file at DEBUG level instead of the terminal.

`restore()` verifies what it reads: orbax's own errors (truncated or unreadable
files) and a checksum mismatch (flipped bytes that still decode) mark a
checkpoint corrupt; a checkpoint without checksums must at least be finite.
The newest intact checkpoint is used, with a one-line warning naming each
corrupt newer one, which is moved to `workdir/checkpoints_corrupt/<step>` so
that the run can save that step again. No intact checkpoint: `CheckpointError`.
"""

from __future__ import annotations

import gc
import glob
import hashlib
import logging
import os
import shutil
import sys
import threading
import time
import traceback
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from famus_jax.training import logfile
from famus_jax.training import writes

log = logging.getLogger('famus_jax.checkpoint')
CORRUPT_DIR = 'checkpoints_corrupt'
_ORBAX_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(ocp.__file__)))


class CheckpointError(RuntimeError):
  """No checkpoint in the directory could be restored intact (one line)."""


def leaf_checksums(state: Any) -> Optional[dict[str, str]]:
  """SHA-256 of each array leaf (dtype, shape and bytes), keyed by tree path.

  None when a leaf is not fully addressable from this process (sharded across
  hosts): then only orbax's own checks apply.
  """
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  if any(isinstance(x, jax.Array) and not x.is_fully_addressable for _, x in leaves):
    return None
  out = {}
  for path, x in leaves:
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    a = np.ascontiguousarray(jax.device_get(x))
    h = hashlib.sha256(f'{a.dtype.str}{a.shape}'.encode())
    h.update(a.tobytes())
    out[jax.tree_util.keystr(path)] = h.hexdigest()
  return out


def _non_finite_leaf(state: Any) -> Optional[str]:
  for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
    if (hasattr(x, 'dtype') and jax.dtypes.issubdtype(x.dtype, np.inexact)
        and not np.all(np.isfinite(np.asarray(jax.device_get(x))))):
      return jax.tree_util.keystr(path)
  return None


def _one_line(e: BaseException) -> str:
  """The root cause of an exception chain, on one line of at most 160 characters."""
  while e.__cause__ is not None:
    e = e.__cause__
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  text = lines[0] if lines else ''
  text = text if len(text) <= 160 else text[:157] + '...'
  return f'{type(e).__name__}: {text}' if text else type(e).__name__


def _is_orbax_leftover(unraisable) -> bool:
  """An orphaned coroutine or callback of a failed orbax read or write (it is
  reported after the operation already failed, as tracebacks on stderr)."""
  exc, obj = unraisable.exc_value, unraisable.object
  return (isinstance(exc, RuntimeError) and 'Event loop is closed' in str(exc)
          or isinstance(exc, GeneratorExit)
          or 'orbax' in getattr(getattr(obj, 'cr_code', None), 'co_filename', ''))


def _drop_orbax_leftovers() -> None:
  """Silences what a failed read or write leaves behind; other unraisables
  still print."""
  previous = sys.unraisablehook
  if getattr(previous, 'drops_orbax_leftovers', False):
    return

  def hook(unraisable):
    if not _is_orbax_leftover(unraisable):
      previous(unraisable)

  hook.drops_orbax_leftovers = True
  sys.unraisablehook = hook
  gc.collect()


def _from_orbax(record: logging.LogRecord) -> bool:
  """Logged by orbax, or about one of its tasks or futures (asyncio's "Task
  exception was never retrieved" of a failed write names orbax's code or its
  temporary directory)."""
  if record.pathname.startswith(_ORBAX_ROOT):
    return True
  tb = record.exc_info[2] if record.exc_info else None
  if tb is not None and any(f.filename.startswith(_ORBAX_ROOT)
                            for f in traceback.extract_tb(tb)):
    return True
  return record.name == 'asyncio' and 'orbax' in record.getMessage()


def _orbax_to_log_file(record: logging.LogRecord) -> bool:
  """Filter of the absl and asyncio loggers: orbax's warnings and errors (a
  failed write is reported from each worker thread and task, with tracebacks)
  go to the log file only; `save` reports the failure once, as one line."""
  if record.levelno >= logging.WARNING and _from_orbax(record):
    logfile.to_file_only(record)
    return False
  return True


def _keep_orbax_off_the_terminal() -> None:
  for name in ('absl', 'asyncio'):  # orbax logs through absl
    logger = logging.getLogger(name)
    if _orbax_to_log_file not in logger.filters:
      logger.addFilter(_orbax_to_log_file)
  _drop_orbax_leftovers()


class Checkpointer:
  """Keeps the last `keep` checkpoints under `directory` (made by the first save)."""

  def __init__(self, directory: str, keep: int = 3):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=int(keep), create=False, cleanup_tmp_directories=True,
            enable_async_checkpointing=False))
    self._failed: list[int] = []
    _keep_orbax_off_the_terminal()

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict) -> None:
    """Saves (overwrites nothing: a step already saved is left as it is)."""
    if step in self._manager.all_steps():
      return
    items = {'state': ocp.args.StandardSave(state),
             'data': ocp.args.JsonSave(data_state)}
    sums = leaf_checksums(state)
    if sums is not None:
      items['checksum'] = ocp.args.JsonSave(sums)
    try:
      os.makedirs(self.directory, exist_ok=True)  # not before: a failed start writes nothing
      self._manager.save(int(step), args=ocp.args.Composite(**items), force=True)
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except  (orbax: OSError or ValueError)
      if not isinstance(e, OSError) and writes.error_number(e) is None:
        raise  # not the file system's doing
      logfile.FILE_ONLY.debug('saving checkpoint step %d failed', step, exc_info=True)
      self._failed.append(step)
      self._remove_partial()
      raise writes.WriteError(os.path.join(self.directory, str(step)), e,
                              checkpoints=self.directory) from None

  def restore(self, like_state: Any, step: Optional[int] = None
              ) -> tuple[Optional[Any], Optional[dict], Optional[int]]:
    """(state, data_state, step) of the newest intact checkpoint, or Nones.

    With `step`, that checkpoint or `CheckpointError`. `like_state` (concrete
    or abstract) gives the tree structure, dtypes and shardings of the arrays.
    Corrupt checkpoints newer than the one restored are moved aside with a
    one-line warning each.
    """
    steps = [step] if step is not None else self.all_steps()[::-1]
    if not steps:
      return None, None, None
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like_state)
    bad = []
    for s in steps:
      try:
        state, data = self._restore_checked(abstract, s)
      except CheckpointError as e:
        bad.append((s, str(e)))
        continue
      for b, why in bad:
        moved = self._move_aside(b)
        log.warning('checkpoint step %d is corrupt (%s); moved to %s, resuming from '
                    'step %d', b, why, moved, s)
      return state, data, s
    s, why = bad[0]
    more = f' (and {len(bad) - 1} older)' if len(bad) > 1 else ''
    raise CheckpointError(
        f'no intact checkpoint in {self.directory}: step {s} is corrupt ({why}){more}; '
        'move that directory aside to start the run over')

  def _restore_checked(self, abstract: Any, step: int) -> tuple[Any, dict]:
    """One checkpoint, verified; `CheckpointError` (one line) if corrupt."""
    step_dir = os.path.join(self.directory, str(step))
    items = {'state': ocp.args.StandardRestore(abstract), 'data': ocp.args.JsonRestore()}
    has_sums = os.path.isdir(os.path.join(step_dir, 'checksum'))
    if has_sums:
      items['checksum'] = ocp.args.JsonRestore()
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except  (orbax raises many kinds)
      _drop_orbax_leftovers()
      raise CheckpointError(f'orbax could not read it: {_one_line(e)}') from None
    if has_sums:
      sums = leaf_checksums(restored.state)
      if sums is not None and sums != restored.checksum:
        wrong = sorted(k for k in sums if sums[k] != restored.checksum.get(k))
        raise CheckpointError(f'checksum mismatch in state{wrong[0] if wrong else ""}')
    else:
      leaf = _non_finite_leaf(restored.state)
      if leaf is not None:
        raise CheckpointError(f'non-finite values in state{leaf}')
    return restored.state, restored.data

  def _move_aside(self, step: int) -> str:
    src = os.path.join(self.directory, str(step))
    dst_root = os.path.join(os.path.dirname(self.directory), CORRUPT_DIR)
    os.makedirs(dst_root, exist_ok=True)
    dst = os.path.join(dst_root, str(step))
    if os.path.exists(dst):
      shutil.rmtree(dst)
    os.replace(src, dst)
    self._manager.reload()
    return dst

  def _remove_partial(self) -> None:
    """Removes the temporary directories of failed saves (space for the next
    run), once orbax's worker threads of them have ended."""
    deadline = time.monotonic() + 60
    for thread in threading.enumerate():
      if type(thread).__module__.startswith('orbax') and thread is not threading.current_thread():
        try:
          thread.join(max(deadline - time.monotonic(), 0))
        except Exception:  # pylint: disable=broad-except  (orbax's join re-raises its error)
          pass
    for step in self._failed:
      for partial in glob.glob(os.path.join(self.directory, f'{step}.orbax-checkpoint-tmp*')):
        shutil.rmtree(partial, ignore_errors=True)

  def close(self) -> None:
    self._manager.close()
    self._remove_partial()
