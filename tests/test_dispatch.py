"""Run-time choice of the meta scope (`famus_jax.famus.dispatch`): nested
scopes at block boundaries, every dispatcher against an independent reference,
Algorithm 1's gates, the FLOPs of the scope programs, the gates' gradient under
pruning, the cost-weighted L_r, the batched gradient samplers and the FaMUS
config checks."""

import functools
import importlib.util
import logging
import pathlib

import chex
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import famus_jax as fj
from famus_jax import famus, models
from famus_jax.core import forward as forward_lib
from famus_jax.core import lookahead as lookahead_lib
from famus_jax.core import meta_gradient as meta_grad_lib
from famus_jax.famus import dispatch as dispatch_lib
from famus_jax.famus import gumbel
from famus_jax.training import build as build_lib
from famus_jax.training import config as config_lib
from tiny_models import NUM_CLASSES, SGD_META, TinyCNN, init_model, make_batches, tiny_parts

LEVELS = 2  # scopes of the TinyCNN setups whose programs are compiled (one per scope)
SAMPLER_LEVELS = 3  # scopes of the samplers' own tests: one per TinyCNN layer
CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'configs'
STATE_METRICS = ('val_loss', 'meta_grad_norm', 'weights', 'gates', 'loss')


def meta_config(**overrides):
  cfg = ml_collections.ConfigDict(dict(
      sampler='famus', k=2, s=1, b=1, tau=5.0, lambda1=0.1, lambda2=0.1, delta=0.1,
      candidate_layers='all', granularity='module', prune_levels=LEVELS,
      dispatch='host', gate_grad='all', rate_cost='count'))
  cfg.update(overrides)
  return cfg


@functools.lru_cache(maxsize=None)
def problem():
  """TinyCNN: candidate layers Conv_0, BatchNorm_0, Dense_0, each its own block;
  `LEVELS` scopes {BatchNorm_0, Dense_0} and all, `SAMPLER_LEVELS` one per layer."""
  train, val = make_batches(seed=0)
  model = TinyCNN()
  params, stats = init_model(model, train['image'])
  return model, params, stats, train, val


def parts_for(mode='jvp', **overrides) -> build_lib.Parts:
  """The builder's parts for TinyCNN with config.meta = `meta_config(**overrides)`,
  the `mode` path and the references' SGD meta optimizer."""
  model, _, _, train, _ = problem()
  return tiny_parts(model, train['image'],
                    meta={**meta_config(**overrides).to_dict(), **SGD_META, 'mode': mode})


def setup_for(mode='jvp', **overrides):
  return parts_for(mode, **overrides).setup


def sampler_for(**overrides):
  """The sampler of TinyCNN, by default with a scope per layer (`SAMPLER_LEVELS`)."""
  model, params, _, train, _ = problem()
  return famus.build_sampler(meta_config(**{'prune_levels': SAMPLER_LEVELS, **overrides}),
                             model, params, train['image'])


def force_level(sampler, state, level: int):
  """State whose sampler selects one layer of scope `level` and nothing outside
  it (the last Dense's bias of Γ made decisive: +/-30 logits)."""
  layer_level = np.asarray(sampler.scopes.layer_level)
  chosen = int(np.flatnonzero(layer_level == level)[-1])
  bias = np.zeros((sampler.num_layers, 2), np.float32)
  bias[layer_level > level] = (30.0, -30.0)
  bias[chosen] = (-30.0, 30.0)
  eta = jax.tree_util.tree_map(lambda x: x, state.sampler_params)
  eta['Dense_2']['bias'] = jnp.asarray(bias)
  return state.replace(sampler_params=eta)


def sampler_key(state):
  """The key a meta iteration of `state` gives its sampler."""
  return jax.random.split(state.rng, 4)[3]


def pending_of(sampler, state, begin) -> dict:
  """The pending draw ('ahead') equal to the gates `begin` drew now: gates,
  level, and FaMUS's features and Gumbel noise (same key)."""
  pending = {'gates': begin.selection.gates, 'level': begin.selection.level,
             'valid': jnp.asarray(True)}
  if isinstance(sampler, famus.FamusSampler):
    pending['features'] = sampler.padded_features(sampler.features(begin.virtual.grads))
    pending['noise'] = jax.random.gumbel(sampler_key(state), (sampler.num_layers, 2))
  return pending


