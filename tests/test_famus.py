"""FaMUS: layer lists, pooling, gates through the straight-through estimator,
auxiliary losses, samplers, static scope (FLOPs) and dynamic pruning levels."""

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import famus_jax as fj
from famus_jax import famus, models
from famus_jax.core import lookahead as lookahead_lib

NUM_CLASSES = 4


def meta_config(**overrides):
  cfg = ml_collections.ConfigDict(dict(
      sampler='famus', k=2, s=3, b=1, tau=5.0, lambda1=0.0, lambda2=0.0, delta=0.1,
      candidate_layers='all', granularity='module', prune_levels=1))
  cfg.update(overrides)
  return cfg


@functools.lru_cache(maxsize=None)
def problem():
  """A tiny digits CNN (3 residual blocks), batches and its params."""
  model = models.get_model('digits_cnn', num_classes=NUM_CLASSES, width=4, depth=2)
  rng = np.random.default_rng(0)
  train = {'image': jnp.asarray(rng.normal(size=(8, 8, 8, 1)), jnp.float32),
           'label': jnp.asarray(rng.integers(0, NUM_CLASSES, 8), jnp.int32)}
  val = {'image': jnp.asarray(rng.normal(size=(6, 8, 8, 1)), jnp.float32),
         'label': jnp.asarray(rng.integers(0, NUM_CLASSES, 6), jnp.int32)}
  variables = model.init(jax.random.PRNGKey(0), train['image'], train=False)
  return model, variables['params'], variables['batch_stats'], train, val


def setup_for(sampler=None, scope=None, mode='jvp', method='mwnet'):
  model = problem()[0]
  return fj.StepSetup(
      apply_fn=model.apply, meta_model=fj.get_meta_model(method),
      tx=fj.sgd_with_weight_decay(0.1), meta_tx=fj.make_meta_optimizer('sgd', 0.1),
      lr_schedule=optax.constant_schedule(0.1), mode=mode, scope=scope, sampler=sampler)


def flat(tree):
  return jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


# ---------------------------------------------------------------- layers, pooling

def test_pooling_shapes_for_conv_dense_bias_and_norm():
  assert famus.pool_tensor(jnp.ones((3, 3, 5, 7))).shape == (7,)
  assert famus.pool_tensor(jnp.ones((5, 7))).shape == (7,)
  assert famus.pool_tensor(jnp.ones((7,))).shape == (7,)
  assert famus.pool_tensor(jnp.ones(())).shape == (1,)
  kernel = jnp.arange(2 * 2 * 3 * 4, dtype=jnp.float32).reshape(2, 2, 3, 4)
  np.testing.assert_allclose(famus.pool_tensor(kernel), kernel.reshape(-1, 4).mean(0))
  x = famus.standardize(jnp.array([1.0, 2.0, 3.0]))
  np.testing.assert_allclose([float(x.mean()), float(x.std())], [0.0, 1.0], atol=1e-6)
  np.testing.assert_array_equal(famus.standardize(jnp.ones(4)), jnp.zeros(4))


@pytest.mark.parametrize('granularity', ['module', 'tensor'])
def test_layer_lists_cover_every_leaf_once(granularity):
  model, params, _, train, _ = problem()
  layers = famus.network_layers(model, params, train['image'], granularity)
  names = [p for layer in layers for p in layer.paths]
  assert sorted('/'.join(p) for p in names) == sorted(lookahead_lib.leaf_paths(params))
  assert len(names) == len(set(names))
  if granularity == 'module':
    kinds = {layer.name: layer.kind for layer in layers}
    assert layers[0].name.startswith('stem') and layers[-1].name.startswith('head')
    assert {'conv', 'norm', 'dense'} <= set(kinds.values())
    by_path = dict(zip(lookahead_lib.leaf_paths(params), jax.tree_util.tree_leaves(params)))
    dims = famus.pooling.feature_dims(by_path, layers)
    conv = next(i for i, l in enumerate(layers) if l.kind == 'conv')
    kernel_out = by_path['/'.join(layers[conv].paths[0])].shape[-1]
    assert dims[conv] == sum(by_path['/'.join(p)].shape[-1] for p in layers[conv].paths)
    assert dims[conv] >= kernel_out
  else:
    assert all(len(layer.paths) == 1 for layer in layers)


