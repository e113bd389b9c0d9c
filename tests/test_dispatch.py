"""Run-time choice of the meta scope: host dispatch between precompiled scope
programs, the gates' gradient under pruning, the cost-weighted L_r, the
batched gradient samplers and the FaMUS config checks."""

import functools
import importlib.util
import logging
import pathlib

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import famus_jax as fj
from famus_jax import famus
from famus_jax.core import forward as forward_lib
from famus_jax.core import lookahead as lookahead_lib
from famus_jax.core import meta_gradient as meta_grad_lib
from famus_jax.famus import gumbel
from famus_jax.training import build as build_lib
from famus_jax.training import config as config_lib
from famus_jax.training import sharding as sharding_lib
from famus_jax.training import strategies
from tiny_models import NUM_CLASSES, TinyCNN, init_model, make_batches

LEVELS = 3
CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'configs'


def meta_config(**overrides):
  cfg = ml_collections.ConfigDict(dict(
      sampler='famus', k=2, s=1, b=1, tau=5.0, lambda1=0.1, lambda2=0.1, delta=0.1,
      candidate_layers='all', granularity='module', prune_levels=LEVELS,
      dispatch='host', gate_grad='all', rate_cost='count'))
  cfg.update(overrides)
  return cfg


@functools.lru_cache(maxsize=None)
def problem():
  """TinyCNN (candidate layers Conv_0, BatchNorm_0, Dense_0: one per scope)."""
  train, val = make_batches(seed=0)
  model = TinyCNN()
  params, stats = init_model(model, train['image'])
  return model, params, stats, train, val


def setup_for(sampler):
  return fj.StepSetup(
      apply_fn=problem()[0].apply, meta_model=fj.get_meta_model('mwnet'),
      tx=fj.sgd_with_weight_decay(0.1), meta_tx=fj.make_meta_optimizer('sgd', 0.1),
      lr_schedule=optax.constant_schedule(0.1), sampler=sampler)


def sampler_for(**overrides):
  model, params, _, train, _ = problem()
  return famus.build_sampler(meta_config(**overrides), model, params, train['image'])


def force_level(sampler, state, level: int):
  """State whose sampler selects one layer of scope `level` and nothing outside
  it (the last Dense's bias of Γ made decisive: +/-30 logits)."""
  layer_level = np.asarray(sampler.layer_level)
  chosen = int(np.flatnonzero(layer_level == level)[-1])
  bias = np.zeros((sampler.num_layers, 2), np.float32)
  bias[layer_level > level] = (30.0, -30.0)
  bias[chosen] = (-30.0, 30.0)
  eta = jax.tree_util.tree_map(lambda x: x, state.sampler_params)
  eta['Dense_2']['bias'] = jnp.asarray(bias)
  return state.replace(sampler_params=eta)


# ------------------------------------------------------- host-dispatch programs

@pytest.mark.parametrize('sampler_name', ['famus', 'random'])
def test_every_scope_program_equals_the_single_gated_program(sampler_name):
  """meta_begin + meta_finish(level=j) (jit, every scope program j that holds
  the selection) gives the new state and metrics of the one-program gated step
  (dispatch 'none', gates as data) and of the lax.switch step."""
  sampler = sampler_for(sampler=sampler_name)
  assert len(sampler.levels) == LEVELS
  model, _, _, train, val = problem()
  setup = setup_for(sampler)
  single = {d: jax.jit(functools.partial(
      fj.meta_train_step, setup=setup_for(sampler_for(sampler=sampler_name, dispatch=d))))
            for d in ('none', 'switch')}
  begin = jax.jit(functools.partial(fj.meta_begin, setup=setup))
  finish = [jax.jit(functools.partial(fj.meta_finish, setup=setup, level=j))
            for j in range(LEVELS)]
  state0 = fj.create_train_state(jax.random.PRNGKey(0), model, train['image'],
                                 NUM_CLASSES, setup)
  seen = set()
  for seed in range(40):
    state = state0.replace(rng=jax.random.PRNGKey(seed))
    level = seed % LEVELS
    if sampler_name == 'famus':
      state = force_level(sampler, state, level)
    b = begin(state, train)
    level = int(b.selection.level)
    if sampler_name == 'random' and level in seen:
      continue
    seen.add(level)
    want = {d: step(state, train, val) for d, step in single.items()}
    assert int(want['none'][1]['scope_level']) == level
    for j in range(level, LEVELS):
      got_state, got_metrics = finish[j](state, b, train, val)
      for ref_state, ref_metrics in want.values():
        chex.assert_trees_all_close(got_state, ref_state, rtol=1e-5, atol=1e-6)
        for key in ('val_loss', 'meta_grad_norm', 'weights', 'gates'):
          np.testing.assert_allclose(got_metrics[key], ref_metrics[key],
                                     rtol=1e-5, atol=1e-7)
    if seen == set(range(LEVELS)):
      break
  assert seen == set(range(LEVELS))