def assert_same_step(got, want, famus_metrics=True):
  (got_state, got_metrics), (want_state, want_metrics) = got, want
  chex.assert_trees_all_close(got_state.replace(sampler_state={}),
                              want_state.replace(sampler_state={}), rtol=1e-5, atol=1e-6)
  keys = STATE_METRICS + (('rate_loss', 'sampler_grad_norm') if famus_metrics else ())
  for key in keys:
    np.testing.assert_allclose(got_metrics[key], want_metrics[key], rtol=1e-5,
                               atol=1e-7, err_msg=key)


# ------------------------------------------------------------------ nested scopes

def layer(name, block):
  return models.Layer(name, ((name, 'kernel'),), block, 'conv')


def test_nested_scopes_halve_the_work_from_all_layers_down():
  """prune_levels=0: all candidates, then each next scope the largest with at
  most half the previous one's work (FLOPs from its block to the output),
  while it holds at least K candidate layers; P >= 2: the blocks of the
  lowest of the top ⌈pL/P⌉ layers; 1: one scope."""
  blocks = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4, 5]        # stem, 4 blocks, head
  cands = tuple(layer(f'l{i}', b) for i, b in enumerate(blocks))
  flops = {0: 1.0, 1: 16.0, 2: 8.0, 3: 4.0, 4: 2.0, 5: 0.5}  # work from block b: 31.5,
  # 30.5, 14.5, 6.5, 2.5, 0.5: halving from 31.5 picks 14.5, 6.5, 2.5; the head alone
  # holds fewer than K layers
  auto = dispatch_lib.nested_scopes(cands, flops, prune_levels=0, min_top_layers=2)
  assert [len(s) for s in auto.scopes] == [4, 6, 8, 11]
  assert auto.layer_level == (3, 3, 3, 2, 2, 1, 1, 0, 0, 0, 0)
  assert auto.scopes[0] < auto.scopes[1] < auto.scopes[2] < auto.scopes[3]
  k5 = dispatch_lib.nested_scopes(cands, flops, prune_levels=0, min_top_layers=5)
  assert [len(s) for s in k5.scopes] == [6, 8, 11]
  one = dispatch_lib.nested_scopes(cands, flops, prune_levels=1)
  assert len(one) == 1 and one.level(jnp.ones(11)) is None
  counted = dispatch_lib.nested_scopes(cands, flops, prune_levels=4)
  # top ⌈11p/4⌉ = 3, 6, 9, 11 layers: lowest in blocks 4, 3, 1, 0
  assert [len(s) for s in counted.scopes] == [4, 6, 10, 11]
  gates = jnp.zeros(11).at[6].set(1.0).at[10].set(1.0)
  assert int(counted.level(gates)) == 1 and int(counted.level(jnp.zeros(11))) == 0
  assert int(counted.level(gates.at[0].set(1.0))) == 3


# ------------------------------------------------------------ the dispatchers

@functools.lru_cache(maxsize=None)
def reference_step(sampler_name):
  """Algorithm 1 in one program with the gates as data, by the readable
  `reverse` path (jax.grad through the gated look-ahead): independent of
  every dispatcher's code."""
  setup = setup_for('reverse', sampler=sampler_name, dispatch='none')
  return jax.jit(functools.partial(fj.meta_train_step, setup=setup))


def dispatcher(name, sampler_name, delta=0.1):
  """(dispatcher `name` of TinyCNN's `sampler_name` sampler, nothing donated, and
  its setup), one per process: these tests, tests/test_dispatch_ahead.py and
  tests/test_protocols.py run the same programs (compiled once per session)."""
  return _dispatcher(name, sampler_name, delta)


@functools.lru_cache(maxsize=None)
def _dispatcher(name, sampler_name, delta):
  parts = parts_for(sampler=sampler_name, dispatch=name, delta=delta)
  return parts.dispatcher(famus.Compiler(donate=False)), parts.setup


def begin_program(sampler_name, delta=0.1):
  """`meta_begin` of the one-program setup, jitted (one per process)."""
  return _begin_program(sampler_name, delta)


@functools.lru_cache(maxsize=None)
def _begin_program(sampler_name, delta):
  return jax.jit(functools.partial(fj.meta_begin,
                                   setup=dispatcher('none', sampler_name, delta)[1]))


