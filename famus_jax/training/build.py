"""The one builder from config: every piece of a run that the config decides.

    parts = build(config, num_classes=10, image_shape=(8, 8, 1), steps_per_epoch=19)
    parts.setup                              # the core's static `StepSetup`
    strategy = parts.strategy(mesh)          # the method's compiled programs
    dispatcher = parts.dispatcher()          # the meta iteration alone
    state = parts.init_state(jax.random.PRNGKey(0))

`build` reads `config.model`, `config.optim` and `config.meta` (validated
before, once, by `famus_jax.training.config.validate_config`): the base
network, its parameters as shapes, the candidate layers and from them the
layer sampler and static meta scope, the learning-rate schedule, the
optimizers and the method's meta model. The trainer
(`famus_jax.training.trainer`), the experiments and the tests build their
steps here (`build_from_fields`: a step outside a run); `model=` replaces the
registry's network (tests with tiny models).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from famus_jax import core
from famus_jax import famus
from famus_jax import models as models_lib
from famus_jax.models import weights as weights_lib
from famus_jax.training import config as config_lib
from famus_jax.training import schedules
from famus_jax.training import strategies as strategies_lib
from famus_jax.training.config import ConfigError

log = logging.getLogger('famus_jax.build')


@dataclasses.dataclass(frozen=True)
class Parts:
  """What `build` makes of a config.

  Attributes:
    config: the config it was built from.
    model: the base network (Flax module).
    sample_images: (1, *image_shape) zeros, for shapes.
    num_classes: C.
    sampler: the layer sampler of `meta.sampler` (None: exact or block).
    scope: the static meta scope (None: every leaf).
    setup: the core's `StepSetup`.
    strategy_class: the method's strategy (`STRATEGIES[meta.method]`).
    initial_arrays: the arrays of `model.init_from` (None without one).
  """
  config: Any
  model: nn.Module
  sample_images: jax.Array
  num_classes: int
  sampler: Any
  scope: Optional[frozenset]
  setup: core.StepSetup
  strategy_class: type
  initial_arrays: Optional[dict] = None

  @property
  def uses_meta_set(self) -> bool:
    """Whether the method has a meta step (draws validation batches)."""
    return self.strategy_class.uses_meta_set

  @property
  def layer_names(self) -> Optional[list[str]]:
    """The sampler's layers in forward order (None without a sampler)."""
    return None if self.sampler is None else [layer.name for layer in self.sampler.layers]

  def dispatcher(self, compiler: Optional[famus.Compiler] = None) -> famus.Dispatcher:
    """The meta iteration's dispatcher of `meta.dispatch` (`famus.make_dispatcher`),
    its programs jitted by `compiler` (default: unsharded, the state donated)."""
    return famus.make_dispatcher(self.setup, compiler)

  def strategy(self, mesh, warmup_steps: int = 0):
    """The method's strategy: its programs jitted for `mesh` (the meta
    iteration through `dispatcher`, with the loop's compiler)."""
    dispatcher = (self.dispatcher(strategies_lib.compiler(mesh)) if self.uses_meta_set
                  else None)
    return self.strategy_class(self.setup, mesh, dispatcher=dispatcher,
                               interval=int(self.config.meta.interval),
                               warmup_steps=warmup_steps)

  def with_sampler(self, sampler) -> 'Parts':
    """These parts with `sampler` in place of the config's (a wrapped or
    instrumented one); the setup follows."""
    return dataclasses.replace(self, sampler=sampler,
                               setup=dataclasses.replace(self.setup, sampler=sampler))

  def new_state(self, rng: jax.Array) -> core.TrainState:
    """A freshly initialised train state (jit-compatible)."""
    return core.create_train_state(rng, self.model, self.sample_images, self.num_classes,
                                   self.setup)

  def with_initial_weights(self, state: core.TrainState) -> core.TrainState:
    """`state` whose base network is `model.init_from`'s (unchanged without one)."""
    return with_initial_weights(self.config, state, self.initial_arrays)

  def init_state(self, rng: jax.Array) -> core.TrainState:
    """A fresh train state, its base network from `model.init_from` if set."""
    return self.with_initial_weights(self.new_state(rng))


def build(config, *, num_classes: int, image_shape, steps_per_epoch: int = 1,
          model: Optional[nn.Module] = None) -> Parts:
  """The `Parts` of `config` for data of `num_classes` classes and images of
  `image_shape`; a value the model or the data cannot take raises
  `ConfigError` (one line naming the field)."""
  model = model if model is not None else build_model(config, num_classes)
  sample = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  params = abstract_params(config, model, sample)
  cls = strategies_lib.get_strategy_class(config.meta.method)
  sampler, scope = (meta_path(config, model, params, sample) if cls.uses_meta_set
                    else (None, None))
  lr_schedule = schedules.make_lr_schedule(config.optim, steps_per_epoch)
  setup = step_setup(config, model, lr_schedule, sampler, scope)
  return Parts(config=config, model=model, sample_images=sample, num_classes=num_classes,
               sampler=sampler, scope=scope, setup=setup, strategy_class=cls,
               initial_arrays=initial_weights(config, model, sample))


