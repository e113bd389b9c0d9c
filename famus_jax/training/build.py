"""The pieces of a run built from its config: model, layer sampler and scope,
`StepSetup`, method strategy. Shared by the standard loop and Alg. 2."""

from __future__ import annotations

import logging
from typing import Optional

import jax
import jax.numpy as jnp

from famus_jax import core
from famus_jax import models as models_lib
from famus_jax.models import weights as weights_lib
from famus_jax.training import strategies as strategies_lib
from famus_jax.training.config import ConfigError

log = logging.getLogger('famus_jax.build')


def build_model(config, num_classes: int):
  """The base network of `config.model`; bad kwargs raise `ConfigError`."""
  try:
    return models_lib.get_model(config.model.name, num_classes=num_classes,
                                dtype=config.model.dtype, **config.model.kwargs.to_dict())
  except (TypeError, ValueError) as e:
    raise ConfigError(f'config.model (name={config.model.name!r}, '
                      f'kwargs={config.model.kwargs.to_dict()}): {e}') from None


def _init_exclude(config) -> tuple[str, ...]:
  return tuple(p.strip() for p in config.model.init_exclude.split(',') if p.strip())


def initial_weights(config, model, sample_images) -> Optional[dict]:
  """The arrays of `config.model.init_from`, checked against the model's
  variables (None without a file); `ConfigError` naming the first mismatch."""
  path = config.model.init_from
  if not path:
    return None
  abstract = jax.eval_shape(lambda: model.init(
      {'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(0)},
      sample_images, train=False))
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


def _field_error(e: Exception) -> ConfigError:
  msg = str(e)
  return ConfigError(msg if msg.startswith('config.') else
                     ('config.' + msg if msg.startswith('meta.') else msg))


def abstract_params(config, model, sample_images):
  """The model's parameters as shapes (nothing runs or compiles); a model that
  cannot take the data's images raises `ConfigError`."""
  init = lambda: model.init({'params': jax.random.PRNGKey(0),
                             'dropout': jax.random.PRNGKey(0)}, sample_images, train=False)
  try:
    return jax.eval_shape(init)['params']
  except (TypeError, ValueError, ZeroDivisionError) as e:
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise ConfigError(f'config.model.name={config.model.name!r} cannot take the images of '
                      f'config.data.name={config.data.name!r} (shape '
                      f'{tuple(sample_images.shape[1:])}): {reason}') from None


def build_sampler_and_scope(config, model, sample_images):
  """FaMUS sampler (or None) and static meta scope (or None), validated.

  Both None for a method without a meta step (its `meta.sampler` is ignored).
  A model that cannot take the data's images raises `ConfigError`.
  """
  params = abstract_params(config, model, sample_images)
  if not strategies_lib.get_strategy_class(config.meta.method).uses_meta_set:
    return None, None
  from famus_jax import famus  # pylint: disable=g-import-not-at-top
  try:
    scope = famus.static_scope(config.meta, model, params, sample_images)
    sampler = famus.build_sampler(config.meta, model, params, sample_images)
  except ValueError as e:
    raise _field_error(e) from None
  for warning in (sampler.warnings() if sampler is not None else ()):
    log.warning(warning)
  return sampler, scope


def build_setup(config, model, lr_schedule, sampler=None, scope=None) -> core.StepSetup:
  """The static `StepSetup`: optimizers, the method's meta model, sampler, scope."""
  o, m = config.optim, config.meta
  tx = core.sgd_with_weight_decay(lr_schedule, momentum=o.momentum,
                                  weight_decay=o.weight_decay, nesterov=o.nesterov)
  meta_model = strategies_lib.get_strategy_class(m.method).meta_model(m)
  meta_tx = core.make_meta_optimizer(m.optimizer, m.lr, m.weight_decay, m.momentum,
                                     m.nesterov)
  kwargs = {} if sampler is None else {'sampler': sampler}
  return core.StepSetup(apply_fn=model.apply, meta_model=meta_model, tx=tx,
                        meta_tx=meta_tx, lr_schedule=lr_schedule, mode=m.mode,
                        lookahead=m.lookahead, scope=scope, **kwargs)


def build_strategy(config, setup: core.StepSetup, mesh, warmup_steps: int):
  """The method strategy of `config.meta.method` with its compiled programs."""
  cls = strategies_lib.get_strategy_class(config.meta.method)
  return cls(setup, mesh, interval=int(config.meta.interval), warmup_steps=warmup_steps)