def states_per_level(sampler_name):
  """(level, state) with the sampler's gates of that iteration in scope
  `level`, for every level (FaMUS forced, random by the key)."""
  d, setup = dispatcher('none', sampler_name)
  model, _, _, train, _ = problem()
  state0 = fj.create_train_state(jax.random.PRNGKey(0), model, train['image'],
                                 NUM_CLASSES, setup)
  found = {}
  for seed in range(60):
    state = state0.replace(rng=jax.random.PRNGKey(seed))
    if sampler_name == 'famus':
      state = force_level(setup.sampler, state, seed % LEVELS)
    level = int(begin_program(sampler_name)(state, train).selection.level)
    found.setdefault(level, state)
    if len(found) == LEVELS:
      return sorted(found.items())
  raise AssertionError(f'levels seen: {sorted(found)}')


@pytest.mark.parametrize('sampler_name', ['famus', 'random'])
@pytest.mark.parametrize('name', sorted(famus.DISPATCHERS))
def test_every_dispatcher_equals_algorithm_1_in_one_program(name, sampler_name):
  """For the gates Algorithm 1 draws in this iteration (for 'ahead': stored as
  the pending draw), the dispatcher (jit, every scope) gives the new
  parameters, statistics, optimizer states, θ, η and metrics of the reference
  step, runs the program of the smallest scope holding the selection, and
  every larger scope's program gives the same."""
  d, setup = dispatcher(name, sampler_name)
  sampler = setup.sampler
  _, _, _, train, val = problem()
  reference = reference_step(sampler_name)
  for level, state in states_per_level(sampler_name):
    if name == 'ahead':
      begin = begin_program(sampler_name)(state, train)
      state = state.replace(sampler_state=pending_of(sampler, state, begin))
    want = reference(state.replace(sampler_state={}), train, val)  # no pending draw
    before = dict(d.counts)
    got = d(state, train, val)
    assert_same_step(got, want, sampler_name == 'famus')
    ran = set(d.counts.items()) - set(before.items())
    expected = {'host': f'meta_scope{level}', 'ahead': f'meta_ahead{level}'}.get(name, 'meta')
    assert [k for k, _ in ran] == [expected]
    if name == 'host':
      begin = d.programs['meta_begin'](state, train)
      for j in range(level + 1, LEVELS):
        assert_same_step(d.programs[f'meta_scope{j}'](state, begin, train, val), want,
                         sampler_name == 'famus')
    if name == 'ahead':
      for j in range(level + 1, LEVELS):
        assert_same_step(d.programs[f'meta_ahead{j}'](state, train, val), want,
                         sampler_name == 'famus')


def own_eta(stacked, i, dim):
  """Layer i's Γ parameters out of the stacked, zero-padded η."""
  eta = jax.tree_util.tree_map(lambda x: x[i], stacked)
  eta['Dense_0']['kernel'] = eta['Dense_0']['kernel'][:dim]
  return eta


def test_faithful_gates_are_algorithm_1s_bit_for_bit():
  """'host' (Algorithm 1's gates, `meta.dispatch='host'`): the gates of an iteration are Γ(standardised pooled
  Virtual-Train gradient of THIS iteration; η) + Gumbel noise of the
  iteration's sampler key, exactly (Algorithm 1, Eq. 8), written out here."""
  d, setup = dispatcher('host', 'famus')
  sampler = setup.sampler
  model, _, _, train, _ = problem()
  net = gumbel.GradientSampler(sampler.hidden)
  mw = setup.meta_model

  @jax.jit
  def written_out(state):
    theta = mw.lookahead_params(state.meta_params, train['label'].shape[0])
    virtual = fj.virtual_step(theta, state.params, train, apply_fn=model.apply,
                              meta_model=mw, lr=0.1, batch_stats=state.batch_stats,
                              rng=jax.random.split(state.rng, 4)[1])
    by_path = dict(zip(lookahead_lib.leaf_paths(virtual.grads),
                       jax.tree_util.tree_leaves(virtual.grads)))
    logits = jnp.stack([
        net.apply({'params': own_eta(state.sampler_params, i, dim)},
                  famus.standardize(famus.pooled_layer_gradient(by_path, l)))
        for i, (l, dim) in enumerate(zip(sampler.layers, sampler.feature_dims))])
    noise = jax.random.gumbel(sampler_key(state), (sampler.num_layers, 2))
    return jnp.argmax(logits + noise, axis=-1).astype(jnp.float32)

  seen = set()
  for seed in range(6):
    state = fj.create_train_state(jax.random.PRNGKey(seed), model, train['image'],
                                  NUM_CLASSES, setup)
    want = np.asarray(written_out(state))
    begin = d.programs['meta_begin'](state, train)
    np.testing.assert_array_equal(np.asarray(begin.selection.gates), want)
    _, metrics = d(state, train, problem()[4])
    np.testing.assert_array_equal(np.asarray(metrics['gates']), want)
    seen.add(tuple(want))
  assert len(seen) > 1  # the gates vary with the batch's gradient and the noise


