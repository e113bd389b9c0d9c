"""Gates drawn one meta iteration ahead (`meta.dispatch='ahead'`): the
straight-through η gradient of stored gates, the draw kept for the next meta
iteration, the first meta iteration, the dispatcher and the checkpoint. (Each
`meta_ahead<j>` program against the one-program step: tests/test_dispatch.py.)"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import famus_jax as fj
from famus_jax.famus import dispatch as dispatch_lib
from famus_jax.famus import gumbel
from famus_jax.training import checkpoint as checkpoint_lib
from famus_jax.training import sharding as sharding_lib
from famus_jax.training import strategies
from test_dispatch import LEVELS, begin_program, dispatcher, parts_for, problem, setup_for
from tiny_models import NUM_CLASSES

AHEAD = [f'meta_ahead{j}' for j in range(LEVELS)]
STATE_METRICS = ('val_loss', 'meta_grad_norm', 'weights', 'gates', 'loss')
FAMUS_METRICS = ('rate_loss', 'matching_loss', 'sampler_grad_norm')


def setups(name, delta=0.1):
  """(ahead setup, the one-program gated reference setup) of sampler `name`."""
  return dispatcher('ahead', name, delta)[1], dispatcher('none', name, delta)[1]


def programs(name, delta=0.1):
  """Jitted meta_ahead<j> for every j, the reference step and meta_begin: the
  programs tests/test_dispatch.py checks against Algorithm 1 (nothing donated)."""
  ahead, ref = dispatcher('ahead', name, delta)[0], dispatcher('none', name, delta)[0]
  return ([ahead.programs[p] for p in AHEAD], ref.programs['meta'],
          begin_program(name, delta))


def init_state(setup, seed=0, mesh=None):
  """A fresh state; with `mesh`, replicated on it as the training loop places it."""
  model, _, _, train, _ = problem()
  state = fj.create_train_state(jax.random.PRNGKey(seed), model, train['image'],
                                NUM_CLASSES, setup)
  return state if mesh is None else sharding_lib.replicate(state, mesh)


def sampler_key(state):
  """The key the meta iteration of `state` gives its sampler."""
  return jax.random.split(state.rng, 4)[3]


def padded(features, width):
  return jnp.stack([jnp.pad(f, (0, width - f.shape[0])) for f in features])


def level_of(sampler, gates) -> int:
  """Smallest scope index holding every selected layer (numpy)."""
  chosen = np.asarray(sampler.scopes.layer_level)[np.asarray(gates) > 0.5]
  return int(chosen.max()) if chosen.size else 0


def without_pending(state):
  return state.replace(sampler_state={})


def assert_same_step(got, want, famus):
  (got_state, got_metrics), (want_state, want_metrics) = got, want
  chex.assert_trees_all_close(without_pending(got_state), without_pending(want_state),
                              rtol=1e-5, atol=1e-6)
  for key in STATE_METRICS + (FAMUS_METRICS if famus else ()):
    np.testing.assert_allclose(got_metrics[key], want_metrics[key], rtol=1e-5,
                               atol=1e-7, err_msg=key)


# ------------------------------------------------- the η gradient of stored gates

def test_stored_gates_are_straight_through_in_the_current_eta():
  """η's step equals −δ ∇_η ⟨∂L_c/∂r + λ1 ∂L_r/∂r, s(η)⟩, s the soft
  select-probabilities of the STORED features and noise under the current η,
  ∂L_c/∂r from reverse mode through the gated look-ahead; the gates' value is
  exactly the stored one (not the argmax of s)."""
  setup = setups('famus')[0]
  sampler, mw = setup.sampler, setup.meta_model
  model, _, _, train, val = problem()
  state = init_state(setup, seed=1)
  rng = np.random.default_rng(0)
  width = max(sampler.feature_dims)
  features = padded([jnp.asarray(rng.normal(size=(d,)), jnp.float32)
                     for d in sampler.feature_dims], width)
  noise = jax.random.gumbel(jax.random.PRNGKey(7), (sampler.num_layers, 2))
  gates = jnp.asarray([0.0, 1.0, 1.0])
  level = level_of(sampler, gates)
  state = state.replace(sampler_state={
      'gates': gates, 'level': jnp.asarray(level, jnp.int32), 'valid': jnp.asarray(True),
      'features': features, 'noise': noise})
  eta = state.sampler_params
  new_state, metrics = programs('famus')[0][level](state, train, val)
  np.testing.assert_array_equal(metrics['gates'], gates)
  net = gumbel.GradientSampler(sampler.hidden)

  @jax.jit
  def written_out(state):
    theta = mw.lookahead_params(state.meta_params, train['label'].shape[0])
    mg = fj.meta_grad(theta, state.params, train, val, apply_fn=model.apply, meta_model=mw,
                      lr=0.1, mode='reverse', batch_stats=state.batch_stats,
                      gate=sampler.leaf_gates(gates))
    d_gates = jnp.zeros(sampler.num_layers)
    for layer, g in zip(sampler.leaf_layer, jax.tree_util.tree_leaves(mg.gate)):
      if layer >= 0:
        d_gates = d_gates.at[layer].add(g)
    d_rate = 2.0 * (jnp.sum(gates) - sampler.k)
    cotangent = d_gates + sampler.lambda1 * d_rate

    def soft(eta):
      logits = jax.vmap(lambda p, f: net.apply({'params': p}, f))(eta, features)
      return jax.nn.softmax((logits + noise) / sampler.tau, axis=-1)[:, 1]

    return jax.grad(lambda e: jnp.vdot(cotangent, soft(e)))(state.sampler_params)

  eta_grad = written_out(state)
  assert float(optax_norm(eta_grad)) > 0
  want = jax.tree_util.tree_map(lambda p, g: p - sampler.delta * g, eta, eta_grad)
  chex.assert_trees_all_close(new_state.sampler_params, want, rtol=1e-4, atol=1e-7)


def optax_norm(tree):
  return jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree_util.tree_leaves(tree)))


# ------------------------------------------------------- the draw kept for later

@pytest.mark.parametrize('name', ['famus', 'random'])
def test_next_gates_are_drawn_from_this_iterations_gradient(name):
  """The new pending draw: hard gates of Γ(this iteration's standardized pooled
  Virtual-Train gradient; updated η) + Gumbel noise of fold_in(sampler key, 1)
  (random: s layers of that key's permutation), its scope level, valid. A
  large sampler step (δ = 30) makes the updated η's gates differ from the old
  η's on some states."""
  delta = 30.0 if name == 'famus' else 0.1
  setup = setups(name, delta)[0]
  sampler = setup.sampler
  ahead, _, begin = programs(name, delta)
  _, _, _, train, val = problem()
  levels, moved = set(), False
  for seed in range(30):
    state = init_state(setup, seed=seed)
    new_state, _ = ahead[LEVELS - 1](state, train, val)
    got = new_state.sampler_state
    key = jax.random.fold_in(sampler_key(state), 1)
    if name == 'famus':
      features = padded(sampler.features(begin(without_pending(state), train).virtual.grads),
                        max(sampler.feature_dims))
      noise = jax.random.gumbel(key, (sampler.num_layers, 2))
      net = gumbel.GradientSampler(sampler.hidden)
      np.testing.assert_allclose(got['features'], features, rtol=1e-5, atol=1e-6)
      np.testing.assert_array_equal(got['noise'], noise)
      hard = lambda eta: np.asarray(jnp.diff(jax.vmap(
          lambda p, f: net.apply({'params': p}, f))(eta, features) + noise)[:, 0] > 0,
                                    np.float32)
      want = hard(new_state.sampler_params)
      moved |= bool(np.any(hard(state.sampler_params) != want))
    else:
      want = np.zeros(sampler.num_layers, np.float32)
      want[np.asarray(jax.random.permutation(key, sampler.num_layers))[:sampler.s]] = 1
      moved = True
    np.testing.assert_array_equal(got['gates'], want)
    assert int(got['level']) == level_of(sampler, want)
    assert bool(got['valid'])
    levels.add(level_of(sampler, want))
    if moved and levels == set(range(LEVELS)):
      break
  assert moved and levels == set(range(LEVELS))


def test_first_meta_iteration_draws_its_gates_now_on_the_full_scope():
  """No valid draw: the dispatcher runs the full scope, and the iteration is the
  gated step's (its gates drawn now, η's straight-through step included)."""
  parts = parts_for(sampler='famus', dispatch='ahead')
  _, _, _, train, val = problem()
  state = init_state(parts.setup)
  assert not bool(state.sampler_state['valid'])
  assert int(state.sampler_state['level']) == LEVELS - 1
  want = programs('famus')[1](without_pending(state), train, val)
  assert float(want[1]['sampler_grad_norm']) > 0
  mesh = sharding_lib.make_mesh(1)
  dispatch = parts.dispatcher(strategies.compiler(mesh))
  got = dispatch(sharding_lib.replicate(jax.tree_util.tree_map(jnp.copy, state), mesh),
                 train, val)
  assert dispatch.counts == {f'meta_ahead{LEVELS - 1}': 1}
  assert_same_step(got, want, famus=True)
  assert bool(got[1]['finite']) and bool(got[0].sampler_state['valid'])


# ------------------------------------------------------------------ dispatcher

def test_dispatcher_runs_the_stored_level_and_compiles_each_program_on_first_use():
  """Through the strategy (warm-up 1, meta every 2nd iteration): plain and
  weighted iterations keep the pending draw; each meta iteration runs
  meta_ahead<stored level>; a program compiles on its first use, once."""
  parts = parts_for(sampler='random', dispatch='ahead', interval=2)
  setup = parts.setup
  strategy = parts.strategy(sharding_lib.make_mesh(1), warmup_steps=1)
  dispatch = strategy.meta_step
  assert isinstance(dispatch, dispatch_lib.AheadDispatch)
  assert set(dispatch.programs) == set(AHEAD)
  assert all(dispatch.programs[p]._cache_size() == 0 for p in AHEAD)
  _, _, _, train, val = problem()
  state = init_state(setup, mesh=sharding_lib.make_mesh(1))
  expected = []
  for step in range(13):
    before = jax.device_get(state.sampler_state)
    if strategy.program_for(step) == 'meta':
      expected.append(f'meta_ahead{int(before["level"])}')
    state, _ = strategy.run_iteration(step, state, train,
                                      val if strategy.needs_validation(step) else None)
    if strategy.program_for(step) != 'meta':
      chex.assert_trees_all_equal(jax.device_get(state.sampler_state), before)
  assert expected[0] == AHEAD[-1] and len(expected) == 6
  assert dispatch.counts == {p: expected.count(p) for p in set(expected)}
  assert len(set(expected)) > 1
  for p in AHEAD:
    assert dispatch.programs[p]._cache_size() == (1 if p in expected else 0), p


def test_pending_draw_only_with_ahead_dispatch_and_several_scopes():
  for dispatch in ('host', 'none'):
    assert init_state(setup_for(dispatch=dispatch)).sampler_state == {}
  single = parts_for(dispatch='ahead', prune_levels=1)
  assert init_state(single.setup).sampler_state == {}
  assert single.dispatcher().programs.keys() == {'meta'}


def test_checkpoint_round_trip_of_the_pending_draw(tmp_path):
  setup = setups('famus')[0]
  _, _, _, train, val = problem()
  state, _ = programs('famus')[0][LEVELS - 1](init_state(setup), train, val)
  assert bool(state.sampler_state['valid'])
  mesh = sharding_lib.make_mesh(1)
  state = sharding_lib.replicate(state, mesh)  # as the training loop places it
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / 'checkpoints'))
  try:
    ckpt.save(1, state, {'epoch': 0})
    like = jax.eval_shape(jax.jit(lambda: init_state(setup),
                                  out_shardings=sharding_lib.replicated(mesh)))
    restored, _, step = ckpt.restore(like)
  finally:
    ckpt.close()
  assert step == 1
  assert set(restored.sampler_state) == {'gates', 'level', 'valid', 'features', 'noise'}
  chex.assert_trees_all_equal(restored, state)
  chex.assert_trees_all_equal_dtypes(restored, state)