def test_scope_program_leaves_out_the_layers_below_it():
  """The lowest scope program of a top selection runs fewer FLOPs than the
  top-level one (XLA cost analysis of the compiled programs)."""
  sampler = sampler_for()
  model, _, _, train, val = problem()
  setup = setup_for(sampler)
  state = fj.create_train_state(jax.random.PRNGKey(0), model, train['image'],
                                NUM_CLASSES, setup)
  b = jax.jit(functools.partial(fj.meta_begin, setup=setup))(state, train)
  flops = [jax.jit(functools.partial(fj.meta_finish, setup=setup, level=j)).lower(
      state, b, train, val).compile().cost_analysis()['flops'] for j in range(LEVELS)]
  assert flops[0] < flops[1] < flops[2]


def test_host_dispatch_runs_the_program_of_the_selection():
  sampler = sampler_for()
  model, _, _, train, val = problem()
  setup = setup_for(sampler)
  mesh = sharding_lib.make_mesh(1)
  dispatch = strategies.make_dispatcher(setup, mesh)
  assert isinstance(dispatch, strategies.HostDispatch)
  assert set(dispatch.programs) == {'meta_begin'} | {f'meta_scope{j}' for j in range(LEVELS)}
  reference = jax.jit(functools.partial(
      fj.meta_train_step, setup=setup_for(sampler_for(dispatch='none'))))
  state0 = fj.create_train_state(jax.random.PRNGKey(0), model, train['image'],
                                 NUM_CLASSES, setup)
  for level in (0, 2):
    state = force_level(sampler, state0, level)
    want_state, _ = reference(state, train, val)
    state = jax.tree_util.tree_map(jnp.copy, state)  # the dispatcher donates it
    got_state, metrics = dispatch(state, train, val)
    assert bool(metrics['finite'])
    chex.assert_trees_all_close(got_state, want_state, rtol=1e-5, atol=1e-6)
  assert dispatch.counts == {'meta_scope0': 1, 'meta_scope2': 1}
  assert strategies.make_dispatcher(setup_for(sampler_for(prune_levels=1)), mesh
                                    ).programs.keys() == {'meta'}


# ------------------------------------------------ the gates' gradient, pruned

