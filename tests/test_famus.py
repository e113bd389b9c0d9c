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
from famus_jax.core import forward, meta_gradient
from famus_jax.core import lookahead as lookahead_lib
from tiny_models import (NUM_CLASSES as TINY_CLASSES, SGD_META, TinyCNN, init_model,
                         make_batches, tiny_parts)

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
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0),
                                                                  train['image'])
  return model, variables['params'], variables['batch_stats'], train, val


@functools.lru_cache(maxsize=None)
def mlp_problem():
  """A tiny digits MLP with blocks stem, block1, block2, head (dense layers only:
  cheap to differentiate unjitted), on `problem()`'s batches; its params."""
  model = models.get_model('digits_mlp', num_classes=NUM_CLASSES, width=8, depth=3)
  _, _, _, train, val = problem()
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0),
                                                                  train['image'])
  return model, variables['params'], train, val


@functools.partial(jax.jit, static_argnames=('tangent', 'tangent_pass'))
def mlp_meta_grad(theta, gate, tangent=None, tangent_pass='auto'):
  """θ's meta gradient of the gated look-ahead (SGD, lr 0.1) on `mlp_problem()`,
  its tangent pass restricted to the leaves in `tangent` (None: all)."""
  model, params, train, val = mlp_problem()
  fwd = forward.train_forward(model.apply, params, None, train['image'])
  return meta_gradient.meta_grad_from_forward(
      fwd, theta, params, train['label'], val, apply_fn=model.apply,
      meta_model=fj.get_meta_model('mwnet'), lookahead=fj.core.Lookahead(lr=0.1), gate=gate,
      tangent=tangent, tangent_pass=tangent_pass).theta


def parts_for(mode='jvp', **overrides):
  """The builder's parts for `tiny_problem()`'s CNN with config.meta =
  `meta_config(**overrides)`, the `mode` path and the SGD meta optimizer."""
  return tiny_famus_parts(**meta_config(**overrides).to_dict(), mode=mode)


# One jitted meta gradient for the file: calls with the same static arguments and
# shapes share one compiled program (gates are data).
META_GRAD = jax.jit(fj.meta_grad, static_argnames=('apply_fn', 'meta_model', 'mode', 'scope'))


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
  """The meta gradient on `tiny_problem()` with layer gates (None: ungated)."""
  model, params, stats, train, val = tiny_problem()
  mw = fj.get_meta_model('mwnet')
  theta = mw.init(jax.random.PRNGKey(1), TINY_CLASSES)
  return META_GRAD(theta, params, train, val, apply_fn=model.apply, meta_model=mw,
                   lr=0.1, batch_stats=stats, mode=mode,
                   gate=None if gates is None else sampler.leaf_gates(gates))


def tiny_sampler(**overrides):
  """The layer sampler of `meta_config(**overrides)` on `tiny_problem()`'s CNN."""
  model, params, _, train, _ = tiny_problem()
  return famus.build_sampler(meta_config(**overrides), model, params, train['image'])


@pytest.mark.parametrize('mode', ['jvp', 'reverse'])
def test_all_gates_on_is_exact_and_all_off_is_zero(mode):
  sampler = tiny_sampler()
  exact = gated_meta_grad(None, mode, sampler)
  on = gated_meta_grad(jnp.ones(sampler.num_layers), mode, sampler)
  chex.assert_trees_all_close(on.theta, exact.theta, rtol=1e-5, atol=1e-9)
  off = gated_meta_grad(jnp.zeros(sampler.num_layers), mode, sampler)
  assert float(jnp.max(jnp.abs(flat(off.theta)))) == 0.0
  assert float(jnp.max(jnp.abs(flat(exact.theta)))) > 0.0


