"""The written contracts of the core (`famus_jax.core.protocols`): every
registered meta model and layer sampler provides what the core calls."""

import jax
import pytest

import famus_jax as fj
from famus_jax import famus, meta_models
from famus_jax.core import protocols
from famus_jax.famus import samplers as samplers_lib
from famus_jax.training import build
from test_dispatch import NUM_CLASSES, parts_for, problem
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
  built = build.build(c, num_classes=10, image_shape=(8, 8, 1)).sampler
  if sampler in ('all', 'block'):  # no gates: every scope leaf carries the gradient
    assert built is None
  else:
    assert isinstance(built, protocols.LayerSampler)


def protocol_members(protocol) -> set[str]:
  """The public attributes and methods a Protocol class lists."""
  names = set(vars(protocol)) | set(getattr(protocol, '__annotations__', {}))
  return {n for n in names if not n.startswith('_')}


class Recording:
  """A layer sampler behind a proxy that records every member used on it."""

  def __init__(self, sampler, used: set):
    object.__setattr__(self, '_sampler', sampler)
    object.__setattr__(self, '_used', used)

  def __getattr__(self, name):
    self._used.add(name)
    return getattr(self._sampler, name)

  def __hash__(self):
    return hash(self._sampler)

  def __eq__(self, other):
    return isinstance(other, Recording) and self._sampler == other._sampler


HARNESS_MEMBERS = {'layers', 'warnings'}  # train.py's metrics, build's start-up notes


@pytest.mark.parametrize('sampler', ['famus', 'random'])
def test_the_sampler_contract_is_exactly_what_core_and_dispatch_use(sampler):
  """Through every dispatcher (state creation, two meta iterations each, so
  'ahead' also runs on a stored draw) the core and the dispatch layer use
  only members the LayerSampler protocol lists, and together with the
  harness's all of them. (The programs are tests/test_dispatch.py's: nothing
  donated, compiled once per session.)"""
  model, _, _, train, val = problem()
  used = set()
  for name in sorted(famus.DISPATCHERS):
    parts = parts_for(sampler=sampler, dispatch=name)
    parts = parts.with_sampler(Recording(parts.sampler, used))
    state = fj.create_train_state(jax.random.PRNGKey(0), model, train['image'],
                                  NUM_CLASSES, parts.setup)
    dispatcher = parts.dispatcher(famus.Compiler(donate=False))
    for _ in range(2):
      state, _ = dispatcher(state, train, val)
  members = protocol_members(protocols.LayerSampler)
  assert used <= members, used - members
  assert used | HARNESS_MEMBERS == members, members - used - HARNESS_MEMBERS