def test_gate_gradient_under_pruning():
  """∂L^val/∂r per gated leaf: gate_grad='all' gives, on every scope program and
  through lax.switch, the unpruned straight-through gradient (−α⟨v_l, g_l⟩ on
  every candidate leaf); 'scope' gives it on the leaves of the running scope
  and exactly 0 on the others. θ's gradient is the same in all cases."""
  sampler = sampler_for()
  model, params, stats, train, val = problem()
  mw = fj.get_meta_model('mwnet')
  theta = mw.lookahead_params(mw.init(jax.random.PRNGKey(1), NUM_CLASSES), 6)
  gates = jnp.zeros((sampler.num_layers,)).at[-1].set(1.0)
  leaf_gates = sampler.leaf_gates(gates)

  def grad(level, gate_grad):
    fwd = forward_lib.train_forward(model.apply, params, stats, train['image'])
    return meta_grad_lib.meta_grad_from_forward(
        fwd, theta, params, train['label'], val, apply_fn=model.apply, meta_model=mw,
        lookahead=lookahead_lib.Lookahead(lr=0.1), batch_stats=stats, gate=leaf_gates,
        levels=None if level is None else sampler.levels, level=level,
        gate_grad=gate_grad)

  full = jax.jit(lambda: grad(None, 'scope'))()
  v = dict(zip(lookahead_lib.leaf_paths(full.val_grads),
               jax.tree_util.tree_leaves(full.val_grads)))
  g = dict(zip(lookahead_lib.leaf_paths(full.virtual.grads),
               jax.tree_util.tree_leaves(full.virtual.grads)))
  analytic = {k: -0.1 * float(jnp.vdot(v[k], g[k])) for k in v}
  assert sum(abs(x) for x in analytic.values()) > 0
  np.testing.assert_allclose(
      [float(x) for x in jax.tree_util.tree_leaves(full.gate)],
      [analytic[k] for k in lookahead_lib.leaf_paths(full.gate)], rtol=1e-4, atol=1e-9)
  switch_level = jnp.asarray(0, jnp.int32)
  for level, label in ((0, 'static'), (1, 'static'), (switch_level, 'switch')):
    scope = sampler.levels[int(level)]
    for gate_grad in ('all', 'scope'):
      got = jax.jit(lambda lv, gg=gate_grad: grad(lv, gg))(level) if label == 'switch' \
          else jax.jit(lambda lv=level, gg=gate_grad: grad(lv, gg))()
      chex.assert_trees_all_close(got.theta, full.theta, rtol=1e-5, atol=1e-8)
      for name, value in zip(lookahead_lib.leaf_paths(got.gate),
                             jax.tree_util.tree_leaves(got.gate)):
        if gate_grad == 'scope' and name not in scope:
          assert float(value) == 0.0, (name, label)
        else:
          np.testing.assert_allclose(float(value), analytic[name], rtol=1e-4, atol=1e-9)


# ------------------------------------------------------------- cost-weighted L_r

def test_flops_rate_cost_weights_lower_layers_more():
  count, flops = sampler_for(rate_cost='count'), sampler_for(rate_cost='flops')
  assert count.rate_weights == ()
  c = np.asarray(flops.rate_weights)
  assert c.shape == (flops.num_layers,)
  np.testing.assert_allclose(c.mean(), 1.0, rtol=1e-6)
  assert np.all(np.diff(c) <= 0) and c[0] > c[-1]  # forward order: bottom costs most
  by_level = {lv: c[np.asarray(flops.layer_level) == lv] for lv in range(LEVELS)}
  assert all(np.ptp(x) == 0 for x in by_level.values())  # one cost per scope
  gates = jnp.zeros((flops.num_layers,)).at[0].set(1.0).at[-1].set(1.0)
  np.testing.assert_allclose(flops.rate_loss(gates), (c[0] + c[-1] - flops.k) ** 2,
                             rtol=1e-5)
  np.testing.assert_allclose(count.rate_loss(gates), (2.0 - count.k) ** 2)
  with pytest.raises(ValueError, match='meta.rate_cost'):
    sampler_for(rate_cost='time')


