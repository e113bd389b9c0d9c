"""Plug-ins of the `Trainer` (`famus_jax.training.trainer`).

A `Hook` is called at fixed points of a run; every method is optional:

    on_start(trainer)                                   after set-up and restore
    before_iteration(trainer, member, step)             may replace the state
    after_iteration(trainer, member, step, host, m)     -> extra metrics or None
    on_clean_probability(member, indices, prob)         a network's clean split
    checkpoint_extra() / restore(extra, step)           saved with checkpoints
    summary(trainer)                                    -> summary fields

`member` names the network being trained (`trainer.members`: one, or two for
Algorithm 2), `step` is the iteration about to run or just run (0-based),
`host` its training batch on the host (with 'index', 'label', 'true_label'),
`m` its device metrics. A hook's `programs` (name -> jitted function) are
checked for compile-once with the trainer's. The label-issue record
(`famus_jax.analysis.tracking`), the warm-up restart
(`famus_jax.training.warmup`), the training algorithms themselves and the
experiments' capture hooks are hooks.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


class Hook:
  """No-op base of the trainer's plug-ins."""

  @property
  def programs(self) -> dict:
    return {}

  def on_start(self, trainer) -> None:
    del trainer

  def before_iteration(self, trainer, member: str, step: int) -> None:
    del trainer, member, step

  def after_iteration(self, trainer, member: str, step: int, host: dict,
                      metrics: dict) -> Optional[dict]:
    del trainer, member, step, host, metrics
    return None

  def on_clean_probability(self, member: str, indices: np.ndarray,
                           prob: np.ndarray) -> None:
    del member, indices, prob

  def checkpoint_extra(self) -> dict:
    return {}

  def restore(self, extra: dict, step: int) -> None:
    del extra, step

  def summary(self, trainer) -> dict:
    del trainer
    return {}