def test_scope_programs_leave_out_the_layers_below_and_run_no_forward_twice():
  """XLA's FLOP count on a small residual CNN (random gates: no sampler
  network to hide the base network's FLOPs): the smaller scope's program runs
  fewer FLOPs; 'host' (two programs, the tangent pass the transpose of the
  passed VJP) runs over the full scope what the one gated program runs, up
  to a fraction of one forward pass (recomputing the forward would add a
  whole one); its top scope's program stays near the three forward passes'
  worth it needs."""
  model = models.get_model('digits_cnn', num_classes=NUM_CLASSES, width=4, depth=1)
  rng = np.random.default_rng(0)
  train = {'image': jnp.asarray(rng.normal(size=(16, 8, 8, 1)), jnp.float32),
           'label': jnp.asarray(rng.integers(0, NUM_CLASSES, 16), jnp.int32)}
  variables = model.init(jax.random.PRNGKey(0), train['image'], train=False)
  flops = {}
  for name in ('host', 'none'):  # programs compiled: 3 + 1
    meta = meta_config(sampler='random', s=1, prune_levels=0, dispatch=name).to_dict()
    parts = tiny_parts(model, train['image'], meta={**meta, **SGD_META})
    setup, sampler = parts.setup, parts.sampler
    d = parts.dispatcher(famus.Compiler(donate=False))
    state = fj.create_train_state(jax.random.PRNGKey(0), model, train['image'],
                                  NUM_CLASSES, setup)
    begin = d.programs['meta_begin'](state, train) if name == 'host' else None
    for program in d.program_names():
      args = ((state, train) if program == 'meta_begin' else
              (state, begin, train, train) if name == 'host' else (state, train, train))
      flops[program] = d.compile(program, *args).cost_analysis()['flops']
  forward = jax.jit(lambda v: model.apply(v, train['image'], train=True,
                                          mutable=['batch_stats'])[0]).lower(
                                              variables).compile().cost_analysis()['flops']
  last = len(sampler.scopes) - 1
  assert last == 1  # two scopes: the head and its block, and every layer
  assert flops['meta_scope0'] < flops[f'meta_scope{last}']
  assert flops['meta_begin'] + flops[f'meta_scope{last}'] < flops['meta'] + 0.25 * forward
  # the top scope's program: validation forward, Actual-Train backward (~3
  # forwards) and a small tangent pass: no forward again, no tangent below it
  assert flops['meta_scope0'] < 3.5 * forward


# ------------------------------------------------ the gates' gradient, pruned