def test_scope_rate_cost_prices_the_marginal_scope_one_sided():
  """rate_cost='scope': L_r = (Σ r − K)² + Σ m_l r_l, m_l = (F_j − F_0) / (F_top − F_0)
  of the FLOPs F_j of layer l's smallest scope (checked against the flops weights)."""
  flops, scope = sampler_for(rate_cost='flops'), sampler_for(rate_cost='scope')
  assert scope.rate_weights == () and len(scope.scope_costs) == scope.num_layers
  c = np.asarray(flops.rate_weights)  # ∝ F_j per layer, so m_l follows from c
  expected = (c - c.min()) / (c.max() - c.min())
  np.testing.assert_allclose(scope.scope_costs, expected, rtol=1e-6, atol=1e-9)
  levels = np.asarray(scope.layer_level)
  m = np.asarray(scope.scope_costs)
  assert np.all(m[levels == 0] == 0.0) and np.all(m[levels == LEVELS - 1] == 1.0)
  gates = jnp.zeros((scope.num_layers,)).at[0].set(1.0).at[-1].set(1.0)
  np.testing.assert_allclose(scope.rate_loss(gates),
                             (2.0 - scope.k) ** 2 + m[0] + m[-1], rtol=1e-6)
  # its gradient: 2 (Σ r − K) + m_l for every layer (the price pushes low layers off)
  np.testing.assert_allclose(jax.grad(scope.rate_loss)(gates),
                             2 * (2.0 - scope.k) + m, rtol=1e-6, atol=1e-7)


def test_dispatch_and_gate_grad_names_are_checked():
  with pytest.raises(ValueError, match='meta.dispatch'):
    sampler_for(dispatch='thread')
  with pytest.raises(ValueError, match='meta.gate_grad'):
    sampler_for(gate_grad='some')
  config = config_lib.base_config()
  assert config.meta.dispatch in famus.DISPATCHES
  config.meta.dispatch = 'threads'
  with pytest.raises(config_lib.ConfigError, match='meta.dispatch'):
    config_lib.validate_config(config)


# ---------------------------------------------------------- batched samplers

def test_batched_gradient_samplers_equal_the_per_layer_networks():
  """One vmapped Γ over stacked, zero-padded η and features gives each layer's
  own Γ(f_l; η_l), and `init` stacks the per-layer initialisation unchanged."""
  sampler = sampler_for()
  assert len(set(sampler.feature_dims)) > 1  # padding is exercised
  rng = jax.random.PRNGKey(3)
  net = gumbel.GradientSampler(sampler.hidden)
  per_layer = [net.init(key, jnp.zeros((d,)))['params'] for key, d in
               zip(jax.random.split(rng, sampler.num_layers), sampler.feature_dims)]
  stacked = sampler.init(rng)
  for i, p in enumerate(per_layer):
    sliced = jax.tree_util.tree_map(lambda s, x, i=i: s[i][tuple(map(slice, x.shape))],
                                    stacked, p)
    chex.assert_trees_all_equal(sliced, p)
  assert float(jnp.abs(stacked['Dense_0']['kernel'][0, sampler.feature_dims[0]:]).sum()) == 0
  data = np.random.default_rng(0)
  features = [jnp.asarray(data.normal(size=(d,)), jnp.float32) for d in sampler.feature_dims]
  want = jnp.stack([net.apply({'params': p}, f) for p, f in zip(per_layer, features)])
  np.testing.assert_allclose(jax.jit(sampler.gate_logits)(stacked, features), want,
                             rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------- configs

def load(name):
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_every_famus_config_runs_the_full_famus():
  names = sorted(p.stem for p in CONFIGS.glob('*.py'))
  famus_configs = [n for n in names if load(n).meta.sampler == 'famus']
  assert len(famus_configs) >= 5
  for name in famus_configs:
    meta = load(name).meta
    assert (meta.lambda1, meta.lambda2) == (0.1, 0.1), name


@pytest.mark.parametrize('lambda1,warned', [(0.0, True), (0.1, False)])
def test_famus_without_rate_loss_warns_once_at_start_up(caplog, lambda1, warned):
  config = load('digits')
  config.meta.lambda1 = lambda1
  model = build_lib.build_model(config, 10)
  with caplog.at_level(logging.WARNING):
    build_lib.build_sampler_and_scope(config, model, jnp.zeros((1, 8, 8, 1)))
  lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  if warned:
    assert len(lines) == 1 and 'meta.k=4 has no effect' in lines[0]
    assert '\n' not in lines[0]
  else:
    assert not lines
