"""The checks a run makes of its programs and metrics.

- compile once: every jitted program of the loop holds one compiled program
  (`check_compiled_once`; `RecompilationError` names the one that compiled
  again: an input shape, dtype or sharding changed between iterations);
- finite: `FiniteGuard` stops the run at the first iteration whose loss or
  parameters are NaN/Inf (`NonFiniteLossError`, naming the step and the last
  good checkpoint), at most one iteration after it;
- chance level: `ChanceWatch` warns once when a whole evaluation period
  trained at chance.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Optional

import jax

log = logging.getLogger('famus_jax.run')


class NonFiniteLossError(RuntimeError):
  """The loss (or the parameters) became NaN/Inf; the run stopped."""

  def __init__(self, step: int, checkpoint_step: Optional[int], directory: str):
    self.step, self.checkpoint_step = step, checkpoint_step
    kept = (f'the last good checkpoint is step {checkpoint_step} in {directory}'
            if checkpoint_step is not None else 'no checkpoint was saved before it')
    super().__init__(f'non-finite loss or parameters at step {step}; stopped, {kept}')


class RecompilationError(RuntimeError):
  """A jitted function of the loop compiled more than once."""


def compile_count(fn: Callable) -> Optional[int]:
  """How many programs the jitted `fn` holds (None: not a jitted function)."""
  size = getattr(fn, '_cache_size', None)  # jax's per-function compile cache
  return None if size is None else int(size())


def compiled_counts(programs: dict[str, Callable]) -> dict[str, int]:
  counts = {name: compile_count(fn) for name, fn in programs.items()}
  return {name: n for name, n in counts.items() if n is not None}


def check_compiled_once(programs: dict[str, Callable]) -> dict[str, int]:
  """Compile counts of `programs`; `RecompilationError` if any compiled twice."""
  counts = compiled_counts(programs)
  bad = {k: v for k, v in counts.items() if v > 1}
  if bad:
    raise RecompilationError(
        f'train-loop functions compiled more than once: {bad} (an input shape, '
        'dtype or sharding changed between iterations)')
  return counts


class FiniteWatch:
  """The per-iteration NaN/Inf check, one iteration behind the device.

  `add(step, flag)` reads the on-device flag of the *previous* iteration (done
  or nearly: the new one depends on it), so the host never waits for the
  iteration it just launched. A run therefore stops at most one iteration
  after the first non-finite one, and names that one.
  """

  def __init__(self):
    self._pending: Optional[tuple[int, Any]] = None

  def add(self, step: int, flag) -> Optional[int]:
    """Queues `flag` of `step`; returns the previous step if it was non-finite."""
    previous, self._pending = self._pending, (step, flag)
    return self._check(previous)

  def flush(self) -> Optional[int]:
    """Checks the last queued step (before a save, an evaluation, the end)."""
    previous, self._pending = self._pending, None
    return self._check(previous)

  @staticmethod
  def _check(entry) -> Optional[int]:
    if entry is not None and not bool(jax.device_get(entry[1])):
      return entry[0]
    return None


class FiniteGuard:
  """Raises `NonFiniteLossError` naming the step and the last good checkpoint
  of `checkpointer`."""

  def __init__(self, checkpointer):
    self.checkpointer = checkpointer
    self.watch = FiniteWatch()

  def error(self, step: int) -> NonFiniteLossError:
    """The error for a NaN/Inf at `step`."""
    return NonFiniteLossError(step, self.checkpointer.latest_step(),
                              self.checkpointer.directory)

  def check_iteration(self, step: int, finite_flag) -> None:
    """The per-iteration check (`FiniteWatch`)."""
    bad = self.watch.add(step, finite_flag)
    if bad is not None:
      raise self.error(bad)

  def check_step(self, bad_step: Optional[int]) -> None:
    """At `bad_step` when it is not None (`StepMetrics.drain`'s answer)."""
    if bad_step is not None:
      raise self.error(bad_step)


class ChanceWatch:
  """Warns once when a whole evaluation period trained at chance level.

  Chance level: the loss the run learns from (the validation loss of the meta
  steps where a row has one, else the training loss) never went below
  `fraction` × log C in the period: a learning rate far too high or too low.
  """

  def __init__(self, num_classes: int, fraction: float = 0.98):
    self.level = math.log(num_classes)
    self.fraction = fraction
    self.losses: list[float] = []
    self.first_step: Optional[int] = None
    self.warned = False

  def add(self, row: dict) -> None:
    loss = row.get('val_loss', row.get('loss'))
    if loss is not None:
      self.losses.append(float(loss))
      self.first_step = row['step'] if self.first_step is None else self.first_step

  def end_period(self, step: int) -> bool:
    """At an evaluation: warns (once per run) if the period was at chance."""
    losses, first, self.losses, self.first_step = self.losses, self.first_step, [], None
    at_chance = bool(losses) and min(losses) >= self.fraction * self.level
    if at_chance and not self.warned:
      self.warned = True
      log.warning('training stayed at chance level up to step %d: since step %d the '
                  'loss never went below %.3f (%d %% of log %d = %.3f, the loss of a '
                  'uniform prediction); check optim.lr (far too high or too low)', step,
                  first, self.fraction * self.level, round(100 * self.fraction),
                  round(math.exp(self.level)), self.level)
    return at_chance
