"""Method strategies: what one training iteration runs, keyed by `meta.method`.

`STRATEGIES[config.meta.method]` is a strategy class; its instance holds the
compiled programs of a run (`programs`, name -> jitted function; the harness
checks that each compiles once) and runs one iteration
(`run_iteration(step, state, batch, val_batch)`), choosing the program on the
host from the iteration number:

- `PlainStrategy` ('ce'): the plain cross-entropy step every iteration; no
  meta model, no meta set, no layer sampler.
- `MetaStrategy` (every meta model of `famus_jax.meta_models.META_MODELS`):
  the core's meta step (Virtual-Train, Meta-Train with the sampler,
  Actual-Train) every `meta.interval`-th iteration, the weighted step with the
  current θ otherwise, and the plain cross-entropy step during the first
  `warmup_steps` iterations (a CE warm-up, as MLC's code and Alg. 2 use).

The loop asks `needs_validation(step)` before drawing a validation batch and
never looks at the method's name. The meta iteration itself runs through the
dispatcher the builder made (`famus_jax.training.build.Parts.dispatcher`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from famus_jax import core
from famus_jax import famus
from famus_jax import meta_models
from famus_jax.training import sharding as sharding_lib

PyTree = Any


def all_finite(tree: PyTree) -> jax.Array:
  """True iff every inexact leaf of `tree` is finite (a scalar bool array)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def with_finite_flag(step_fn: Callable) -> Callable:
  """`step_fn` whose metrics gain 'finite': parameters and loss are finite."""

  @functools.wraps(step_fn)
  def wrapped(state, *batches, setup):
    new_state, metrics = step_fn(state, *batches, setup=setup)
    metrics['finite'] = all_finite(new_state.params) & jnp.isfinite(metrics['loss'])
    return new_state, metrics
  return wrapped


def compiler(mesh) -> famus.Compiler:
  """How the loop jits its steps: the state replicated on `mesh` and donated,
  the batches sharded along the batch axis, 'finite' in every step's metrics."""
  return famus.Compiler(state_sharding=sharding_lib.replicated(mesh),
                        batch_sharding=sharding_lib.batch_sharding(mesh),
                        wrap=with_finite_flag)


def _jit_step(step_fn: Callable, setup: core.StepSetup, mesh, num_batches: int):
  """`step_fn` with `setup` bound, jitted by `compiler(mesh)`."""
  return compiler(mesh).step(step_fn, setup, num_batches)


class PlainStrategy:
  """Cross-entropy on every batch (the `ce` baseline): no meta step."""

  uses_meta_set = False  # no validation batches, no layer sampler

  def __init__(self, setup: core.StepSetup, mesh, *, dispatcher=None, interval: int = 1,
               warmup_steps: int = 0):
    del dispatcher, interval, warmup_steps
    self.programs = {'plain': _jit_step(core.plain_train_step, setup, mesh, 1)}

  @staticmethod
  def meta_model(meta_config):
    """A meta model without parameters, so the state's meta fields stay empty."""
    del meta_config
    return meta_models.get_meta_model('l2r')

  @staticmethod
  def describe(meta_config) -> str:
    return meta_config.method

  @property
  def program_counts(self) -> dict[str, int]:
    """How many meta iterations each meta program ran (none here)."""
    return {}

  def program_for(self, step: int) -> str:
    del step
    return 'plain'

  def needs_validation(self, step: int) -> bool:
    del step
    return False

  def run_iteration(self, step: int, state, batch: dict,
                    val_batch: Optional[dict] = None):
    """(new state, device metrics); `batch` holds 'image' and 'label'."""
    del step, val_batch
    return self.programs['plain'](state, {'image': batch['image'],
                                          'label': batch['label']})


class MetaStrategy(PlainStrategy):
  """A meta model's iteration: meta step every `interval`-th, weighted otherwise,
  plain cross-entropy during the first `warmup_steps` iterations."""

  uses_meta_set = True

  def __init__(self, setup: core.StepSetup, mesh, *, dispatcher: famus.Dispatcher,
               interval: int = 1, warmup_steps: int = 0):
    self.interval, self.warmup_steps = int(interval), int(warmup_steps)
    self.meta_step = dispatcher
    self.programs = {**self.meta_step.programs,
                     'weighted': _jit_step(core.weighted_train_step, setup, mesh, 1)}
    if self.warmup_steps:
      self.programs['plain'] = _jit_step(core.plain_train_step, setup, mesh, 1)

  @staticmethod
  def meta_model(meta_config):
    return meta_models.get_meta_model(meta_config.method,
                                      **meta_config.get('model_kwargs', {}))

  @staticmethod
  def describe(meta_config) -> str:
    return f'{meta_config.method}+{meta_config.sampler}'

  @property
  def program_counts(self) -> dict[str, int]:
    """How many meta iterations each meta program ran (per scope program)."""
    return dict(sorted(self.meta_step.counts.items()))

  def program_for(self, step: int) -> str:
    if step < self.warmup_steps:
      return 'plain'
    return 'meta' if step % self.interval == 0 else 'weighted'

  def needs_validation(self, step: int) -> bool:
    return self.program_for(step) == 'meta'

  def run_iteration(self, step: int, state, batch: dict,
                    val_batch: Optional[dict] = None):
    """(new state, device metrics); `val_batch` on meta iterations only."""
    name = self.program_for(step)
    if name == 'meta':
      return self.meta_step(state, batch, val_batch)
    if name == 'weighted':
      return self.programs['weighted'](state, batch)
    return super().run_iteration(step, state, batch)


PLAIN = 'ce'  # config meta.method of plain cross-entropy (no meta step)
STRATEGIES: dict[str, type] = {
    PLAIN: PlainStrategy,
    **{name: MetaStrategy for name in meta_models.META_MODELS},
}


def get_strategy_class(method: str) -> type:
  if method not in STRATEGIES:
    raise ValueError(f'Unknown method {method!r} (config field meta.method); known: '
                     f'{", ".join(sorted(STRATEGIES))}.')
  return STRATEGIES[method]
