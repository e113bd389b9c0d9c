"""Checkpoints with orbax-checkpoint: train state + data iterator states,
checked on restore.

A checkpoint `workdir/checkpoints/<step>/` holds the `TrainState` (`state/`,
arrays restored with the shardings of the state they are restored into), the
JSON states of the data loaders (`data/`), optional further pytrees of arrays
saved beside the state (`extra`: e.g. the per-example record `label_record/`)
and a SHA-256 per array leaf of all of them (`checksum/`), all written by orbax
into a temporary directory renamed when
complete, so a run killed mid-save leaves no half-written step directory
(temporary leftovers are removed when the manager is next opened). Saves are
synchronous: when `save` returns the checkpoint is on disk. A save the file
system refuses (a full disk, a read-only mount) raises `WriteError` (one line:
the path, the free space, the newest complete checkpoint) and removes its
partial files; orbax's own reports of it, tracebacks from its worker threads,
go to the run's log file at DEBUG level instead of the terminal.

`restore()` verifies what it reads: orbax's own errors (truncated or unreadable
files) and a checksum mismatch (flipped bytes that still decode, a missing extra
item) mark a checkpoint corrupt; a checkpoint without checksums must at least be finite.
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

from etils import epath
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


def item_checksums(state: Any, extra: dict[str, Any]) -> Optional[dict[str, str]]:
  """`leaf_checksums` of the state (keyed by tree path) and of each extra item
  (keyed by its name and tree path, e.g. "label_record['trust']")."""
  sums = leaf_checksums(state)
  for name, tree in extra.items():
    more = leaf_checksums(tree)
    if sums is None or more is None:
      return None
    sums.update({f'{name}{k}': v for k, v in more.items()})
  return sums


def _non_finite_leaf(state: Any) -> Optional[str]:
  for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
    if (hasattr(x, 'dtype') and jax.dtypes.issubdtype(x.dtype, np.inexact)
        and not np.all(np.isfinite(np.asarray(jax.device_get(x))))):
      return jax.tree_util.keystr(path)
  return None


def _item_of(key: str) -> str:
  """The item a checksum key belongs to: 'state' (keys are tree paths) or the
  name an extra item's keys start with."""
  return 'state' if key[:1] in ('', '.', '[') else key.split('[', 1)[0]