def build_from_fields(fields: Optional[Mapping[str, Any]] = None, *, num_classes: int,
                      image_shape, meta: Optional[Mapping[str, Any]] = None,
                      model: Optional[nn.Module] = None) -> Parts:
  """`build` of `base_config()` with a constant learning rate, `fields` (dotted
  names -> values) and `meta` (fields of `config.meta`) set: one step outside a
  run (studies, tests)."""
  config = config_lib.with_fields(config_lib.base_config(), {
      'optim.schedule': 'constant', **(fields or {}),
      **{f'meta.{name}': value for name, value in (meta or {}).items()}})
  return build(config, num_classes=num_classes, image_shape=image_shape, model=model)


def build_model(config, num_classes: int) -> nn.Module:
  """The base network of `config.model`; bad kwargs raise `ConfigError`."""
  try:
    return models_lib.get_model(config.model.name, num_classes=num_classes,
                                dtype=config.model.dtype, **config.model.kwargs.to_dict())
  except (TypeError, ValueError) as e:
    raise ConfigError(f'config.model (name={config.model.name!r}, '
                      f'kwargs={config.model.kwargs.to_dict()}): {e}') from None


def _init(model, sample_images):
  return model.init({'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(0)},
                    sample_images, train=False)


def abstract_params(config, model, sample_images):
  """The model's parameters as shapes (nothing runs or compiles); a model that
  cannot take the data's images raises `ConfigError`."""
  try:
    return jax.eval_shape(lambda: _init(model, sample_images))['params']
  except (TypeError, ValueError, ZeroDivisionError) as e:
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise ConfigError(f'config.model.name={config.model.name!r} cannot take the images of '
                      f'config.data.name={config.data.name!r} (shape '
                      f'{tuple(sample_images.shape[1:])}): {reason}') from None


def _field_error(e: Exception) -> ConfigError:
  msg = str(e)
  return ConfigError(msg if msg.startswith('config.') else
                     ('config.' + msg if msg.startswith('meta.') else msg))


def meta_path(config, model, params, sample_images) -> tuple[Any, Optional[frozenset]]:
  """(layer sampler or None, static meta scope or None) of `config.meta`."""
  try:
    sampler, scope = famus.meta_path(config.meta, model, params, sample_images)
  except ValueError as e:
    raise _field_error(e) from None
  for warning in (sampler.warnings() if sampler is not None else ()):
    log.warning(warning)
  return sampler, scope


def step_setup(config, model, lr_schedule, sampler=None, scope=None) -> core.StepSetup:
  """The static `StepSetup`: optimizers, the method's meta model, sampler, scope."""
  o, m = config.optim, config.meta
  tx = core.sgd_with_weight_decay(lr_schedule, momentum=o.momentum,
                                  weight_decay=o.weight_decay, nesterov=o.nesterov)
  meta_model = strategies_lib.get_strategy_class(m.method).meta_model(m)
  meta_tx = core.make_meta_optimizer(m.optimizer, m.lr, m.weight_decay, m.momentum,
                                     m.nesterov)
  return core.StepSetup(apply_fn=model.apply, meta_model=meta_model, tx=tx,
                        meta_tx=meta_tx, lr_schedule=lr_schedule, mode=m.mode,
                        lookahead=m.lookahead, scope=scope, sampler=sampler)


def _init_exclude(config) -> tuple[str, ...]:
  return tuple(p.strip() for p in config.model.init_exclude.split(',') if p.strip())


def initial_weights(config, model, sample_images) -> Optional[dict]:
  """The arrays of `config.model.init_from`, checked against the model's
  variables (None without a file); `ConfigError` naming the first mismatch."""
  path = config.model.init_from
  if not path:
    return None
  abstract = jax.eval_shape(lambda: _init(model, sample_images))
  try:
    arrays = weights_lib.read_weights(path)
    weights_lib.merge_weights(dict(abstract), arrays, source=path,
                              exclude=_init_exclude(config))
  except weights_lib.WeightsError as e:
    raise ConfigError(f'config.model.init_from: {e}') from None
  log.info('base network from %s (%d arrays; kept at init: %s)', path, len(arrays),
           config.model.init_exclude or 'nothing')
  return arrays


def with_initial_weights(config, state: core.TrainState, arrays: Optional[dict]):
  """`state` whose base network (params, batch statistics) is `arrays`'."""
  if arrays is None:
    return state
  merged = weights_lib.merge_weights(
      {'params': state.params, 'batch_stats': state.batch_stats}, arrays,
      source=config.model.init_from, exclude=_init_exclude(config))
  as_jax = lambda tree: jax.tree_util.tree_map(jnp.asarray, tree)
  return state.replace(params=as_jax(merged['params']),
                       batch_stats=as_jax(merged.get('batch_stats', state.batch_stats)))