def test_gate_gradient_under_pruning():
  """∂L^val/∂r per gated leaf: gate_grad='all' gives, on every scope (the
  transpose pass through lax.switch) and by both tangent passes (on the
  smaller scope, no switch), the unpruned straight-through gradient
  (−α⟨v_l, g_l⟩ on every candidate leaf); 'scope' gives it on the leaves of
  the running scope and exactly 0 on the others. θ's gradient is the same in
  all cases."""
  sampler = sampler_for(prune_levels=LEVELS)
  model, params, stats, train, val = problem()
  mw = fj.get_meta_model('mwnet')
  theta = mw.lookahead_params(mw.init(jax.random.PRNGKey(1), NUM_CLASSES), 6)
  gates = jnp.zeros((sampler.num_layers,)).at[-1].set(1.0)
  leaf_gates = sampler.leaf_gates(gates)

  def grad(scope, gate_grad, tangent_pass='auto'):
    fwd = forward_lib.train_forward(model.apply, params, stats, train['image'])
    return meta_grad_lib.meta_grad_from_forward(
        fwd, theta, params, train['label'], val, apply_fn=model.apply, meta_model=mw,
        lookahead=lookahead_lib.Lookahead(lr=0.1), batch_stats=stats, gate=leaf_gates,
        tangent=scope, gate_grad=gate_grad, tangent_pass=tangent_pass)

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
  scopes = sampler.scopes.scopes
  assert len(scopes) == LEVELS and scopes[0] < scopes[1]

  for gate_grad in ('all', 'scope'):
    # every scope by the transpose pass inside lax.switch (one program), the
    # smallest also by both tangent passes on their own
    switched = jax.jit(lambda level, gg=gate_grad: jax.lax.switch(
        level, [functools.partial(grad, s, gg, 'transpose') for s in scopes]))
    for level in range(LEVELS):
      results = [switched(jnp.asarray(level))]
      if level == 0:
        results += [jax.jit(lambda gg=gate_grad, p=p: grad(scopes[0], gg, p))()
                    for p in ('transpose', 'jvp')]
      for got in results:
        chex.assert_trees_all_close(got.theta, full.theta, rtol=1e-5, atol=1e-8)
        for name, value in zip(lookahead_lib.leaf_paths(got.gate),
                               jax.tree_util.tree_leaves(got.gate)):
          if gate_grad == 'scope' and name not in scopes[level]:
            assert float(value) == 0.0, (name, level)
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
  by_level = {lv: c[np.asarray(flops.scopes.layer_level) == lv] for lv in range(SAMPLER_LEVELS)}
  assert all(np.ptp(x) == 0 for x in by_level.values())  # one cost per scope
  gates = jnp.zeros((flops.num_layers,)).at[0].set(1.0).at[-1].set(1.0)
  np.testing.assert_allclose(flops.rate_loss(gates), (c[0] + c[-1] - flops.k) ** 2,
                             rtol=1e-5)
  np.testing.assert_allclose(count.rate_loss(gates), (2.0 - count.k) ** 2)
  with pytest.raises(ValueError, match='meta.rate_cost'):
    sampler_for(rate_cost='time')


def test_scope_rate_cost_prices_the_marginal_scope_one_sided():
  """rate_cost='scope': L_r = (Σ r − K)² + Σ m_l r_l, m_l = (F_j − F_0) / (F_top − F_0)
  of the meta work F_j of layer l's smallest scope (checked against the flops
  weights), and the select logits' prior −ln(L)·m_l."""
  flops, scope = sampler_for(rate_cost='flops'), sampler_for(rate_cost='scope')
  assert scope.rate_weights == () and len(scope.scope_costs) == scope.num_layers
  c = np.asarray(flops.rate_weights)  # ∝ F_j per layer, so m_l follows from c
  expected = (c - c.min()) / (c.max() - c.min())
  np.testing.assert_allclose(scope.scope_costs, expected, rtol=1e-6, atol=1e-9)
  levels = np.asarray(scope.scopes.layer_level)
  m = np.asarray(scope.scope_costs)
  assert np.all(m[levels == 0] == 0.0) and np.all(m[levels == SAMPLER_LEVELS - 1] == 1.0)
  gates = jnp.zeros((scope.num_layers,)).at[0].set(1.0).at[-1].set(1.0)
  np.testing.assert_allclose(scope.rate_loss(gates),
                             (2.0 - scope.k) ** 2 + m[0] + m[-1], rtol=1e-6)
  # its gradient: 2 (Σ r − K) + m_l for every layer (the price pushes low layers off)
  np.testing.assert_allclose(jax.grad(scope.rate_loss)(gates),
                             2 * (2.0 - scope.k) + m, rtol=1e-6, atol=1e-7)
  # the select prior: −ln(L)·m_l on each layer's select logit, nothing on skip
  np.testing.assert_allclose(scope.select_prior, -np.log(scope.num_layers) * m, rtol=1e-6)
  eta = scope.init(jax.random.PRNGKey(0))
  features = [jnp.ones((d,)) for d in scope.feature_dims]
  plain = sampler_for(rate_cost='count')
  np.testing.assert_allclose(scope.gate_logits(eta, features),
                             plain.gate_logits(eta, features)
                             + np.stack([np.zeros_like(m), scope.select_prior], 1),
                             rtol=1e-6, atol=1e-6)


def test_dispatch_and_gate_grad_names_are_checked():
  with pytest.raises(ValueError, match='meta.dispatch'):
    sampler_for(dispatch='thread')
  with pytest.raises(ValueError, match='meta.gate_grad'):
    sampler_for(gate_grad='some')
  config = config_lib.base_config()
  assert config.meta.dispatch == famus.DEFAULT_DISPATCH == 'ahead'
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


