"""Label tracking as a plug-in of a training loop, in four hooks:

    tracking = LabelTracking(run, splits.train, config)      # init
    tracking.after_iteration(host_batch, metrics)            # each iteration
    run.ckpt.save(step, state, data, extra=tracking.checkpoint_extra())
    tracking.restore(extra)                                  # after a restore
    summary['label_issues'] = tracking.report(run.workdir)   # end of the run

The loop adds `tracking.programs` to the programs it checks for compile-once.
Algorithm 2 also calls `tracking.set_gmm(net, pool, prob)` after each split.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import numpy as np

from famus_jax.analysis import label_issues as issues_lib
from famus_jax.analysis import record as record_lib

log = logging.getLogger('famus_jax.labels')


class LabelTracking:
  """The per-example record of a run and the label-issue report made from it."""

  def __init__(self, run, train_source, config, *, gmm: bool = False):
    self.run = run
    self.method = str(config.meta.method)
    self.given = np.asarray(train_source.labels)
    self.true = np.asarray(train_source.true_labels)
    self.record = record_lib.ExampleRecord(len(self.given), self.method,
                                           float(config.train.label_ema), run.mesh,
                                           gmm=gmm)

  @property
  def programs(self) -> dict:
    return self.record.programs

  def after_iteration(self, host_batch: dict, metrics: dict) -> None:
    """`host_batch` the iteration's training batch (with 'index'), `metrics` the
    step's device metrics."""
    batch = self.run.device_batch(host_batch, ('index', 'label'))
    self.record.update(batch['index'], batch['label'], metrics)

  def set_gmm(self, net: str, pool: np.ndarray, prob: np.ndarray) -> None:
    self.record.set_gmm(net, pool, prob)

  def checkpoint_extra(self) -> dict:
    return {record_lib.CHECKPOINT_ITEM: self.record.state}

  def restore(self, extra: Optional[dict], step: int) -> None:
    """The record of a restored checkpoint (`extra` as `restore_with_extra`
    returns it); a checkpoint saved without one leaves the record empty."""
    state = (extra or {}).get(record_lib.CHECKPOINT_ITEM)
    if state is None:
      log.warning('checkpoint step %d holds no per-example record: label issues are '
                  'ranked from the iterations after it only', step)
      return
    self.record.restore(state)

  def report(self, workdir: str) -> dict:
    """Writes `label_issues.csv` (process 0); the summary entry (the score's
    definition and, with known true labels, its detection metrics)."""
    table = issues_lib.rank_label_issues(self.record.host(), self.given, self.true,
                                         method=self.method)
    if self.run.is_main:
      issues_lib.write_csv(os.path.join(workdir, issues_lib.CSV_FILE), table)
    entry = issues_lib.summary_entry(table)
    return entry
