"""What a run shows and leaves: metric writers, the progress bar, the summary.

Process 0 writes; the other processes of a multi-host run get None writers
and no bar. `summary.json` is the run's last word: 'completed' with its
results, or the status of a run that stopped (a non-finite loss).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

from tqdm import tqdm

from famus_jax.training import metrics as metrics_lib

SUMMARY_FILE = 'summary.json'


class Outputs:
  """Writers, progress bar and summary files of the run in `workdir`.

  `closing(obj)` registers `obj.close()` for the end of the run.
  """

  def __init__(self, workdir: str, is_main: bool, show_progress: bool,
               closing: Callable[[Any], Any]):
    self.workdir, self.is_main = workdir, is_main
    self.show_progress = bool(show_progress)
    self._closing = closing
    self.start_time = time.perf_counter()

  def writer(self, factory: Callable[[], Any]):
    """`factory()` on process 0 (closed at the end), None on the others."""
    return self._closing(factory()) if self.is_main else None

  def progress(self, total: int, initial: int, desc: str):
    """A tqdm bar on process 0 when the config asks for one, else None."""
    if not (self.is_main and self.show_progress):
      return None
    return self._closing(tqdm(total=total, initial=initial, desc=desc,
                              dynamic_ncols=True))

  @property
  def wall_time_s(self) -> float:
    return time.perf_counter() - self.start_time

  def write_summary(self, summary: dict) -> None:
    if self.is_main:
      metrics_lib.write_json(os.path.join(self.workdir, SUMMARY_FILE), summary)

  def write_failure(self, status: str, step: int, message: str) -> None:
    """`summary.json` of a run that stopped (non-finite loss). A completed
    run's summary is kept: its checkpoints, not the run, went bad."""
    path = os.path.join(self.workdir, SUMMARY_FILE)
    if os.path.exists(path):
      with open(path) as f:
        if json.load(f).get('status') == 'completed':
          return
    self.write_summary({'status': status, 'step': step, 'message': message})
