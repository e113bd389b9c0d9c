"""One run per workdir: an exclusive lock held for the run's life.

`WorkdirLock(workdir)` is a context manager around `workdir/run.lock`, locked
with `fcntl.flock` and holding the owner's pid, host, start time and command.
The kernel drops the lock when its process dies (even by kill -9), so a lock
file left by a dead run is stale: the next run takes it over with a one-line
warning. A live lock refuses the second run with `WorkdirBusyError`, one line
naming the other run. Leaving the context (normally, by an exception or by a
signal turned into one) removes the lock file, and the workdir itself if the
lock created it and nothing else was written.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import tempfile
import time
from typing import Optional

log = logging.getLogger('famus_jax.lock')
LOCK_NAME = 'run.lock'


class WorkdirError(RuntimeError):
  """The workdir cannot be used (one line saying why)."""


class WorkdirBusyError(WorkdirError):
  """Another run holds the workdir (one line naming it)."""


def check_workdir(workdir: str) -> None:
  """Raises `WorkdirError` unless `workdir` is (or can be made) a writable
  directory; leaves the file system as it found it."""
  workdir = os.path.abspath(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f'--workdir={workdir} is a file, not a directory; '
                       'choose another path')
  created = []
  try:
    created = _make_dirs(workdir)
    with tempfile.TemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise WorkdirError(f'--workdir={workdir} is not writable ({e.strerror or e}); '
                       'choose a directory you can write to') from None
  finally:
    _remove_dirs(created)


def _make_dirs(path: str) -> list[str]:
  """`os.makedirs(path)`; returns the directories it created, deepest last."""
  missing, p = [], path
  while not os.path.exists(p):
    missing.append(p)
    p = os.path.dirname(p)
  os.makedirs(path, exist_ok=True)
  return missing[::-1]


def _remove_dirs(created: list[str]) -> None:
  """Removes the `created` directories that are (still) empty, deepest first."""
  for d in reversed(created):
    try:
      os.rmdir(d)
    except OSError:
      return


def _describe(owner: dict) -> str:
  started = owner.get('started')
  when = (time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))
          if isinstance(started, (int, float)) else '?')
  return (f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}, started {when}: "
          f"{owner.get('command', '?')}")


def _alive(pid) -> Optional[bool]:
  """Whether process `pid` runs on this host (None: cannot tell)."""
  if not isinstance(pid, int) or pid <= 0:
    return None
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class WorkdirLock:
  """Exclusive lock on `workdir` for one run (context manager)."""

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_NAME)
    self._fd: Optional[int] = None
    self._created: list[str] = []

  def __enter__(self) -> 'WorkdirLock':
    self.acquire()
    return self

  def __exit__(self, *exc) -> bool:
    self.release()
    return False

  def acquire(self) -> None:
    """Takes the lock or raises `WorkdirBusyError` naming its holder."""
    check_workdir(self.workdir)
    self._created = _make_dirs(self.workdir)
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        owner = self._read(fd)
        os.close(fd)
        raise WorkdirBusyError(
            f'--workdir={self.workdir} is in use by another run ({_describe(owner)}); '
            'wait for it to finish, stop it, or use another workdir') from None
      # The holder may have removed the file between our open and flock.
      try:
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    self._fd = fd
    self._take_over(self._read(fd))
    record = {'pid': os.getpid(), 'host': socket.gethostname(), 'started': time.time(),
              'command': ' '.join(sys.argv)}
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, json.dumps(record).encode(), 0)
      os.fsync(fd)
    except OSError as e:  # a full disk: leave the workdir as it was, name the file
      self.release()
      raise OSError(e.errno, e.strerror, self.path) from None

  def _take_over(self, owner: dict) -> None:
    """A lock file we could lock was left by a run that ended without removing it."""
    if not owner:
      return
    gone = owner.get('host') == socket.gethostname() and _alive(owner.get('pid')) is False
    log.warning('taking over the stale lock %s of the run (%s), which %s', self.path,
                _describe(owner), 'is no longer running' if gone else 'holds no lock')

  @staticmethod
  def _read(fd: int) -> dict:
    try:
      text = os.pread(fd, 1 << 16, 0).decode(errors='replace')
      return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
      return {}

  def release(self) -> None:
    """Removes the lock file (and an empty workdir the lock created)."""
    if self._fd is None:
      return
    try:
      os.unlink(self.path)
    except FileNotFoundError:
      pass
    os.close(self._fd)
    self._fd = None
    _remove_dirs(self._created)  # only if nothing else was written
    self._created = []