def test_candidate_selection_top_and_names():
  model, params, _, train, _ = problem()
  layers = famus.network_layers(model, params, train['image'])
  assert famus.select_candidates(layers, 'top:3') == layers[-3:]
  picked = famus.select_candidates(layers, f'{layers[0].name},{layers[-1].name}')
  assert picked == (layers[0], layers[-1])


# ---------------------------------------------------------------- gates, exactness

def gated_meta_grad(gates, mode, sampler):
  model, params, stats, train, val = problem()
  mw = fj.get_meta_model('mwnet')
  theta = mw.init(jax.random.PRNGKey(1), NUM_CLASSES)
  return fj.meta_grad(theta, params, train, val, apply_fn=model.apply, meta_model=mw,
                      lr=0.1, batch_stats=stats, mode=mode,
                      gate=None if gates is None else sampler.leaf_gates(gates))


@pytest.mark.parametrize('mode', ['jvp', 'reverse'])
def test_all_gates_on_is_exact_and_all_off_is_zero(mode):
  model, params, _, train, _ = problem()
  sampler = famus.build_sampler(meta_config(), model, params, train['image'])
  exact = gated_meta_grad(None, mode, sampler)
  on = gated_meta_grad(jnp.ones(sampler.num_layers), mode, sampler)
  chex.assert_trees_all_close(on.theta, exact.theta, rtol=1e-5, atol=1e-9)
  off = gated_meta_grad(jnp.zeros(sampler.num_layers), mode, sampler)
  assert float(jnp.max(jnp.abs(flat(off.theta)))) == 0.0
  assert float(jnp.max(jnp.abs(flat(exact.theta)))) > 0.0


def test_gated_jvp_equals_jax_grad_of_gated_reference():
  model, params, _, train, _ = problem()
  sampler = famus.build_sampler(meta_config(), model, params, train['image'])
  gates = jnp.asarray(np.random.default_rng(3).integers(0, 2, sampler.num_layers),
                      jnp.float32).at[-1].set(1.0)
  fast = gated_meta_grad(gates, 'jvp', sampler)
  ref = gated_meta_grad(gates, 'reverse', sampler)
  chex.assert_trees_all_close(fast.theta, ref.theta, rtol=1e-5, atol=1e-9)
  chex.assert_trees_all_close(fast.gate, ref.gate, rtol=1e-4, atol=1e-9)


def test_sampler_gradient_is_the_analytic_inner_product_through_st():
  """η's gradient = VJP of the soft gates with ∂L/∂r_l = −α⟨v_l, ḡ_l⟩ + λ1·2(Σr − K)."""
  model, params, stats, train, val = problem()
  sampler = famus.build_sampler(meta_config(lambda1=0.1), model, params, train['image'])
  setup = setup_for(sampler)
  state = fj.create_train_state(jax.random.PRNGKey(0), model, train['image'],
                                NUM_CLASSES, setup)
  new_state, metrics = jax.jit(functools.partial(fj.meta_train_step, setup=setup))(
      state, train, val)
  # Recompute by hand with the same RNG stream.
  _, fwd_rng, val_rng, sampler_rng = jax.random.split(state.rng, 4)
  mw = setup.meta_model
  grad = fj.meta_grad(state.meta_params, state.params, train, val, apply_fn=model.apply,
                      meta_model=mw, lr=0.1, batch_stats=stats, mode='jvp')
  features = sampler.features(grad.virtual.grads)
  gates, gates_vjp = jax.vjp(lambda eta: sampler.gates(eta, features, sampler_rng),
                             state.sampler_params)
  np.testing.assert_array_equal(np.asarray(metrics['gates']), np.asarray(gates))
  assert set(np.unique(np.asarray(gates))) <= {0.0, 1.0}
  by_layer = []
  v = dict(zip(lookahead_lib.leaf_paths(grad.val_grads), jax.tree_util.tree_leaves(grad.val_grads)))
  g = dict(zip(lookahead_lib.leaf_paths(grad.virtual.grads),
               jax.tree_util.tree_leaves(grad.virtual.grads)))
  for layer in sampler.layers:
    by_layer.append(sum(-0.1 * jnp.vdot(v['/'.join(p)], g['/'.join(p)]) for p in layer.paths))
  d_rate = 2 * (jnp.sum(gates) - sampler.k) * jnp.ones_like(gates)
  assert float(jnp.min(jnp.abs(d_rate))) > 0  # L_r reaches every gate
  eta_grad = gates_vjp(jnp.stack(by_layer) + 0.1 * d_rate)[0]
  expected = optax.apply_updates(state.sampler_params, optax.sgd(0.1, momentum=0.9).update(
      eta_grad, optax.sgd(0.1, momentum=0.9).init(eta_grad))[0])
  chex.assert_trees_all_close(new_state.sampler_params, expected, rtol=1e-4, atol=1e-7)
  assert float(jnp.linalg.norm(flat(eta_grad))) > 0


