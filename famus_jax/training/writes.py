"""Writing a run's files: one line when the file system refuses.

`with writing(path): ...` turns an `OSError` raised while writing `path` (a
full disk, a quota, a read-only or vanished mount) into `WriteError`, whose one
line names the path, the space left on its file system, the newest complete
checkpoint the next run resumes from and what to do. The checkpoint directory
is filled in by whoever knows it (the harness, or the checkpointer itself).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from typing import Optional

from famus_jax.training.lock import WorkdirError

# What the file system (not the program) refused: these end a run with one line.
FILE_SYSTEM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                                errno.EPERM, errno.EIO, errno.EFBIG})
_WHAT_TO_DO = {errno.ENOSPC: 'free some space', errno.EDQUOT: 'free some space',
         errno.EFBIG: 'free some space', errno.EROFS: 'make the file system writable',
         errno.EACCES: 'make it writable', errno.EPERM: 'make it writable'}
_OS_CODE = re.compile(r"os_error_code='?(\d+)")  # in tensorstore's messages


def error_number(error: BaseException) -> Optional[int]:
  """The errno of an OSError, or the one a tensorstore/orbax message reports."""
  if isinstance(error, OSError) and error.errno:
    return error.errno
  match = _OS_CODE.search(str(error))
  return int(match.group(1)) if match else None


def free_space(path: str) -> str:
  """'12.5 MB' free on the file system of `path` (its nearest existing parent)."""
  p = os.path.abspath(path)
  while not os.path.exists(p) and os.path.dirname(p) != p:
    p = os.path.dirname(p)
  try:
    n = float(shutil.disk_usage(p).free)
  except OSError:
    return 'unknown space'
  for unit in ('bytes', 'KB', 'MB', 'GB'):
    if n < 1024:
      return f'{n:.0f} {unit}' if unit == 'bytes' else f'{n:.1f} {unit}'
    n /= 1024
  return f'{n:.1f} TB'


def newest_checkpoint(directory: str) -> Optional[int]:
  """The newest complete checkpoint step in `directory` (orbax renames a step's
  directory to its number only once everything in it is written)."""
  try:
    steps = [int(n) for n in os.listdir(directory) if n.isdigit()]
  except OSError:
    return None
  return max(steps) if steps else None


class WriteError(WorkdirError):
  """A file of the run could not be written; str() is one line naming it."""

  def __init__(self, path: str, cause: BaseException,
               checkpoints: Optional[str] = None):
    super().__init__(path, cause)
    self.path, self.cause, self.checkpoints = path, cause, checkpoints

  def __str__(self) -> str:
    code = error_number(self.cause)
    if code is not None:
      reason = os.strerror(code)
    else:
      lines = [l.strip() for l in str(self.cause).splitlines() if l.strip()]
      reason = (lines[0] if lines else type(self.cause).__name__)[:160]
    return (f'cannot write {self.path}: {reason} ({free_space(self.path)} free there); '
            f'{self._resume()}{_WHAT_TO_DO.get(code, "fix that")}, then re-run the same command')

  def _resume(self) -> str:
    if self.checkpoints is None:
      return ''
    step = newest_checkpoint(self.checkpoints)
    if step is None:
      return 'no checkpoint was saved yet, so the next run starts from the beginning: '
    return (f'the next run resumes from the checkpoint of step {step} '
            f'({os.path.join(self.checkpoints, str(step))}): ')


@contextlib.contextmanager
def writing(path: str):
  """Raises `WriteError(path, e)` for an `OSError` e inside the block."""
  try:
    yield
  except WriteError:
    raise
  except OSError as e:
    raise WriteError(path, e) from e
