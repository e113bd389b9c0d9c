"""A run's workdir: one run at a time, the same experiment on resume, and the
files that say what the run is.

    with Workdir(config, path, resumable=()) as wd:
      splits = data.load_dataset(..., wd.staging)   # data files wait in staging
      ...                                            # checks, builds
      wd.write_config()                              # config.json, staged files, log.txt

Entering takes the workdir's lock (process 0; `famus_jax.training.lock`) and
checks that a `config.json` already there is the same experiment (fields under
`RESUMABLE_FIELDS` and `resumable` may differ), else `ConfigError`. A start
that fails before `write_config` leaves the workdir as it found it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Optional

import jax

from famus_jax.training import config as config_lib
from famus_jax.training import lock as lock_lib
from famus_jax.training import logfile
from famus_jax.training import metrics as metrics_lib
from famus_jax.training.config import ConfigError
from famus_jax.training.writes import writing

CONFIG_FILE = 'config.json'


class Resources:
  """A context manager that releases what it registered, in reverse order,
  whatever happened (a `contextlib.ExitStack` with `closing`)."""

  def __init__(self):
    self._stack = contextlib.ExitStack()

  def __exit__(self, *exc) -> bool:
    self._stack.close()
    return False

  def closing(self, obj):
    """Registers `obj.close()` for the release; returns `obj` (None passes)."""
    if obj is not None:
      self._stack.callback(obj.close)
    return obj


class Workdir(Resources):
  """Context manager: the lock, the resume guard, `config.json`, the staged data
  files and the log file of the run in `path`."""

  def __init__(self, config, path: str, *, resumable: tuple[str, ...] = ()):
    super().__init__()
    self.config = config
    self.path = os.path.abspath(path)
    self.is_main = jax.process_index() == 0  # this process writes the files
    self.resumable = resumable  # config prefixes that may change on resume
    self._staging: Optional[str] = None

  def __enter__(self) -> 'Workdir':
    try:
      if self.is_main:  # one run per workdir, released when the run ends
        lock_lib.check_workdir(self.path)
        self._stack.enter_context(lock_lib.WorkdirLock(self.path))
      else:
        os.makedirs(self.path, exist_ok=True)
      self.check_resume()
    except BaseException:
      self._stack.close()
      raise
    return self

  @property
  def config_path(self) -> str:
    return os.path.join(self.path, CONFIG_FILE)

  @property
  def staging(self) -> Optional[str]:
    """Process 0's directory for the data files (`noisy_labels.npz`, ...), moved
    into the workdir by `write_config`; None on the other processes."""
    if self.is_main and self._staging is None:
      self._staging = self._stack.enter_context(
          tempfile.TemporaryDirectory(prefix='famus_jax_staging_'))
    return self._staging

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
          f'--workdir={self.path} holds a run with a different config (config.'
          f'{conflicts[0]}{" and others" if len(conflicts) > 1 else ""}); use a new '
          'workdir, or the same config to resume')

  def write_config(self) -> None:
    """`config.json`, the staged data files and the log file (`log.txt`): call it
    once the run's checks have passed."""
    if not self.is_main:
      return
    if self._staging is not None:
      for name in sorted(os.listdir(self._staging)):
        with writing(os.path.join(self.path, name)):
          shutil.move(os.path.join(self._staging, name), os.path.join(self.path, name))
    metrics_lib.write_json(self.config_path, config_lib.config_to_dict(self.config))
    self.closing(logfile.LogFile(os.path.join(self.path, logfile.LOG_NAME)))

  def file(self, name: str) -> str:
    return os.path.join(self.path, name)
