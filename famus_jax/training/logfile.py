"""The run's log file, `workdir/log.txt`, the records that go only there, and
what the terminal shows.

`LogFile(path)` appends every record the run's loggers pass (famus_jax's from
INFO, other libraries' warnings) and everything logged to `FILE_ONLY`: what
libraries report from their worker threads (orbax's failed writes with their
tracebacks, at DEBUG level), which the terminal never shows; the run reports
such a failure once, as one line. A log file that cannot be written (a full
disk) drops the record silently.
"""

from __future__ import annotations

import logging

LOG_NAME = 'log.txt'
# Records for the log file only (no terminal): it does not propagate to the root.
FILE_ONLY = logging.getLogger('famus_jax.file_only')
FILE_ONLY.propagate = False
FILE_ONLY.setLevel(logging.DEBUG)


def set_console_levels(verbose: bool = False) -> None:
  """famus_jax's messages from INFO; other libraries' (orbax and grain log every
  save at INFO through absl) from WARNING unless `verbose` (--verbosity)."""
  if not verbose:
    for name in ('absl', 'jax'):
      logging.getLogger(name).setLevel(logging.WARNING)
  logging.getLogger('famus_jax').setLevel(logging.INFO)


def to_file_only(record: logging.LogRecord) -> None:
  """Re-files another logger's `record` as a DEBUG record of `FILE_ONLY`."""
  record.levelno, record.levelname = logging.DEBUG, 'DEBUG'
  FILE_ONLY.handle(record)


class _QuietFileHandler(logging.FileHandler):

  def handleError(self, record):  # a full disk: drop the record, print nothing
    del record

  def close(self):
    try:
      super().close()
    except OSError:  # the final flush on a full disk
      pass


class LogFile:
  """Appends the run's log records to `path` until `close()`."""

  def __init__(self, path: str):
    self.handler = _QuietFileHandler(path, mode='a', delay=True)
    self.handler.setLevel(logging.DEBUG)
    self.handler.setFormatter(logging.Formatter(
        '%(asctime)s %(levelname)s %(name)s %(threadName)s: %(message)s'))
    for logger in (logging.getLogger(), FILE_ONLY):
      logger.addHandler(self.handler)

  def close(self) -> None:
    for logger in (logging.getLogger(), FILE_ONLY):
      logger.removeHandler(self.handler)
    self.handler.close()
