"""Reading a training run's workdir back: its config, the per-example record of
any checkpoint, the training labels, and the label-issue table made from them.
Problems are `RunError`s, one line saying what to do."""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

import ml_collections
import numpy as np

from famus_jax import data as data_lib
from famus_jax.analysis import label_issues as issues_lib
from famus_jax.analysis import record as record_lib
from famus_jax.training import checkpoint as checkpoint_lib

NOISE_FILE = 'noisy_labels.npz'
log = logging.getLogger('famus_jax.labels')


class RunError(RuntimeError):
  """The workdir holds no usable run for the request (one line)."""


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's `config.json`; `RunError` when the workdir holds no run."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise RunError(f'--workdir={workdir} holds no training run (no config.json); train '
                   'one first: python -m famus_jax.main --config=configs/digits.py '
                   f'--workdir={workdir}')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def read_record(workdir: str, step: Optional[int] = None) -> tuple[dict, int]:
  """(host record, step) of checkpoint `step` (default: the newest intact one).

  Read only: a run may be saving beside it; a corrupt checkpoint is skipped,
  not moved; the record is read onto this process's device whatever devices
  saved it.
  """
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), read_only=True)
  try:
    steps = ckpt.all_steps()
    if not steps:
      raise RunError(f'--workdir={workdir} holds no checkpoint yet; wait for the '
                     'first one (train.checkpoint_every) or the end of the run')
    if step is not None and step not in steps:
      raise RunError(f'--checkpoint={step}: no such checkpoint in {workdir}/checkpoints '
                     f'(there are: {", ".join(map(str, steps))})')
    return _first_intact_record(ckpt, [step] if step is not None else steps[::-1])
  finally:
    ckpt.close()


def _first_intact_record(ckpt, steps: list[int]) -> tuple[dict, int]:
  bad = []
  for s in steps:
    try:
      like = ckpt.saved_like(s, record_lib.CHECKPOINT_ITEM)  # None: absent
      extra = ckpt.read_extra(s, {record_lib.CHECKPOINT_ITEM: like})
    except checkpoint_lib.CheckpointError as e:
      bad.append(f'{s}: {e}')
      continue
    record = extra[record_lib.CHECKPOINT_ITEM]
    if record is None:
      raise RunError(f'checkpoint {s} in {ckpt.directory} holds no per-example record '
                     '(saved by a version without label tracking); train a new run')
    for why in bad:
      log.warning('checkpoint %s; reading checkpoint %d instead', why, s)
    return {k: np.asarray(v) for k, v in record.items()}, s
  raise RunError(f'no intact checkpoint in {ckpt.directory}: checkpoint {bad[0]}')


def saved_labels(workdir: str) -> Optional[tuple[np.ndarray, np.ndarray]]:
  """(given, true) training labels the run saved (`noisy_labels.npz`), or None."""
  path = os.path.join(workdir, NOISE_FILE)
  if not os.path.isfile(path):
    return None
  with np.load(path) as f:
    return np.asarray(f['noisy_labels']), np.asarray(f['true_labels'])


def load_training_split(config, workdir: str):
  """The run's training split as `config.data` loads it now; `RunError` when it
  cannot be loaded or differs from the one the run trained on."""
  try:
    splits = data_lib.load_dataset(config.data, int(config.seed))
  except data_lib.DatasetMissingError as e:
    raise RunError(str(e)) from None
  saved = saved_labels(workdir)
  train = splits.train
  if saved is not None and (saved[0].shape != train.labels.shape
                            or not np.array_equal(saved[0], train.labels)):
    raise RunError(
        f'--workdir={workdir} was trained on another data set than config.data '
        f'({config.data.name}) loads now: {saved[0].size} training labels in '
        f'{NOISE_FILE}, {train.labels.size} loaded, not the same; check '
        'data.data_dir in its config.json')
  return splits


def check_record(record: dict, num_examples: int, workdir: str) -> None:
  """`RunError` unless `record` has a row for each of `num_examples` examples
  (and only padding rows, never visited, beyond)."""
  rows = record['seen'].shape[0]
  if rows < num_examples or np.any(record['seen'][num_examples:] > 0):
    raise RunError(f'--workdir={workdir}: its per-example record has {rows} rows for a '
                   f'training split of {num_examples} examples: another data set')


def label_issues(workdir: str, *, checkpoint: Optional[int] = None
                 ) -> issues_lib.LabelIssueTable:
  """The label-issue table of the run in `workdir` at its newest (or the given)
  checkpoint: arrays sorted by how likely each training label is wrong.

  The training labels come from the run's `noisy_labels.npz` when it saved one
  (synthetic noise: the true labels too), else from its data set.
  """
  config = read_config(workdir)
  record, _ = read_record(workdir, checkpoint)
  saved = saved_labels(workdir)
  if saved is None:
    train = load_training_split(config, workdir).train
    saved = (np.asarray(train.labels), np.asarray(train.true_labels))
  check_record(record, saved[0].size, workdir)
  record = {k: v[:saved[0].size] for k, v in record.items()}
  return issues_lib.rank_label_issues(record, saved[0], saved[1],
                                      method=str(config.meta.method))
