"""Graceful stop on SIGTERM / SIGINT for training loops."""

import signal
import threading


class StopFlag:
  """Context manager: SIGTERM / SIGINT set `signum`; the loop saves and stops at
  its next iteration. A second Ctrl-C raises KeyboardInterrupt at once."""

  def __init__(self):
    self.signum = None
    self._old = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)
    return False


class Preempted(RuntimeError):
  """SIGTERM / SIGINT: a checkpoint was saved; re-run the command to continue."""

  def __init__(self, step: int, signum: int):
    self.step, self.signum = step, signum
    super().__init__(f'stopped by signal {signal.Signals(signum).name} at step {step}; '
                     'checkpoint saved, re-run the same command to continue')
