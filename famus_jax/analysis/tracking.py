"""Label tracking as a plug-in (`Hook`) of the trainer:

    tracking = LabelTracking(run, splits.train, config)   # with the trainer
    after_iteration      the per-example record takes the iteration's losses,
                         weights and predictions
    on_clean_probability Algorithm 2's GMM clean probabilities of a network
    checkpoint_extra     the record, saved with every checkpoint
    restore              ... and read back on resume
    summary              `label_issues.csv` and the summary's 'label_issues'

Its `programs` are checked for compile-once with the trainer's.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import numpy as np

from famus_jax.analysis import label_issues as issues_lib
from famus_jax.analysis import record as record_lib
from famus_jax.training.hooks import Hook

log = logging.getLogger('famus_jax.labels')


class LabelTracking(Hook):
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

  def after_iteration(self, trainer, member: str, step: int, host: dict,
                      metrics: dict) -> None:
    """`host` the iteration's training batch (with 'index'), `metrics` the
    step's device metrics."""
    del trainer, member, step
    batch = self.run.device_batch(host, ('index', 'label'))
    self.record.update(batch['index'], batch['label'], metrics)

  def on_clean_probability(self, member: str, indices: np.ndarray,
                           prob: np.ndarray) -> None:
    self.record.set_gmm(member, indices, prob)

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

  def summary(self, trainer) -> dict:
    """Writes `label_issues.csv` (process 0); the summary entry (the score's
    definition and, with known true labels, its detection metrics)."""
    del trainer
    table = issues_lib.rank_label_issues(self.record.host(), self.given, self.true,
                                         method=self.method)
    if self.run.is_main:
      issues_lib.write_csv(os.path.join(self.run.workdir, issues_lib.CSV_FILE), table)
    return {'label_issues': issues_lib.summary_entry(table)}