def test_feature_dims_come_from_the_shapes_alone():
  """D_l of each layer (every axis but the last pooled, a bias as is, a scalar
  one) from abstract parameters: nothing is lowered, compiled or allocated."""
  shapes = {'conv/kernel': (3, 5, 7, 11), 'conv/bias': (11,), 'dense/kernel': (13, 17),
            'dense/scale': ()}
  by_path = {k: jax.ShapeDtypeStruct(v, jnp.float32) for k, v in shapes.items()}
  layers = (models.Layer('conv', (('conv', 'bias'), ('conv', 'kernel')), 0, 'conv'),
            models.Layer('dense', (('dense', 'kernel'), ('dense', 'scale')), 1, 'dense'))
  lowered = []

  def listen(event, duration, **kwargs):
    del duration, kwargs
    if event == '/jax/core/compile/jaxpr_to_mlir_module_duration':
      lowered.append(event)

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    dims = famus.pooling.feature_dims(by_path, layers)
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  assert dims == (11 + 11, 17 + 1)
  assert not lowered


# -------------------------------------------------------------------- configs

def load(name):
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


IMAGE_SHAPES = {'digits': (8, 8, 1), 'fashion_mnist': (28, 28, 1), 'clothing1m': (224, 224, 3),
                'webvision': (299, 299, 3)}  # others: 32×32×3


def test_every_famus_config_runs_scoped_famus_over_every_layer():
  """Every config whose sampler is FaMUS runs the paper's full FaMUS (λ1 = λ2
  = 0.1) with every layer a candidate, run-time scopes at block boundaries,
  the scope price on L_r and the default dispatcher; on its own backbone
  (abstractly, nothing compiled) that is at least two nested scopes, priced,
  each ending at a block boundary, the smallest holding the head."""
  names = sorted(p.stem for p in CONFIGS.glob('*.py'))
  famus_configs = [n for n in names if load(n).meta.sampler == 'famus']
  assert {'cifar10', 'cifar100', 'cifar10_lt', 'cifar100_lt', 'clothing1m', 'cnwl',
          'digits', 'fashion_mnist', 'cifar10_alg2', 'webvision_alg2'} <= set(famus_configs)
  built = {}  # configs sharing a backbone, image shape and meta fields share a build
  for name in famus_configs:
    config = load(name)
    meta = config.meta
    assert (meta.lambda1, meta.lambda2) == (0.1, 0.1), name
    assert meta.candidate_layers == 'all' and meta.prune_levels == 0, name
    assert meta.rate_cost == 'scope' and meta.dispatch == famus.DEFAULT_DISPATCH, name
    shape = IMAGE_SHAPES.get(config.data.name, (32, 32, 3))
    key = (config.model.name, config.model.kwargs.to_json(), shape, meta.to_json())
    if key not in built:
      model, images = build_lib.build_model(config, 10), jnp.zeros((1, *shape))
      params = build_lib.abstract_params(config, model, images)
      built[key] = (build_lib.meta_path(config, model, params, images),
                    set(traverse_util.flatten_dict(params)))
    (sampler, scope), leaves = built[key]
    # every module with parameters a candidate layer, every parameter in one
    candidate_leaves = [path for layer in sampler.layers for path in layer.paths]
    assert scope is None and sorted(candidate_leaves) == sorted(leaves), name
    assert len(sampler.layers) == len({path[:-1] for path in leaves}), name
    assert len(sampler.scopes) >= 2 and max(sampler.scope_costs) == 1.0, name
    assert_block_boundary_scopes(sampler, name)
  assert len(built) < len(famus_configs)


def assert_block_boundary_scopes(sampler, name):
  """The smallest scope holds the head; a block is in a scope whole or not at all."""
  layers, level = sampler.layers, sampler.scopes.layer_level
  assert level[-1] == 0, name
  for j in range(len(sampler.scopes)):
    inside = {l.block for l, lv in zip(layers, level) if lv <= j}
    outside = {l.block for l, lv in zip(layers, level) if lv > j}
    assert not inside & outside, (name, j)


@pytest.mark.parametrize('lambda1,warned', [(0.0, True), (0.1, False)])
def test_famus_without_rate_loss_warns_once_at_start_up(caplog, lambda1, warned):
  config = load('digits')
  config.meta.lambda1 = lambda1
  with caplog.at_level(logging.WARNING):
    build_lib.build(config, num_classes=10, image_shape=(8, 8, 1))
  lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  if warned:
    assert len(lines) == 1 and 'meta.k=4 has no effect' in lines[0]
    assert '\n' not in lines[0]
  else:
    assert not lines
