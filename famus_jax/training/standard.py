"""The standard algorithm (`config.algorithm='standard'`): one network, the
method's iteration on every training batch, validation batches from the clean
meta set.

The method strategy (`famus_jax.training.strategies`) runs the core's
`meta_train_step` (Virtual-Train, Meta-Train with the configured layer
sampler, Actual-Train) on meta iterations (every `meta.interval`-th), the
weighted step with the current meta model on the others, the plain
cross-entropy step for `meta.method=ce` and during `meta.warmup_epochs`
(optionally followed by MLC's restart from the best warm-up network:
`famus_jax.training.warmup`). Logs, evaluations and checkpoints follow
`config.train` in iterations; the evaluation reports the test set, any extra
test sets and the clean meta set (for model selection without the test set).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from famus_jax import losses as losses_lib
from famus_jax.core import forward as forward_lib
from famus_jax.training import config as config_lib
from famus_jax.training import sharding as sharding_lib
from famus_jax.training.algorithm import Algorithm, Cadence, SizeLimit, stream
from famus_jax.training.config import ConfigError
from famus_jax.training.warmup import WarmupRestart


def eval_step(params, batch_stats, batch, *, apply_fn):
  """Sums over a padded batch: loss, top-1 and top-5 hits, valid examples."""
  logits, _ = forward_lib.apply_model(apply_fn, params, batch_stats, batch['image'],
                                      train=False)
  mask = batch['mask'].astype(jnp.float32)
  labels = batch['label']
  top = jnp.argsort(-logits, axis=-1)[:, :5]
  hit1 = (top[:, 0] == labels).astype(jnp.float32)
  hit5 = jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)
  return {'loss': jnp.sum(losses_lib.cross_entropy(logits, labels) * mask),
          'correct': jnp.sum(hit1 * mask), 'correct5': jnp.sum(hit5 * mask),
          'count': jnp.sum(mask)}


def jit_eval_step(apply_fn, mesh):
  repl, data = sharding_lib.replicated(mesh), sharding_lib.batch_sharding(mesh)
  return jax.jit(functools.partial(eval_step, apply_fn=apply_fn),
                 in_shardings=(repl, repl, data), out_shardings=repl)


class Standard(Algorithm):
  """One network trained by the method strategy on a clean meta set."""

  @staticmethod
  def validate(config) -> None:
    config_lib.validate_config(config)

  def size_limits(self, splits) -> list[SizeLimit]:
    d = self.config.data
    limits = [SizeLimit('data.batch_size', d.batch_size, len(splits.train),
                        'the training split')]
    if not config_lib.uses_meta_set(self.config):
      return limits
    if splits.meta is None:
      raise ConfigError(f'config.data.meta_per_class={d.meta_per_class}: the data set '
                        f'{d.name!r} gave no meta set, which meta.method='
                        f'{self.config.meta.method!r} needs')
    return limits + [SizeLimit('data.meta_batch_size', d.meta_batch_size,
                               len(splits.meta), 'the meta set')]

  def warmup_steps(self, steps_per_epoch: int) -> int:
    return int(self.config.meta.warmup_epochs * steps_per_epoch)

  def cadence(self, trainer) -> Cadence:
    t = self.config.train
    return Cadence(block=1, log=int(t.log_every), eval=int(t.eval_every),
                   checkpoint=int(t.checkpoint_every))

  def attach(self, trainer) -> list:
    self._programs = {'eval': jit_eval_step(trainer.parts.setup.apply_fn,
                                            trainer.run.mesh)}
    restart = WarmupRestart.from_config(self.config, trainer.run.workdir,
                                        self.warmup_steps(trainer.steps_per_epoch),
                                        trainer.run.is_main)
    return [restart] if restart is not None else []

  @property
  def programs(self) -> dict:
    return self._programs

  def init_states(self, trainer) -> dict:
    parts, run = trainer.parts, trainer.run
    init = jax.jit(parts.new_state, out_shardings=sharding_lib.replicated(run.mesh))
    state = parts.with_initial_weights(init(jax.random.PRNGKey(int(self.config.seed))))
    return {'net': run.replicate(state)}

  def sources(self, trainer, member: str, step: int):
    return stream(trainer.meta_it)

  def eval_args(self, trainer) -> tuple:
    state = trainer.states['net']
    return state.params, state.batch_stats

  def describe(self, trainer) -> str:
    return trainer.strategy.describe(self.config.meta)