def test_matching_loss_gradient_reaches_theta():
  model, params, _, train, val = problem()
  outs = {}
  for lam in (0.0, 1.0):
    sampler = famus.build_sampler(meta_config(lambda2=lam), model, params, train['image'])
    setup = setup_for(sampler)
    state = fj.create_train_state(jax.random.PRNGKey(0), model, train['image'],
                                  NUM_CLASSES, setup)
    outs[lam] = jax.jit(functools.partial(fj.meta_train_step, setup=setup))(state, train, val)
  assert 'matching_loss' in outs[1.0][1] and np.isfinite(float(outs[1.0][1]['matching_loss']))
  assert not np.allclose(flat(outs[0.0][0].meta_params), flat(outs[1.0][0].meta_params))


def test_famus_step_jvp_and_reverse_agree():
  model, params, _, train, val = problem()
  sampler = famus.build_sampler(meta_config(lambda1=0.1, lambda2=0.1), model, params,
                                train['image'])
  results = []
  for mode in ('jvp', 'reverse'):
    setup = setup_for(sampler, mode=mode)
    state = fj.create_train_state(jax.random.PRNGKey(0), model, train['image'],
                                  NUM_CLASSES, setup)
    results.append(jax.jit(functools.partial(fj.meta_train_step, setup=setup))(
        state, train, val))
  chex.assert_trees_all_close(results[0][0].meta_params, results[1][0].meta_params,
                              rtol=1e-4, atol=1e-8)
  chex.assert_trees_all_close(results[0][0].sampler_params, results[1][0].sampler_params,
                              rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------- samplers

def test_random_selects_exactly_s_layers():
  model, params, _, train, _ = problem()
  sampler = famus.build_sampler(meta_config(sampler='random', s=3), model, params,
                                train['image'])
  picks = [sampler.select(None, None, jax.random.PRNGKey(i)).gates for i in range(20)]
  assert all(float(p.sum()) == 3.0 for p in picks)
  assert len({tuple(np.asarray(p)) for p in picks}) > 1


def test_block_sampler_is_the_static_scope_of_block_b():
  model, params, _, train, _ = problem()
  layers = famus.network_layers(model, params, train['image'])
  for b in (1, 2):
    scope = famus.static_scope(meta_config(sampler='block', b=b), model, params, train['image'])
    expected = {'/'.join(p) for l in layers if l.block == b for p in l.paths}
    assert scope == expected and all(name.startswith(f'block{b}/') for name in scope)
  assert famus.build_sampler(meta_config(sampler='block'), model, params, train['image']) is None


def test_leaves_outside_scope_get_no_path_and_cost_no_flops():
  model, params, _, train, val = problem()
  scope = famus.static_scope(meta_config(sampler='all', candidate_layers='top:2'),
                             model, params, train['image'])
  assert scope is not None and all(n.startswith('head/') or n.startswith('block2/')
                                   for n in scope)
  flops = {}
  for name, s in (('all', None), ('top2', scope)):
    setup = setup_for(scope=s)
    state = fj.create_train_state(jax.random.PRNGKey(0), model, train['image'],
                                  NUM_CLASSES, setup)
    step = jax.jit(functools.partial(fj.meta_train_step, setup=setup))
    flops[name] = step.lower(state, train, val).compile().cost_analysis()['flops']
  assert flops['top2'] < 0.85 * flops['all']
  # and no path: gate gradients and v are exactly zero outside the scope
  mw = fj.get_meta_model('mwnet')
  ones = jax.tree_util.tree_map(lambda x: jnp.ones(()), params)
  got = fj.meta_grad(mw.init(jax.random.PRNGKey(1), 4), params, train, val,
                     apply_fn=model.apply, meta_model=mw, lr=0.1,
                     batch_stats=problem()[2], scope=scope, gate=ones)
  inside = []
  for name, gg, v in zip(lookahead_lib.leaf_paths(params), jax.tree_util.tree_leaves(got.gate),
                         jax.tree_util.tree_leaves(got.val_grads)):
    if name in scope:
      inside.append(float(jnp.abs(gg)))
    else:
      assert float(gg) == 0.0 and float(jnp.max(jnp.abs(v))) == 0.0
  assert max(inside) > 0.0


def test_pruning_levels_are_exact_and_pick_the_smallest_scope():
  model, params, _, train, val = problem()
  cfg = meta_config(sampler='random', s=2, prune_levels=3)
  sampler = famus.build_sampler(cfg, model, params, train['image'])
  assert len(sampler.levels) == 3 and sampler.levels[-1] == famus.leaf_names(sampler.layers)
  assert sampler.levels[0] < sampler.levels[1] < sampler.levels[2]
  top = jnp.zeros(sampler.num_layers).at[-1].set(1.0)
  bottom = jnp.zeros(sampler.num_layers).at[0].set(1.0)
  assert int(sampler.level(top)) == 0 and int(sampler.level(bottom)) == 2
  for gates in (top, bottom, top.at[0].set(1.0)):
    mw = fj.get_meta_model('mwnet')
    theta = mw.init(jax.random.PRNGKey(1), NUM_CLASSES)
    _, params_, stats, _, _ = problem()
    from famus_jax.core import forward, meta_gradient
    fwd = forward.train_forward(model.apply, params_, stats, train['image'])
    kw = dict(apply_fn=model.apply, meta_model=mw, lookahead=fj.core.Lookahead(lr=0.1),
              batch_stats=stats, gate=sampler.leaf_gates(gates))
    pruned = meta_gradient.meta_grad_from_forward(
        fwd, theta, params_, train['label'], val, levels=sampler.levels,
        level=sampler.level(gates), **kw)
    full = meta_gradient.meta_grad_from_forward(fwd, theta, params_, train['label'], val, **kw)
    scale = float(jnp.max(jnp.abs(flat(full.theta))))
    assert scale > 0
    chex.assert_trees_all_close(pruned.theta, full.theta, rtol=0, atol=1e-4 * scale)


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize('overrides, message', [
    (dict(k=99), r'meta.k=99 is out of range: K .* integer in \[1, '),
    (dict(sampler='random', s=0), r'meta.s=0 is out of range'),
    (dict(sampler='block', b=7), r'meta.b=7 is out of range'),
    (dict(sampler='layerwise'), r"Unknown sampler 'layerwise' \(config field meta.sampler\)"),
    (dict(candidate_layers='top:0'), r"meta.candidate_layers='top:0'"),
    (dict(candidate_layers='nope'), r'meta.candidate_layers names unknown layers'),
    (dict(granularity='block'), r'meta.granularity must be one of'),
    (dict(k=3, candidate_layers='top:2'), r'meta.k=3 is out of range.*2 candidate layers'),
])
def test_config_errors_name_the_field(overrides, message):
  model, params, _, train, _ = problem()
  with pytest.raises(ValueError, match=message):
    famus.build_sampler(meta_config(**overrides), model, params, train['image'])
