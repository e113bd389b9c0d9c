"""The warm-up restart of the official MLC code (`meta.warmup_restart`).

The official MLC code (ZhenWang-PhD/Training-Noise-Robust-Deep-Neural-Networks-
via-Meta-Learning, `main.py`) trains a cross-entropy warm-up, keeps its best
checkpoint, and starts the MLC phase from that checkpoint with a new optimiser.
With `meta.warmup_restart=True` the loop does the same around
`meta.warmup_epochs`:

- during the warm-up, every `meta.warmup_select_every` iterations and after its
  last one, the base network is evaluated on the clean meta set; the best one
  (highest meta-set accuracy, the earliest of ties) is written to
  `workdir/warmup_best.msgpack` (params and batch statistics, flax
  serialisation) with its step and accuracy in `warmup_best.json`;
- before the first iteration after the warm-up, the train state takes that
  network and the base optimiser's momentum is zeroed (the state of a new
  torch SGD); its step counter, and so the learning-rate schedule, go on.

One departure: the official code picks the checkpoint on the *test* set (every
100 iterations); here it is the clean meta set, so the test set stays unseen.
A run resumed during the warm-up reads the best so far back from the workdir.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import optax

from famus_jax.training.hooks import Hook
from famus_jax.training.writes import writing

log = logging.getLogger('famus_jax.warmup')
BEST_WEIGHTS, BEST_RECORD = 'warmup_best.msgpack', 'warmup_best.json'


def restart_momentum(opt_state: Any) -> Any:
  """`opt_state` with every momentum trace zeroed (a fresh SGD's), the rest kept
  (the update count that drives the learning-rate schedule included)."""
  is_trace = lambda x: isinstance(x, optax.TraceState)
  return jax.tree_util.tree_map(
      lambda s: optax.TraceState(trace=jax.tree_util.tree_map(jnp.zeros_like, s.trace))
      if is_trace(s) else s, opt_state, is_leaf=is_trace)


class WarmupRestart(Hook):
  """Keeps the best warm-up network and restarts the state from it (a plug-in
  of the trainer: `before_iteration` restarts, `after_iteration` selects)."""

  def __init__(self, workdir: str, warmup_steps: int, every: int, is_main: bool = True):
    self.warmup_steps, self.every, self.is_main = int(warmup_steps), int(every), is_main
    self.weights_path = os.path.join(workdir, BEST_WEIGHTS)
    self.record_path = os.path.join(workdir, BEST_RECORD)
    self.best = None  # {'step': int, 'meta_accuracy': float}
    if os.path.exists(self.record_path):
      with open(self.record_path) as f:
        self.best = json.load(f)

  @classmethod
  def from_config(cls, config, workdir: str, warmup_steps: int,
                  is_main: bool = True) -> Optional['WarmupRestart']:
    """The restart of `config.meta`, or None when off (or without a warm-up)."""
    if not config.meta.warmup_restart or warmup_steps <= 0:
      return None
    return cls(workdir, warmup_steps, int(config.meta.warmup_select_every), is_main)

  def before_iteration(self, trainer, member: str, step: int) -> None:
    trainer.states[member] = self.restart(step, trainer.states[member],
                                          trainer.run.replicate)

  def after_iteration(self, trainer, member: str, step: int, host: dict,
                      metrics: dict) -> None:
    del host, metrics
    self.consider(step + 1, trainer.states[member],
                  lambda: trainer.evaluate(trainer.splits.meta)['correct'])

  def due(self, done: int) -> bool:
    """Whether the network after iteration `done` is a candidate."""
    return done <= self.warmup_steps and (done % self.every == 0
                                          or done == self.warmup_steps)

  def consider(self, done: int, state, meta_accuracy: Callable[[], float]) -> None:
    """After iteration `done`: evaluate when due, keep the network if best."""
    if not self.due(done):
      return
    acc = float(meta_accuracy())
    if (self.best is not None and self.best['step'] != done
        and acc <= self.best['meta_accuracy']):
      return
    self.best = {'step': done, 'meta_accuracy': acc}
    if self.is_main:
      host = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
      _write_atomic(self.weights_path, flax.serialization.to_bytes(host))
      _write_atomic(self.record_path, json.dumps(self.best).encode())

  def restart(self, step: int, state, replicate: Callable[[Any], Any]):
    """Before iteration `step`: at the end of the warm-up, the state restarted
    from the best warm-up network; otherwise `state` unchanged."""
    if step != self.warmup_steps:
      return state
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('famus_jax_warmup_best')
    if self.best is None or not os.path.exists(self.weights_path):
      log.warning('meta.warmup_restart: no %s in the workdir; the meta phase goes on '
                  'from the last warm-up network', BEST_WEIGHTS)
      return state
    with open(self.weights_path, 'rb') as f:
      target = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
      best = flax.serialization.from_bytes(target, f.read())
    log.info('warm-up restart: the network of step %d (meta-set accuracy %.4f), '
             'momentum zeroed', self.best['step'], self.best['meta_accuracy'])
    return state.replace(params=replicate(best['params']),
                         batch_stats=replicate(best['batch_stats']),
                         opt_state=restart_momentum(state.opt_state))


def _write_atomic(path: str, payload: bytes) -> None:
  tmp = path + '.tmp'
  with writing(path):  # a full disk: one line naming the file
    with open(tmp, 'wb') as f:
      f.write(payload)
    os.replace(tmp, path)
