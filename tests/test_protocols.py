"""The written contracts of the core (`famus_jax.core.protocols`): every
registered meta model and layer sampler provides what the core calls."""

import jax.numpy as jnp
import pytest

from famus_jax import meta_models
from famus_jax.core import protocols
from famus_jax.famus import samplers as samplers_lib
from famus_jax.training import build
from test_train_support import tiny_config


@pytest.mark.parametrize('name', sorted(meta_models.META_MODELS))
def test_every_meta_model_meets_the_contract(name):
  assert isinstance(meta_models.get_meta_model(name), protocols.MetaModel)


def test_contract_is_checked():
  class NoWeights:  # a meta model without `weights`
    name, persistent = 'x', True
    init = lookahead_params = idle_params = lookahead_lr = meta_update = loss = (
        lambda *a: None)
  assert not isinstance(NoWeights(), protocols.MetaModel)


@pytest.mark.parametrize('sampler', sorted(samplers_lib.SAMPLERS))
def test_every_sampler_meets_the_contract(sampler):
  c = tiny_config('mwnet', sampler)
  model = build.build_model(c, 10)
  built, _ = build.build_sampler_and_scope(c, model, jnp.zeros((1, 8, 8, 1)))
  if sampler in ('all', 'block'):  # no gates: every scope leaf carries the gradient
    assert built is None
  else:
    assert isinstance(built, protocols.LayerSampler)