def test_gated_jvp_equals_the_gated_reverse_path():
  """The library's two paths agree with gates (the independent jax.grad reference
  is test_zero_one_gates_equal_the_scope_and_a_masked_jax_grad)."""
  sampler = tiny_sampler()
  gates = jnp.asarray(np.random.default_rng(3).integers(0, 2, sampler.num_layers),
                      jnp.float32).at[-1].set(1.0)
  fast = gated_meta_grad(gates, 'jvp', sampler)
  ref = gated_meta_grad(gates, 'reverse', sampler)
  chex.assert_trees_all_close(fast.theta, ref.theta, rtol=1e-5, atol=1e-9)
  chex.assert_trees_all_close(fast.gate, ref.gate, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize('surrogate', ['straight', 'official'])
def test_sampler_gradient_is_the_analytic_inner_product_through_st(surrogate):
  """η's gradient = VJP of the soft gates with ∂L/∂r_l = −α⟨v_l, ḡ_l⟩ + λ1·2(Σr − K);
  with the official code's surrogate the L_c term of an off layer is negated."""
  model, _, _, train, val = tiny_problem()
  parts = parts_for(lambda1=0.1, gate_surrogate=surrogate)
  sampler, setup = parts.sampler, parts.setup
  # a key whose gates turn one layer on and two off (≠ K: L_r has a gradient)
  state = fj.create_train_state(jax.random.PRNGKey(1), model, train['image'],
                                TINY_CLASSES, setup)
  new_state, metrics = jax.jit(functools.partial(fj.meta_train_step, setup=setup))(
      state, train, val)
  # Recompute by hand with the same RNG stream.
  _, fwd_rng, val_rng, sampler_rng = jax.random.split(state.rng, 4)
  mw = setup.meta_model
  grad = META_GRAD(state.meta_params, state.params, train, val, apply_fn=model.apply,
                   meta_model=mw, lr=0.1, batch_stats=state.batch_stats, mode='jvp')
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
  assert 0 < float(jnp.sum(gates)) < len(by_layer)  # on and off layers both present
  sign = jnp.where(gates > 0.5, 1.0, -1.0) if surrogate == 'official' else 1.0
  by_layer = [b * s for b, s in zip(by_layer, sign * jnp.ones_like(gates))]
  d_rate = 2 * (jnp.sum(gates) - sampler.k) * jnp.ones_like(gates)
  assert float(jnp.min(jnp.abs(d_rate))) > 0  # L_r reaches every gate
  eta_grad = gates_vjp(jnp.stack(by_layer) + 0.1 * d_rate)[0]
  expected = optax.apply_updates(state.sampler_params, optax.sgd(0.1, momentum=0.9).update(
      eta_grad, optax.sgd(0.1, momentum=0.9).init(eta_grad))[0])
  chex.assert_trees_all_close(new_state.sampler_params, expected, rtol=1e-4, atol=1e-7)
  assert float(jnp.linalg.norm(flat(eta_grad))) > 0


def test_sampler_depth_two_is_fc_prelu_fc_and_three_adds_a_hidden_layer():
  features = jnp.linspace(-1.0, 2.0, 5)
  two, three = famus.GradientSampler(8, depth=2), famus.GradientSampler(8, depth=3)
  p2 = two.init(jax.random.PRNGKey(0), features)['params']
  assert sorted(p2) == ['Dense_0', 'Dense_1', 'PReLU_0']
  assert sorted(three.init(jax.random.PRNGKey(0), features)['params']) == [
      'Dense_0', 'Dense_1', 'Dense_2', 'PReLU_0', 'PReLU_1']
  h = features @ p2['Dense_0']['kernel'] + p2['Dense_0']['bias']
  h = jnp.where(h >= 0, h, p2['PReLU_0']['negative_slope'] * h)
  chex.assert_trees_all_close(two.apply({'params': p2}, features),
                              h @ p2['Dense_1']['kernel'] + p2['Dense_1']['bias'], rtol=1e-6)


def test_sampler_init_is_each_layers_own_init_padded_and_stacked():
  """η of layer l is Γ's init with the l-th key at input size D_l, zero-padded
  to max D_l, bit for bit (init draws the layers of one D_l in one program)."""
  model = models.get_model('digits_cnn', num_classes=10, width=8, depth=2)
  sample = jnp.zeros((1, 8, 8, 1))
  params = jax.jit(lambda: model.init(jax.random.PRNGKey(0), sample, train=False))()['params']
  meta_cfg = ml_collections.ConfigDict(dict(
      sampler='famus', k=4, s=4, b=1, tau=5.0, lambda1=0.1, lambda2=0.0, delta=0.1,
      candidate_layers='all', granularity='module', prune_levels=1))
  sampler = famus.build_sampler(meta_cfg, model, params, sample)
  dims = sampler.feature_dims
  assert 1 < len(set(dims)) < len(dims)  # layers share some input sizes, not all
  rng = jax.random.PRNGKey(7)
  net = famus.GradientSampler(sampler.hidden, sampler.depth)
  want = [net.init(key, jnp.zeros((d,)))['params']
          for key, d in zip(jax.random.split(rng, len(dims)), dims)]
  got = jax.jit(sampler.init)(rng)
  for layer, (d, own) in enumerate(zip(dims, want)):
    mine = jax.tree_util.tree_map(lambda x, w: x[layer][tuple(slice(0, n) for n in w.shape)],
                                  got, own)
    chex.assert_trees_all_equal(mine, own)
    assert not np.any(np.asarray(got['Dense_0']['kernel'][layer][d:]))  # the padding


def test_sampler_input_pooled_is_the_raw_pooled_gradient_standardized_is_scaled():
  model, params, _, train, _ = problem()
  grads = jax.tree_util.tree_map(lambda x: jnp.cos(jnp.arange(x.size, dtype=x.dtype)
                                                   ).reshape(x.shape) * 3 + 1, params)
  by_path = dict(zip(lookahead_lib.leaf_paths(grads), jax.tree_util.tree_leaves(grads)))
  raw = famus.build_sampler(meta_config(sampler_input='pooled', sampler_depth=2),
                            model, params, train['image'])
  std = famus.build_sampler(meta_config(), model, params, train['image'])
  assert (raw.depth, std.depth) == (2, 3)
  for layer, f_raw, f_std in zip(raw.layers, raw.features(grads), std.features(grads)):
    pooled = famus.pooled_layer_gradient(by_path, layer)
    np.testing.assert_allclose(f_raw, pooled, rtol=1e-6)
    np.testing.assert_allclose(f_std, (pooled - pooled.mean()) / (pooled.std() + 1e-8),
                               rtol=1e-5, atol=1e-6)


def test_famus_step_jvp_and_reverse_agree():
  model, _, _, train, val = tiny_problem()
  results = []
  for mode in ('jvp', 'reverse'):
    setup = parts_for(mode, lambda1=0.1, lambda2=0.1).setup
    state = fj.create_train_state(jax.random.PRNGKey(0), model, train['image'],
                                  TINY_CLASSES, setup)
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
  model, params, stats, train, val = tiny_problem()
  scope = famus.static_scope(meta_config(sampler='all', candidate_layers='top:2'),
                             model, params, train['image'])
  assert scope == {'BatchNorm_0/scale', 'BatchNorm_0/bias', 'Dense_0/kernel', 'Dense_0/bias'}
  flops = {}
  for name, candidates in (('all', 'all'), ('top2', 'top:2')):
    parts = parts_for(sampler='all', candidate_layers=candidates)
    assert parts.scope == (None if name == 'all' else scope)
    setup = parts.setup
    state = fj.create_train_state(jax.random.PRNGKey(0), model, train['image'],
                                  TINY_CLASSES, setup)
    step = jax.jit(functools.partial(fj.meta_train_step, setup=setup))
    flops[name] = step.lower(state, train, val).compile().cost_analysis()['flops']
  assert flops['top2'] < 0.85 * flops['all']
  # and no path: gate gradients and v are exactly zero outside the scope
  mw = fj.get_meta_model('mwnet')
  ones = jax.tree_util.tree_map(lambda x: jnp.ones(()), params)
  got = META_GRAD(mw.init(jax.random.PRNGKey(1), TINY_CLASSES), params, train, val,
                  apply_fn=model.apply, meta_model=mw, lr=0.1, batch_stats=stats,
                  scope=scope, gate=ones)
  inside = []
  for name, gg, v in zip(lookahead_lib.leaf_paths(params), jax.tree_util.tree_leaves(got.gate),
                         jax.tree_util.tree_leaves(got.val_grads)):
    if name in scope:
      inside.append(float(jnp.abs(gg)))
    else:
      assert float(gg) == 0.0 and float(jnp.max(jnp.abs(v))) == 0.0
  assert max(inside) > 0.0


@pytest.mark.parametrize('tangent_pass', ['jvp', 'transpose'])
def test_pruning_levels_are_exact_and_pick_the_smallest_scope(tangent_pass):
  """Nested scopes at the digits MLP's block boundaries: a selection's smallest
  holding scope gives the meta gradient of the full gated step, by either
  tangent pass (a forward-mode product, or the transpose of the kept VJP)."""
  model, params, train, val = mlp_problem()
  cfg = meta_config(sampler='random', s=2, prune_levels=3)
  sampler = famus.build_sampler(cfg, model, params, train['image'])
  scopes = sampler.scopes.scopes
  assert len(scopes) == 3 and scopes[-1] == famus.leaf_names(sampler.layers)
  assert scopes[0] < scopes[1] < scopes[2]
  top = jnp.zeros(sampler.num_layers).at[-1].set(1.0)
  bottom = jnp.zeros(sampler.num_layers).at[0].set(1.0)
  assert int(sampler.scopes.level(top)) == 0 and int(sampler.scopes.level(bottom)) == 2
  theta = fj.get_meta_model('mwnet').init(jax.random.PRNGKey(1), NUM_CLASSES)
  for gates in (top, bottom, top.at[0].set(1.0)):
    gate = sampler.leaf_gates(gates)
    pruned = mlp_meta_grad(theta, gate, tangent=scopes[int(sampler.scopes.level(gates))],
                           tangent_pass=tangent_pass)
    full = mlp_meta_grad(theta, gate)
    scale = float(jnp.max(jnp.abs(flat(full))))
    assert scale > 0
    chex.assert_trees_all_close(pruned, full, rtol=0, atol=1e-4 * scale)


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
    (dict(sampler_depth=1), r'meta.sampler_depth=1 is unknown; known: 3, 2'),
    (dict(gate_surrogate='paper'), r"meta.gate_surrogate='paper' is unknown"),
])
def test_config_errors_name_the_field(overrides, message):
  model, params, _, train, _ = problem()
  with pytest.raises(ValueError, match=message):
    famus.build_sampler(meta_config(**overrides), model, params, train['image'])


