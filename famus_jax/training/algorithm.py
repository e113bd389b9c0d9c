"""The plug-in interface of a training algorithm (`Algorithm`).

The `Trainer` (`famus_jax.training.trainer`) runs every algorithm the same
way: set-up, restore, blocks of iterations of each trained network
(`members`), logs, evaluations, checkpoints, summary. What differs is here:

    validate(config)                 the config's checks (once, before anything)
    size_limits(splits)              batch and set sizes the data must allow
    warmup_steps(steps_per_epoch)    cross-entropy iterations before meta steps
    cadence(trainer)                 block, log, eval and checkpoint periods
    attach(trainer)                  its programs (with 'eval'); extra hooks
    init_states(trainer)             member -> fresh TrainState
    extra_state() / load_extra_state checkpointed state besides the members'
    begin_block(trainer, step)       per-block work (Alg. 2: the GMM splits)
    sources(trainer, member, step)   the block's validation batches (context)
    after_iteration(...)             Hook: extra programs after each iteration
    eval_args(trainer)               arguments of its 'eval' program
    end_block(trainer, done, rows, evaluation)   its own per-block output
    summary(trainer)                 Hook: its summary fields
    describe(trainer)                one line for the progress bar and plots

`famus_jax.train.ALGORITHMS` maps `config.algorithm` to the classes:
'standard' (`famus_jax.training.standard`) and 'alg2' (`famus_jax.alg2`).
"""

from __future__ import annotations

import abc
import contextlib
from typing import Any, Iterator, NamedTuple, Optional

from famus_jax.training.hooks import Hook


class Cadence(NamedTuple):
  """Periods of a run, in iterations.

  Attributes:
    block: iterations of every member between the trainer's checks; a stop
      inside a block drops it (the run resumes at its start).
    log: metric rows every `log` iterations (and at the end).
    eval: evaluation every `eval` iterations (0: only at the end).
    checkpoint: checkpoint every `checkpoint` iterations (0: only at the end).
  """
  block: int
  log: int
  eval: int
  checkpoint: int


class SizeLimit(NamedTuple):
  """`config.<field>` = `value` must be at most `limit`, the size of `what`."""
  field: str
  value: int
  limit: int
  what: str
  note: str = ''


class Algorithm(Hook, abc.ABC):
  """Base of the training algorithms: the abstract methods are what each
  algorithm supplies; the others are no-ops where it adds nothing."""

  members: tuple[str, ...] = ('net',)
  resumable: tuple[str, ...] = ()  # config prefixes that may change on resume
  clean_probabilities = False  # reports per-network clean probabilities

  def __init__(self, config):
    self.config = config

  @staticmethod
  @abc.abstractmethod
  def validate(config) -> None:
    """Supplied by each algorithm."""

  @abc.abstractmethod
  def size_limits(self, splits) -> list[SizeLimit]:
    """Supplied by each algorithm."""

  def warmup_steps(self, steps_per_epoch: int) -> int:
    del steps_per_epoch
    return 0

  @abc.abstractmethod
  def cadence(self, trainer) -> Cadence:
    """Supplied by each algorithm."""

  @abc.abstractmethod
  def attach(self, trainer) -> list[Hook]:
    """Supplied by each algorithm."""

  @abc.abstractmethod
  def init_states(self, trainer) -> dict:
    """Supplied by each algorithm."""

  def extra_state(self) -> dict:
    return {}

  def load_extra_state(self, tree: dict) -> None:
    del tree

  def begin_block(self, trainer, step: int) -> None:
    del trainer, step

  @abc.abstractmethod
  def sources(self, trainer, member: str, step: int
              ) -> contextlib.AbstractContextManager[Optional[Iterator[dict]]]:
    """Supplied by each algorithm."""

  @abc.abstractmethod
  def eval_args(self, trainer) -> tuple:
    """Supplied by each algorithm."""

  def end_block(self, trainer, done: int, rows: Optional[dict],
                evaluation: Optional[dict]) -> None:
    del trainer, done, rows, evaluation

  @abc.abstractmethod
  def describe(self, trainer) -> str:
    """Supplied by each algorithm."""


def stream(it: Any) -> contextlib.AbstractContextManager:
  """A validation source that outlives the block (nothing to close)."""
  return contextlib.nullcontext(it)