def _check_sums(trees: dict[str, Any], stored: dict[str, str]) -> None:
  """`CheckpointError` unless the restored `trees` ('state' and extras) have the
  checksums stored for them."""
  sums = item_checksums(trees.get('state'),
                        {k: v for k, v in trees.items() if k != 'state'})
  if sums is None:
    return
  stored = {k: v for k, v in stored.items() if _item_of(k) in trees}
  if sums != stored:
    wrong = sorted(k for k in set(sums) | set(stored) if sums.get(k) != stored.get(k))
    key = wrong[0]
    raise CheckpointError(
        f'checksum mismatch in {"state" if _item_of(key) == "state" else ""}{key}')


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

  def __init__(self, directory: str, keep: int = 3, *, read_only: bool = False):
    """`read_only`: for readers beside a run that may be saving (no clean-up of
    its temporary directories; `save` refuses)."""
    self.directory = os.path.abspath(directory)
    self.read_only = bool(read_only)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=int(keep), create=False, cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=False))
    self._failed: list[int] = []
    _keep_orbax_off_the_terminal()

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict,
           extra: Optional[dict[str, Any]] = None) -> None:
    """Saves (overwrites nothing: a step already saved is left as it is).

    `extra`: item name -> pytree of arrays saved beside the state (names other
    than 'state', 'data' and 'checksum'), covered by the checksums.
    """
    if self.read_only:
      raise CheckpointError(f'{self.directory} was opened read-only')
    if step in self._manager.all_steps():
      return
    extra = dict(extra or {})
    items = {'state': ocp.args.StandardSave(state),
             'data': ocp.args.JsonSave(data_state),
             **{name: ocp.args.StandardSave(tree) for name, tree in extra.items()}}
    sums = item_checksums(state, extra)
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
    state, _, data, step = self.restore_with_extra(like_state, {}, step)
    return state, data, step

  def restore_with_extra(self, like_state: Any, like_extra: dict[str, Any],
                         step: Optional[int] = None) -> tuple:
    """(state, extra, data_state, step) as `restore`, with the `extra` items
    named by `like_extra` (name -> concrete or abstract pytree); an item the
    checkpoint does not hold (saved without it) is None in `extra`. With
    `like_state=None` only the extras are read (and checked), state is None."""
    steps = [step] if step is not None else self.all_steps()[::-1]
    if not steps:
      return None, None, None, None
    like = dict(like_extra) if like_state is None else {'state': like_state, **like_extra}
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
    bad = []
    for s in steps:
      try:
        trees, data = self._restore_checked(abstract, s)
      except CheckpointError as e:
        bad.append((s, str(e)))
        continue
      for b, why in bad:
        moved = self._move_aside(b)
        log.warning('checkpoint step %d is corrupt (%s); moved to %s, resuming from '
                    'step %d', b, why, moved, s)
      state = trees.pop('state', None)
      return state, {name: trees.get(name) for name in like_extra}, data, s
    s, why = bad[0]
    more = f' (and {len(bad) - 1} older)' if len(bad) > 1 else ''
    raise CheckpointError(
        f'no intact checkpoint in {self.directory}: step {s} is corrupt ({why}){more}; '
        'move that directory aside to start the run over')

  def _restore_checked(self, abstract: dict[str, Any], step: int
                       ) -> tuple[dict[str, Any], dict]:
    """One checkpoint's items named by `abstract` ('state' and extras; an extra
    the checkpoint lacks is left out), verified; `CheckpointError` (one line)
    if corrupt."""
    step_dir = os.path.join(self.directory, str(step))
    present = {name: tree for name, tree in abstract.items()
               if name == 'state' or os.path.isdir(os.path.join(step_dir, name))}
    items = {name: ocp.args.StandardRestore(tree) for name, tree in present.items()}
    items['data'] = ocp.args.JsonRestore()
    has_sums = os.path.isdir(os.path.join(step_dir, 'checksum'))
    if has_sums:
      items['checksum'] = ocp.args.JsonRestore()
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except  (orbax raises many kinds)
      _drop_orbax_leftovers()
      raise CheckpointError(f'orbax could not read it: {_one_line(e)}') from None
    trees = {name: restored[name] for name in present}
    if has_sums:
      for name in sorted(set(abstract) - set(present)):
        if any(_item_of(k) == name for k in restored.checksum):
          raise CheckpointError(f'{name} is missing')
      _check_sums(trees, restored.checksum)
    else:
      for name, tree in trees.items():
        leaf = _non_finite_leaf(tree)
        if leaf is not None:
          raise CheckpointError(f'non-finite values in {name}{leaf}')
    return trees, restored.data

  def read_extra(self, step: int, like_extra: dict[str, Any]) -> dict[str, Any]:
    """Only the `extra` items of checkpoint `step`, verified (an item it does not
    hold is None); `CheckpointError` giving the reason when it is corrupt.
    Nothing is moved: for readers beside a run."""
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, dict(like_extra))
    trees, _ = self._restore_checked(abstract, step)
    return {name: trees.get(name) for name in like_extra}

  def saved_like(self, step: int, name: str) -> Optional[Any]:
    """Item `name` of checkpoint `step` as abstract arrays (the saved shapes and
    dtypes) on this process's first device, to read it whatever devices saved
    it; None when the checkpoint has no such item, `CheckpointError` when its
    metadata cannot be read."""
    path = os.path.join(self.directory, str(step), name)
    if not os.path.isdir(path):
      return None
    try:
      tree = ocp.StandardCheckpointHandler().metadata(epath.Path(path))
    except Exception as e:  # pylint: disable=broad-except  (orbax raises many kinds)
      raise CheckpointError(f'orbax could not read its {name} metadata: {_one_line(e)}'
                            ) from None
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree,
        is_leaf=lambda m: hasattr(m, 'shape') and hasattr(m, 'dtype'))

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