# ------------------------------------------------ independent references (tiny CNN)
# References below use only jax, optax, the Flax model and the meta model's
# weights; none of famus_jax.core / famus_jax.famus is on the reference side.

@functools.lru_cache(maxsize=None)
def tiny_problem(dtype=jnp.float32):
  """TinyCNN (candidate layers Conv_0, BatchNorm_0, Dense_0) with batches; one
  model instance, so that jitted functions of its `apply` compile once."""
  train, val = make_batches(seed=0, dtype=dtype)
  model = TinyCNN()
  params, stats = init_model(model, train['image'])
  return model, params, stats, train, val


def tiny_famus_parts(**meta):
  """The builder's parts for TinyCNN (lr 0.1, SGD meta optimizer) with `meta`."""
  model, _, _, train, _ = tiny_problem()
  return tiny_parts(model, train['image'], meta={**SGD_META, **meta})


def leaf_name(path):
  return '/'.join(str(k.key) for k in path)


def gate_tree(params, layers):
  """Params-shaped 0/1 scalars: 1 on the leaves of the named modules."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.asarray(1.0 if leaf_name(p).split('/')[0] in layers else 0.0,
                               x.dtype), params)


def ref_forward(model, params, stats, images):
  """Train-mode logits (batch statistics), running statistics discarded."""
  return model.apply({'params': params, 'batch_stats': stats}, images, train=True,
                     mutable=['batch_stats'])[0]


def ref_losses(model, params, stats, batch):
  return optax.softmax_cross_entropy_with_integer_labels(
      ref_forward(model, params, stats, batch['image']), batch['label'])


def ref_train_grad(model, params, stats, batch, meta_model, theta):
  """∇_w Σ_i V_i(θ) ℓ_i(w), with V computed from stop-gradient losses."""
  def objective(p):
    losses = ref_losses(model, p, stats, batch)
    return jnp.sum(meta_model.weights(theta, jax.lax.stop_gradient(losses)) * losses)
  return jax.grad(objective)(params)


def ref_val_loss(model, params, stats, batch):
  return jnp.mean(ref_losses(model, params, stats, batch))


def ref_gated_objective(theta, gate, lr, problem_, meta_model, frozen_theta=None):
  """L^val(w − α g̃(θ)), g̃ = g on the leaves where `gate` (`gate_tree`) is 1,
  stop_gradient(g) elsewhere.

  With `frozen_theta`, g̃ = g(frozen_theta) outside the gated leaves: the same
  derivative at θ = frozen_theta, and a value that finite differences see.
  """
  model, params, stats, train, val = problem_
  g = ref_train_grad(model, params, stats, train, meta_model, theta)
  if frozen_theta is not None:
    g0 = ref_train_grad(model, params, stats, train, meta_model, frozen_theta)
  else:
    g0 = jax.lax.stop_gradient(g)
  routed = jax.tree_util.tree_map(lambda r, x, x0: jnp.where(r > 0, x, x0), gate, g, g0)
  w_hat = jax.tree_util.tree_map(lambda w, d: w - lr * d, params, routed)
  return ref_val_loss(model, w_hat, stats, val)


@functools.partial(jax.jit, static_argnames=('meta_model', 'lr'))
def ref_meta_grad(theta, gate, params, stats, train, val, *, meta_model, lr=0.1):
  """jax.grad of `ref_gated_objective` on TinyCNN; one program for every gate."""
  return jax.grad(ref_gated_objective)(theta, gate, lr, (TinyCNN(), params, stats, train, val),
                                       meta_model)


def rel_err(a, b):
  a, b = flat(a), flat(b)
  return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-30))


TINY_LAYERS = ('Conv_0', 'BatchNorm_0', 'Dense_0')
SELECTIONS = (('Dense_0',), ('Conv_0',), ('Conv_0', 'Dense_0'), ('BatchNorm_0',))
# Scopes are static (one program each): two selections, the first and last
# layers around an unselected one, and the middle (norm) layer alone.
SCOPED_SELECTIONS = (('Conv_0', 'Dense_0'), ('BatchNorm_0',))


@pytest.mark.parametrize('tau', [0.5, 5.0])
def test_hard_gumbel_softmax_is_one_hot_with_the_soft_sample_jacobian(tau):
  logits = jnp.array([[0.3, -0.2], [1.0, 0.5], [-0.7, 0.2], [0.1, 0.1]])
  for key in (jax.random.PRNGKey(11), jax.random.PRNGKey(12)):
    hard = famus.hard_gumbel_softmax(key, logits, tau)
    noise = jax.random.gumbel(key, logits.shape, logits.dtype)
    np.testing.assert_array_equal(np.asarray(hard),
                                  np.eye(2, dtype=np.float32)[np.argmax(logits + noise, -1)])
    jac = jax.jacobian(lambda l, k=key: famus.hard_gumbel_softmax(k, l, tau))(logits)
    ref = jax.jacobian(lambda l: jax.nn.softmax((l + noise) / tau, axis=-1))(logits)
    assert float(jnp.max(jnp.abs(ref))) > 1e-2
    np.testing.assert_allclose(np.asarray(jac), np.asarray(ref), rtol=1e-5, atol=1e-8)


def test_hard_gumbel_softmax_selects_with_softmax_probabilities():
  """Gumbel-max: P(one-hot at k) = softmax(logits)_k, whatever τ; binomial error."""
  logits = jnp.array([[0.0, 0.0], [1.0, -0.5], [-2.0, 1.0], [0.5, -1.5]])
  n = 20000
  samples = jax.jit(jax.vmap(lambda k: famus.hard_gumbel_softmax(k, logits, 5.0)))(
      jax.random.split(jax.random.PRNGKey(0), n))
  freq = np.asarray(samples.mean(0))
  p = np.asarray(jax.nn.softmax(logits, axis=-1))
  assert np.all(np.abs(freq - p) <= 4.5 * np.sqrt(p * (1 - p) / n))
  three = jnp.array([0.5, -1.5, 0.2])
  samples = jax.jit(jax.vmap(lambda k: famus.hard_gumbel_softmax(k, three, 0.5)))(
      jax.random.split(jax.random.PRNGKey(1), n))
  p = np.asarray(jax.nn.softmax(three))
  assert np.all(np.abs(np.asarray(samples.mean(0)) - p) <= 4.5 * np.sqrt(p * (1 - p) / n))


def test_matching_loss_value_written_out():
  """L_g = ‖pool(g_L^tra) − pool(g_L^val)‖² on the last layer (Dense: kernel
  averaged over its input axis, bias as is)."""
  model, params, _, train, _ = tiny_problem()
  sampler = famus.build_sampler(meta_config(k=1), model, params, train['image'])
  assert sampler.layers[-1].name == 'Dense_0'
  rng = np.random.default_rng(5)
  a, b = (jax.tree_util.tree_map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype),
                                 params) for _ in range(2))
  expected = (np.sum((np.mean(a['Dense_0']['kernel'], 0) - np.mean(b['Dense_0']['kernel'], 0))
                     ** 2) + np.sum((a['Dense_0']['bias'] - b['Dense_0']['bias']) ** 2))
  np.testing.assert_allclose(float(sampler.matching_loss(a, b)), expected, rtol=1e-5)


def test_theta_update_is_sgd_on_meta_grad_plus_lambda2_matching_grad():
  """θ' = θ − β (g_c + λ2 ∇_θ L_g) with the SGD meta optimizer, g_c the gated
  meta gradient and L_g(θ) = ‖pool(g_L^tra(θ)) − pool(∇_ŵ L^val)‖²."""
  lam = 0.7
  model, params, _, train, val = tiny_problem()
  parts = tiny_famus_parts(**meta_config(k=1, lambda2=lam).to_dict())
  sampler, setup = parts.sampler, parts.setup
  state = fj.create_train_state(jax.random.PRNGKey(0), model, train['image'],
                                TINY_CLASSES, setup)
  prob = (model, state.params, state.batch_stats, train, val)
  model, params, stats, train, val = prob
  new_state, metrics = fj.jit_meta_train_step(setup, donate=False)(state, train, val)
  mw, theta = setup.meta_model, state.meta_params
  selected = tuple(l.name for l, r in zip(sampler.layers, np.asarray(metrics['gates'])) if r)
  assert selected, 'pick a seed whose gates select at least one layer'

  @jax.jit
  def reference(theta):
    """(g_c, L_g, ∇_θ L_g), written with jax.grad."""
    g_c = jax.grad(ref_gated_objective)(theta, gate_tree(params, selected), 0.1, prob, mw)
    w_hat = jax.tree_util.tree_map(lambda w, g: w - 0.1 * g, params,
                                   ref_train_grad(model, params, stats, train, mw, theta))
    v = jax.grad(ref_val_loss, argnums=1)(model, w_hat, stats, val)['Dense_0']

    def matching(t):
      g = ref_train_grad(model, params, stats, train, mw, t)['Dense_0']
      return (jnp.sum((jnp.mean(g['kernel'], 0) - jnp.mean(v['kernel'], 0)) ** 2)
              + jnp.sum((g['bias'] - v['bias']) ** 2))

    return (g_c, *jax.value_and_grad(matching)(theta))

  g_c, lg, d_lg = reference(theta)
  np.testing.assert_allclose(float(metrics['matching_loss']), float(lg), rtol=1e-4)
  expected = jax.tree_util.tree_map(lambda t, a, b: t - 0.1 * (a + lam * b), theta, g_c, d_lg)
  flipped = jax.tree_util.tree_map(lambda t, a, b: t - 0.1 * (a - lam * b), theta, g_c, d_lg)
  step = flat(new_state.meta_params) - flat(theta)
  tol = 1e-3 * float(jnp.max(jnp.abs(step)))
  assert float(jnp.max(jnp.abs(flat(expected) - flat(flipped)))) > 20 * tol
  np.testing.assert_allclose(flat(new_state.meta_params), flat(expected), rtol=0, atol=tol)


def test_gated_virtual_step_value_is_bit_identical_to_the_full_look_ahead():
  model, params, stats, train, _ = tiny_problem()
  mw = fj.get_meta_model('mwnet')
  theta = mw.init(jax.random.PRNGKey(1), TINY_CLASSES)
  step = jax.jit(functools.partial(fj.virtual_step, apply_fn=model.apply, meta_model=mw,
                                   lr=0.1))
  full = step(theta, params, train, batch_stats=stats)
  for layers in SELECTIONS + ((),):
    gated = step(theta, params, train, batch_stats=stats, gate=gate_tree(params, layers))
    chex.assert_trees_all_equal(gated.params, full.params)
    chex.assert_trees_all_equal(gated.grads, full.grads)
  assert float(jnp.max(jnp.abs(flat(full.params) - flat(params)))) > 0


@pytest.mark.parametrize('mode', ['jvp', 'reverse'])
def test_zero_one_gates_equal_the_scope_and_a_masked_jax_grad(mode):
  """For r ∈ {0,1}: the gated θ-gradient = meta_grad(scope=selected leaves) =
  jax.grad of L^val(w − α g̃) with g̃ stop-gradient outside the selection."""
  model, params, stats, train, val = tiny_problem()
  mw = fj.get_meta_model('mwnet')
  theta = mw.init(jax.random.PRNGKey(1), TINY_CLASSES)
  grad = functools.partial(META_GRAD, theta, params, train, val, apply_fn=model.apply,
                           meta_model=mw, lr=0.1, mode=mode, batch_stats=stats)
  for layers in SELECTIONS:
    gate = gate_tree(params, layers)
    ref = ref_meta_grad(theta, gate, params, stats, train, val, meta_model=mw)
    assert float(jnp.max(jnp.abs(flat(ref)))) > 0
    assert rel_err(grad(gate=gate).theta, ref) <= 1e-4, layers
    if layers in SCOPED_SELECTIONS:
      scope = frozenset(n for n in lookahead_lib.leaf_paths(params)
                        if n.split('/')[0] in layers)
      assert rel_err(grad(scope=scope).theta, ref) <= 1e-4, layers


@pytest.mark.parametrize('method', ['mwnet', 'l2r'])
def test_optimizer_look_ahead_in_the_jitted_step(method):
  """meta.lookahead='optimizer': ŵ = w − α(μ m + g(θ) + λ w) with the base
  optimizer's momentum m and weight decay λ; θ and the new base parameters
  follow from a reference written with jax.grad."""
  model, _, _, train, val = tiny_problem()
  lr, mu, wd = 0.1, 0.9, 5e-4
  setup = tiny_famus_parts(method=method, lookahead='optimizer').setup  # lr, μ, λ: the defaults
  state = fj.create_train_state(jax.random.PRNGKey(0), model, train['image'],
                                TINY_CLASSES, setup)
  params, stats = state.params, state.batch_stats
  rng = np.random.default_rng(2)
  kick = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
  state = state.replace(opt_state=setup.tx.update(kick, state.opt_state, params)[1])
  m = optax.tree_utils.tree_get(state.opt_state, 'trace')
  assert float(jnp.max(jnp.abs(flat(m)))) > 0.1
  new_state, metrics = fj.jit_meta_train_step(setup, donate=False)(state, train, val)
  mm = setup.meta_model
  theta = mm.lookahead_params(state.meta_params, train['label'].shape[0])

  def update(g):
    return jax.tree_util.tree_map(lambda w, mo, d: w - lr * (mu * mo + d + wd * w),
                                  params, m, g)

  meta_grad = jax.jit(jax.grad(lambda t: ref_val_loss(
      model, update(ref_train_grad(model, params, stats, train, mm, t)), stats, val)))(theta)
  assert float(jnp.max(jnp.abs(flat(meta_grad)))) > 0
  if method == 'mwnet':
    theta_new = jax.tree_util.tree_map(lambda t, g: t - 0.1 * g, theta, meta_grad)
    chex.assert_trees_all_close(new_state.meta_params, theta_new, rtol=1e-5, atol=1e-8)
    weights = mm.weights(theta_new, jax.lax.stop_gradient(ref_losses(model, params, stats,
                                                                     train)))
  else:
    raw = np.maximum(-np.asarray(meta_grad), 0.0)
    assert raw.sum() > 0
    weights = jnp.asarray(raw / raw.sum())
    theta_new = weights
  chex.assert_trees_all_close(metrics['weights'], weights, rtol=1e-4, atol=1e-7)
  expected = jax.jit(lambda t: update(ref_train_grad(model, params, stats, train, mm, t)))(
      theta_new)
  chex.assert_trees_all_close(new_state.params, expected, rtol=1e-5, atol=1e-6)


def test_gated_meta_grad_under_jit_matches_central_differences_float64():
  """Jitted meta_grad (both paths, with and without 0/1 gates) against central
  differences of L^val(w − α g̃(θ)) in float64."""
  with jax.enable_x64(True):
    prob = tiny_problem(jnp.float64)
    model, params, stats, train, val = prob
    mw = fj.get_meta_model('mwnet')
    theta = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64),
                                   mw.init(jax.random.PRNGKey(1), TINY_CLASSES))
    rng = np.random.default_rng(1)
    direction = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.normal(size=x.shape)), theta)
    eps = 1e-5
    objective = jax.jit(lambda t, gate: ref_gated_objective(t, gate, 0.5, prob, mw,
                                                            frozen_theta=theta))
    shift = lambda s: jax.tree_util.tree_map(lambda t, d: t + s * eps * d, theta, direction)
    for layers in (TINY_LAYERS, ('Conv_0', 'Dense_0')):
      fd = float(objective(shift(1.0), gate_tree(params, layers))
                 - objective(shift(-1.0), gate_tree(params, layers))) / (2 * eps)
      gate = None if layers == TINY_LAYERS else gate_tree(params, layers)
      for mode in ('jvp', 'reverse'):
        grad = META_GRAD(theta, params, train, val, apply_fn=model.apply, meta_model=mw,
                         lr=0.5, mode=mode, batch_stats=stats, gate=gate).theta
        analytic = float(jnp.vdot(flat(grad), flat(direction)))
        assert abs(fd - analytic) <= 1e-6 * max(abs(analytic), 1e-12), (layers, mode)
