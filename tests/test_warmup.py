"""The official MLC code's warm-up restart (`meta.warmup_restart`): the best
warm-up network on the clean meta set, the base optimiser's momentum zeroed,
the learning-rate schedule going on."""

import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from famus_jax import core, train
from famus_jax.training import warmup
from famus_jax.training.config import ConfigError, validate_config
from test_train_support import tiny_config


def _state(value: float, opt_state=()):
  params = {'dense': {'kernel': jnp.full((2, 3), value), 'bias': jnp.full((3,), value)}}
  return core.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                         batch_stats={'bn': {'mean': jnp.full((3,), -value)}},
                         opt_state=opt_state, meta_params={}, meta_opt_state={},
                         rng=jax.random.PRNGKey(0))


def test_restart_momentum_zeroes_the_trace_and_keeps_the_schedule_count():
  schedule = optax.piecewise_constant_schedule(0.1, {3: 0.1})
  tx = core.sgd_with_weight_decay(schedule, momentum=0.9, weight_decay=0.5, nesterov=True)
  params = {'w': jnp.array([1.0, -2.0])}
  opt_state = tx.init(params)
  for _ in range(4):
    _, opt_state = tx.update({'w': jnp.array([0.3, 0.7])}, opt_state, params)
  restarted = warmup.restart_momentum(opt_state)
  traces = [s.trace for s in jax.tree_util.tree_leaves(
      restarted, is_leaf=lambda x: isinstance(x, optax.TraceState))
            if isinstance(s, optax.TraceState)]
  assert traces and all(float(jnp.abs(t['w']).max()) == 0 for t in traces)
  assert int(optax.tree_utils.tree_get(restarted, 'count')) == 4
  g = {'w': jnp.array([0.2, -0.1])}
  updates, _ = tx.update(g, restarted, params)
  fresh_sgd = optax.sgd(0.01, momentum=0.9, nesterov=True)  # lr of step 4: 0.01
  expected, _ = fresh_sgd.update({'w': g['w'] + 0.5 * params['w']},
                                 fresh_sgd.init(params), params)
  np.testing.assert_allclose(updates['w'], expected['w'], rtol=1e-6)


def test_best_warmup_network_is_kept_and_restored_earliest_of_ties(tmp_path):
  tx = core.sgd_with_weight_decay(0.1, momentum=0.9)
  opt_state = tx.update({'dense': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(3)}},
                        tx.init(_state(0.0).params), _state(0.0).params)[1]
  r = warmup.WarmupRestart(str(tmp_path), warmup_steps=7, every=3)
  assert [d for d in range(1, 10) if r.due(d)] == [3, 6, 7]
  for done, acc in ((1, 0.9), (3, 0.5), (6, 0.7), (7, 0.7)):
    r.consider(done, _state(float(done)), lambda a=acc: a)
  assert json.load(open(os.path.join(tmp_path, warmup.BEST_RECORD))) == {
      'step': 6, 'meta_accuracy': 0.7}
  resumed = warmup.WarmupRestart(str(tmp_path), warmup_steps=7, every=3)  # a resumed run
  assert resumed.best == {'step': 6, 'meta_accuracy': 0.7}
  last = _state(7.0, opt_state)
  to_device = lambda tree: jax.tree_util.tree_map(jnp.asarray, tree)
  assert resumed.restart(6, last, to_device) is last
  new = resumed.restart(7, last, to_device)
  np.testing.assert_array_equal(new.params['dense']['kernel'], np.full((2, 3), 6.0))
  np.testing.assert_array_equal(new.batch_stats['bn']['mean'], np.full(3, -6.0))
  assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree_util.tree_leaves(
      new.opt_state) if x.dtype == jnp.float32)


def test_restart_in_the_training_loop(tmp_path, monkeypatch):
  """tiny digits run, warm-up 5 iterations: candidates after 2, 4, 5; the
  state of iteration 5 is the stored network with zero momentum."""
  c = tiny_config('mwnet', 'all', steps=8, meta__warmup_epochs=0.15,
                  meta__warmup_restart=True, meta__warmup_select_every=2)
  seen = {}
  original = warmup.WarmupRestart.restart

  def spy(self, step, state, replicate):
    out = original(self, step, state, replicate)
    if step == self.warmup_steps:
      seen.update(steps=self.warmup_steps, state=jax.device_get(out))
    return out
  monkeypatch.setattr(warmup.WarmupRestart, 'restart', spy)
  train.train_and_evaluate(c, str(tmp_path))
  record = json.load(open(os.path.join(tmp_path, warmup.BEST_RECORD)))
  assert seen['steps'] == 5 and record['step'] in (2, 4, 5)
  with open(os.path.join(tmp_path, warmup.BEST_WEIGHTS), 'rb') as f:
    best = flax.serialization.msgpack_restore(f.read())
  jax.tree_util.tree_map(np.testing.assert_array_equal, seen['state'].params, best['params'])
  traces = [s.trace for s in jax.tree_util.tree_leaves(
      seen['state'].opt_state, is_leaf=lambda x: isinstance(x, optax.TraceState))
            if isinstance(s, optax.TraceState)]
  assert traces and all(np.abs(x).max() == 0 for x in jax.tree_util.tree_leaves(traces))


def test_restart_needs_a_warmup():
  c = tiny_config('mlc', 'all', meta__warmup_restart=True)
  with pytest.raises(ConfigError, match=r'^config.meta.warmup_restart=True: .* set '
                                        r'meta.warmup_epochs > 0'):
    validate_config(c)
