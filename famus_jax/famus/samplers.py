"""Layer samplers: which layers' look-ahead terms carry the meta gradient.

Registry `SAMPLERS`, keyed by `meta.sampler`, of constructors
`(meta, candidate layers, common fields) -> sampler or None`:
- 'all'    exact meta gradient (no sampler; `build_sampler` returns None);
- 'famus'  learned per-layer gradient samplers Γ(·; η_l) with hard Gumbel gates
           and the auxiliary losses L_r (λ1) and L_g (λ2);
- 'random' s candidate layers uniformly at random per iteration;
- 'block'  all layers of residual block b — a static scope (no gates), so the
           compiled program computes only that block's terms.

A sampler turns the Virtual-Train gradient into per-layer gates r ∈ {0,1}^L,
broadcasts them to the parameter leaves (`leaf_gates`) and names the smallest
of its nested static scopes (`famus_jax.famus.dispatch.NestedScopes`, cut at
block boundaries by `meta.prune_levels`) that holds every selected layer, so
that a selection of top layers runs a cheaper program. `meta.dispatch`
(registry `dispatch.DISPATCHERS`) says how that program is chosen;
`meta.gate_grad` where the gates' gradient is formed under pruning;
`meta.rate_cost` (registry `RATE_COSTS`) how L_r prices a layer.
"""

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from famus_jax.core import lookahead as lookahead_lib
from famus_jax.core import meta_gradient
from famus_jax.core.protocols import MetaStepContext
from famus_jax.famus import dispatch as dispatch_lib
from famus_jax.famus import gumbel
from famus_jax.famus import layers as layers_lib
from famus_jax.famus import pooling

PyTree = Any


class Selection(NamedTuple):
  """Gates of one iteration.

  gates: (L,) r_l in {0, 1} (straight-through: differentiable in η for FaMUS).
  leaf_gates: params-shaped scalars, r of the leaf's layer (0 outside the scope).
  level: int32 index of the smallest nested scope holding every selected
    layer (None with a single scope).
  """
  gates: jax.Array
  leaf_gates: PyTree
  level: Optional[jax.Array]


@dataclasses.dataclass(frozen=True)
class LayerSampler:
  """Static description shared by the samplers (hashable, jit-static).

  Attributes:
    layers: candidate layers in forward order.
    leaf_layer: for each params leaf (jax flattening order) the index of its
      candidate layer, or -1.
    treedef: params tree structure.
    scopes: the nested static scopes a meta iteration may run
      (`dispatch.NestedScopes`; the last holds every candidate).
    dispatch: how the scope's program is chosen (a key of
      `dispatch.DISPATCHERS`).
    gate_grad: where ∂L^val/∂r is formed under pruning ('scope' | 'all').
  """
  layers: tuple
  leaf_layer: tuple
  treedef: Any
  scopes: dispatch_lib.NestedScopes = dispatch_lib.NestedScopes()
  dispatch: str = dispatch_lib.DEFAULT
  gate_grad: str = 'scope'

  @property
  def num_layers(self) -> int:
    return len(self.layers)

  def leaf_gates(self, gates: jax.Array) -> PyTree:
    """(L,) layer gates -> params-shaped tree of scalars."""
    zero = jnp.zeros((), gates.dtype)
    leaves = [gates[i] if i >= 0 else zero for i in self.leaf_layer]
    return jax.tree_util.tree_unflatten(self.treedef, leaves)

  def init(self, rng: jax.Array) -> PyTree:
    del rng
    return {}

  def optimizer(self) -> optax.GradientTransformation:
    return optax.identity()

  def selection(self, gates: jax.Array) -> Selection:
    return Selection(gates, self.leaf_gates(gates), self.scopes.level(gates))

  def metrics(self, selection: Selection) -> dict:
    out = {'gates': jax.lax.stop_gradient(selection.gates),
           'num_selected': jnp.sum(jax.lax.stop_gradient(selection.gates))}
    if selection.level is not None:
      out['scope_level'] = selection.level
    return out

  def begin(self, params, grads, rng):
    """Gates of this iteration from the Virtual-Train gradient: (Selection, ctx)."""
    return self.select(params, grads, rng), None

  def finish(self, ctx: MetaStepContext, params, opt_state):
    """After Meta-Train: (θ gradient, sampler params, sampler opt state, metrics)."""
    return ctx.theta_grad, params, opt_state, self.metrics(ctx.selection)

  def warnings(self) -> tuple[str, ...]:
    """One-line notes on settings that make a config field ineffective."""
    return ()

  # Gates drawn one meta iteration ahead (`meta.dispatch='ahead'`): the state
  # keeps the pending draw (`dispatch.init_pending`): 'gates', 'level',
  # 'valid' and the sampler's own `pending_fields`.
  def init_pending(self) -> dict:
    """The state's `sampler_state` before any draw ({} unless drawing ahead)."""
    return dispatch_lib.init_pending(self)

  def pending_fields(self) -> dict:
    """What a pending draw keeps besides its gates (nothing here), as zeros."""
    return {}

  def draw(self, params, grads, rng) -> dict:
    """Hard gates drawn now from the Virtual-Train gradient `grads`, and the
    sampler's pending fields: {'gates': (L,), ...}."""
    return {'gates': jax.lax.stop_gradient(self.select(params, grads, rng).gates)}

  def begin_pending(self, params, pending: dict):
    """(Selection, `finish`'s begin state) of the stored gates."""
    del params
    return self.selection(pending['gates']), None


@dataclasses.dataclass(frozen=True)
class RandomSampler(LayerSampler):
  """'Random layers': s candidate layers uniformly at random, every iteration."""
  s: int = 4

  def select(self, params, grads, rng) -> Selection:
    del params, grads
    order = jax.random.permutation(rng, self.num_layers)
    gates = jnp.zeros((self.num_layers,), jnp.float32).at[order[:self.s]].set(1.0)
    return self.selection(gates)


@dataclasses.dataclass(frozen=True)
class FamusSampler(LayerSampler):
  """FaMUS: a learned gradient sampler Γ(·; η_l) per candidate layer."""
  k: int = 4
  tau: float = 5.0
  lambda1: float = 0.0
  lambda2: float = 0.0
  delta: float = 0.1
  hidden: int = 128
  depth: int = 3                 # dense layers of Γ (`meta.sampler_depth`)
  sampler_input: str = 'standardized'   # a key of pooling.SAMPLER_INPUTS
  gate_surrogate: str = 'straight'      # a key of GATE_SURROGATES
  feature_dims: tuple = ()
  rate_weights: tuple = ()  # c_l of L_r per candidate layer (empty: all 1)
  scope_costs: tuple = ()   # m_l of L_r's one-sided cost term (empty: none)
  select_prior: tuple = ()  # fixed log-odds added to each layer's select logit (empty: 0)

  def init(self, rng):
    """η of every layer's Γ (initialised layer by layer with its own key and
    input size D_l), stacked along a leading layer axis and zero-padded to
    max D_l: (L, ...) leaves. The layers of one D_l are initialised in one
    `lax.map` (one initialiser to compile per distinct D_l, not per layer)."""
    net = gumbel.GradientSampler(self.hidden, self.depth)
    keys = jax.random.split(rng, self.num_layers)
    per_layer = [None] * self.num_layers
    for d in sorted(set(self.feature_dims)):
      where = [i for i, d_l in enumerate(self.feature_dims) if d_l == d]
      group = jax.lax.map(lambda key, d=d: net.init(key, jnp.zeros((d,)))['params'],
                          keys[jnp.asarray(where)])
      for j, i in enumerate(where):
        per_layer[i] = jax.tree_util.tree_map(lambda x, j=j: x[j], group)
    return gumbel.stack_params(per_layer)

  def optimizer(self):
    return optax.sgd(self.delta, momentum=0.9)

  def features(self, grads: PyTree) -> list:
    """Pooled training gradient of each candidate layer (stop-gradient),
    standardised unless `meta.sampler_input='pooled'`."""
    by_path = dict(zip(lookahead_lib.leaf_paths(grads), jax.tree_util.tree_leaves(grads)))
    transform = pooling.SAMPLER_INPUTS[self.sampler_input]
    return [transform(jax.lax.stop_gradient(
        pooling.pooled_layer_gradient(by_path, layer))) for layer in self.layers]

  def padded_features(self, features: list) -> jax.Array:
    """L features (D_l,) -> (L, max D_l), zero-padded."""
    width = max(self.feature_dims)
    return jnp.stack([jnp.pad(f, (0, width - f.shape[0])) for f in features])

  def gate_logits(self, params, features) -> jax.Array:
    """(L, 2) logits of (skip, select) for every candidate layer: the L
    networks Γ(·; η_l) as one batched computation over the stacked η and the
    zero-padded (L, max D_l) features (padding meets zero weights); `features`
    a list of (D_l,) or already padded."""
    net = gumbel.GradientSampler(self.hidden, self.depth)
    padded = features if isinstance(features, jax.Array) else self.padded_features(features)
    logits = jax.vmap(lambda p, f: net.apply({'params': p}, f))(params, padded)
    if self.select_prior:
      logits = logits.at[:, 1].add(jnp.asarray(self.select_prior, logits.dtype))
    return logits

  def gates(self, params, features, rng) -> jax.Array:
    """(L,) hard gates r_l, straight-through in η."""
    return gumbel.hard_gumbel_softmax(rng, self.gate_logits(params, features), self.tau)[:, 1]

  def select(self, params, grads, rng) -> Selection:
    return self.selection(self.gates(params, self.features(grads), rng))

  def pending_fields(self) -> dict:
    """The draw's inputs: features (L, max D_l) and Gumbel noise (L, 2)."""
    return {'features': jnp.zeros((self.num_layers, max(self.feature_dims)), jnp.float32),
            'noise': jnp.zeros((self.num_layers, 2), jnp.float32)}

  def draw(self, params, grads, rng) -> dict:
    """Hard gates from Γ(features; η) and fresh Gumbel noise, kept with the
    features and the noise so that a later `begin_pending` recomputes the soft
    probabilities under a newer η."""
    features = self.padded_features(self.features(grads))
    noise = jax.random.gumbel(rng, (self.num_layers, 2), jnp.float32)
    gates = jax.lax.stop_gradient(gumbel.straight_through(
        self.gate_logits(params, features), noise, self.tau)[:, 1])
    return {'gates': gates, 'features': features, 'noise': noise}

  def select_probability(self, params, pending: dict) -> jax.Array:
    """(L,) soft select-probabilities s(η) of the stored features and noise."""
    logits = self.gate_logits(params, pending['features'])
    return jax.nn.softmax((logits + pending['noise']) / self.tau, axis=-1)[:, 1]

  def begin_pending(self, params, pending: dict):
    """Stored hard gates, straight-through in the current η:
    r = r_stored + s(η) − stop_gradient(s(η)); begin state: the VJP in η."""
    def gates(eta):
      soft = self.select_probability(eta, pending)
      return jax.lax.stop_gradient(pending['gates']) + (soft - jax.lax.stop_gradient(soft))
    value, gates_vjp = jax.vjp(gates, params)
    return self.selection(value), gates_vjp

  def warnings(self) -> tuple[str, ...]:
    if self.lambda1 == 0:
      return (f'meta.sampler=famus with meta.lambda1=0: meta.k={self.k} has no effect '
              '(L_r, weighted by lambda1, is what keeps about K layers selected)',)
    return ()

  def rate_loss(self, gates: jax.Array) -> jax.Array:
    """L_r = (Σ_l c_l r_l − K)² over all gates (c_l = 1 unless `meta.rate_cost`
    weighs layer l by the cost of the smallest scope holding it), plus
    Σ_l m_l r_l with `meta.rate_cost='scope'` (m_l: the marginal cost of
    extending the scope down to layer l, 0 at the top scope, 1 at the bottom)."""
    count = gates * jnp.asarray(self.rate_weights, gates.dtype) if self.rate_weights else gates
    loss = (jnp.sum(count) - self.k) ** 2
    if self.scope_costs:
      loss = loss + jnp.sum(gates * jnp.asarray(self.scope_costs, gates.dtype))
    return loss

  def matching_loss(self, grads: PyTree, val_grads: PyTree) -> jax.Array:
    """L_g = ‖ḡ_L^tra − ḡ_L^val‖² on the last candidate layer's pooled gradients
    (the validation side is a constant)."""
    last = self.layers[-1]
    pooled = lambda tree: pooling.pooled_layer_gradient(
        dict(zip(lookahead_lib.leaf_paths(tree), jax.tree_util.tree_leaves(tree))), last)
    return jnp.sum((pooled(grads) - jax.lax.stop_gradient(pooled(val_grads))) ** 2)

  def begin(self, params, grads, rng):
    features = self.features(grads)
    gates, gates_vjp = jax.vjp(lambda eta: self.gates(eta, features, rng), params)
    return self.selection(gates), gates_vjp

  def finish(self, ctx: MetaStepContext, params, opt_state):
    """η ← SGD step on ∂(L_c + λ1 L_r)/∂η through the straight-through gates;
    θ's gradient gains λ2 ∇_θ L_g."""
    gates_vjp, selection, theta_grad = ctx.begin_state, ctx.selection, ctx.theta_grad
    _, leaf_vjp = jax.vjp(self.leaf_gates, selection.gates)
    d_gates = leaf_vjp(ctx.meta_grad.gate)[0]        # ∂L_c/∂r_l = Σ_leaves ⟨u, g⟩
    d_gates = GATE_SURROGATES[self.gate_surrogate](d_gates, selection.gates)
    rate, d_rate = jax.value_and_grad(self.rate_loss)(selection.gates)
    eta_grad = gates_vjp(d_gates + self.lambda1 * d_rate)[0]
    updates, opt_state = self.optimizer().update(eta_grad, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = {**self.metrics(selection), 'rate_loss': rate,
               'sampler_grad_norm': optax.tree.norm(eta_grad)}
    if self.lambda2 > 0:
      matching, d_theta = jax.value_and_grad(
          lambda t: self.matching_loss(ctx.lookahead_grads(t), ctx.val_grads))(ctx.theta)
      theta_grad = jax.tree_util.tree_map(lambda a, b: a + self.lambda2 * b,
                                          theta_grad, d_theta)
      metrics['matching_loss'] = matching
    return theta_grad, params, opt_state, metrics


GATE_GRADS = meta_gradient.GATE_GRADS  # config `meta.gate_grad`
# config `meta.sampler_depth`: dense layers of Γ_l
SAMPLER_DEPTHS = {3: 'the official FaMUS code (FC-PReLU-FC-PReLU-FC)',
                  2: 'the paper, Sec. 4.2 (FC1 + PReLU, FC2)'}
# config `meta.gate_surrogate`: ∂L_c/∂r_l of a layer whose gate is off. The
# look-ahead term r·g + stop_gradient((1 − r)·g) gives ⟨∂L/∂g, g⟩ for every
# gated layer ('straight', ours); the official code writes an off layer's term
# as (1 − r)·stop_gradient(g), whose derivative in r is −⟨∂L/∂g, g⟩ ('official').
GATE_SURROGATES = {
    'straight': lambda d_gates, gates: d_gates,
    'official': lambda d_gates, gates: jnp.where(
        jax.lax.stop_gradient(gates) > 0.5, d_gates, -d_gates),
}


def scope_work(sampler, block_flops: dict) -> list[float]:
  """The meta work of each nested scope: the forward FLOPs from its lowest
  block to the output (what its validation backward and tangent pass scale
  with)."""
  levels = np.asarray(sampler.scopes.layer_level)
  blocks = np.asarray([layer.block for layer in sampler.layers])
  starts = [int(blocks[levels <= j].min()) for j in range(len(sampler.scopes))]
  return [sum(f for b, f in block_flops.items() if b >= start) for start in starts]


def _count_weights(sampler, block_flops) -> dict:
  """L_r counts every selected layer as 1 (the paper's L_r)."""
  del sampler, block_flops
  return {}


def _flops_weights(sampler, block_flops) -> dict:
  """c_l = the meta work of the smallest scope holding layer l (`scope_work`),
  divided by its mean over the candidate layers (so K keeps its scale)."""
  if len(sampler.scopes) <= 1:
    return {}
  work = scope_work(sampler, block_flops)
  per_layer = np.asarray([work[j] for j in sampler.scopes.layer_level])
  return {'rate_weights': tuple(float(c) for c in per_layer / per_layer.mean())}


def _scope_costs(sampler, block_flops) -> dict:
  """Ours: L_r counts every layer as 1 and adds Σ_l m_l r_l, m_l = (F_j − F_0) /
  (F_top − F_0) for the meta work F_j of the smallest scope j holding layer l
  (a one-sided price, so no single costly layer can fill the budget K), and
  every select logit gets the fixed prior −ln(L)·m_l: a layer whose scope
  costs the whole meta work starts L times less likely than a top layer
  (odds), so low layers are rare from the first iterations on, and Γ can
  still learn to raise a layer the meta gradient needs."""
  if len(sampler.scopes) <= 1:
    return {}
  work = scope_work(sampler, block_flops)
  if work[-1] <= work[0]:
    return {}
  marginal = [(work[j] - work[0]) / (work[-1] - work[0]) for j in sampler.scopes.layer_level]
  log_layers = float(np.log(sampler.num_layers))
  return {'scope_costs': tuple(float(m) for m in marginal),
          'select_prior': tuple(-log_layers * float(m) for m in marginal)}


RATE_COSTS = {  # config `meta.rate_cost`: how L_r prices a layer (sampler fields)
    'count': _count_weights,   # (Σ_l r_l − K)², the paper's L_r
    'flops': _flops_weights,   # (Σ_l c_l r_l − K)², c_l ∝ meta work of l's scope
    'scope': _scope_costs,     # (Σ_l r_l − K)² + Σ_l m_l r_l and a select prior −ln(L) m_l (ours)
}


def _leaf_layer_index(params: PyTree, layers) -> tuple:
  index = {'/'.join(p): i for i, layer in enumerate(layers) for p in layer.paths}
  return tuple(index.get(name, -1) for name in lookahead_lib.leaf_paths(params))


def _check_int(meta, field: str, lo: int, hi: int, what: str) -> int:
  value = meta[field]
  if not isinstance(value, int) or not lo <= value <= hi:
    raise ValueError(f'meta.{field}={value!r} is out of range: {what} must be an '
                     f'integer in [{lo}, {hi}].')
  return value


def candidates(meta, model, params, sample_images) -> tuple:
  """Candidate layers from `meta.granularity` and `meta.candidate_layers`."""
  all_layers = layers_lib.network_layers(model, params, sample_images,
                                         meta.get('granularity', 'module'))
  return all_layers, layers_lib.select_candidates(all_layers,
                                                  meta.get('candidate_layers', 'all'))


def check_sampler_name(name: str) -> None:
  if name not in SAMPLERS:
    raise ValueError(f'Unknown sampler {name!r} (config field meta.sampler); known: '
                     f'{", ".join(sorted(SAMPLERS))}.')


def _scope_layers(meta, all_layers, cands) -> tuple:
  """The layers that may carry the meta gradient: the candidates, restricted to
  block `meta.b` (checked) for the 'block' sampler."""
  if meta.sampler != 'block':
    return cands
  blocks = sorted({layer.block for layer in all_layers})
  _check_int(meta, 'b', 1, max(1, max(blocks) - 1), 'the residual block b')
  cands = layers_lib.block_layers(cands, meta.b)
  if not cands:
    raise ValueError(f'meta.b={meta.b}: block {meta.b} has no candidate layers '
                     f'(meta.candidate_layers={meta.candidate_layers!r}).')
  return cands


def static_scope(meta, model, params, sample_images) -> Optional[frozenset]:
  """Leaf names that may carry the meta gradient (None: every leaf).

  The candidate layers, restricted to block `meta.b` for the 'block' sampler.
  """
  check_sampler_name(meta.sampler)
  all_layers, cands = candidates(meta, model, params, sample_images)
  return _scope_of(all_layers, _scope_layers(meta, all_layers, cands))


def _scope_of(all_layers, scope_layers) -> Optional[frozenset]:
  return (None if len(scope_layers) == len(all_layers)
          else layers_lib.leaf_names(scope_layers))


def build_sampler(meta, model, params, sample_images) -> Optional[LayerSampler]:
  """The sampler of `meta.sampler`, or None for 'all' and 'block' (static scope).

  Raises:
    ValueError: unknown sampler, K or s larger than the candidate layers,
      b out of range, bad temperature — naming the config field.
  """
  return meta_path(meta, model, params, sample_images)[0]


def meta_path(meta, model, params, sample_images
              ) -> tuple[Optional[LayerSampler], Optional[frozenset]]:
  """(`build_sampler`, `static_scope`) of `meta`, the sampler's name checked
  and the candidate layers computed once."""
  check_sampler_name(meta.sampler)
  all_layers, cands = candidates(meta, model, params, sample_images)
  scope = _scope_of(all_layers, _scope_layers(meta, all_layers, cands))
  if SAMPLERS[meta.sampler] is _no_sampler:
    return None, scope
  block_flops = dispatch_lib.module_block_flops(model, params, sample_images, all_layers)
  sampler = SAMPLERS[meta.sampler](meta, params, cands, block_flops)
  if isinstance(sampler, FamusSampler):
    rate_cost = meta.get('rate_cost', 'count')
    if rate_cost not in RATE_COSTS:
      raise ValueError(f'meta.rate_cost={rate_cost!r} is unknown; known: '
                       f'{", ".join(RATE_COSTS)}.')
    sampler = dataclasses.replace(sampler, **RATE_COSTS[rate_cost](sampler, block_flops))
  return sampler, scope


def _common_fields(meta, params, cands, block_flops, min_top_layers: int) -> dict:
  """The `LayerSampler` fields shared by the gated samplers."""
  prune_levels = _check_int(meta, 'prune_levels', 0, len(cands),
                            'meta.prune_levels (0: scopes at block boundaries by work)')
  scopes = dispatch_lib.nested_scopes(cands, block_flops, prune_levels=prune_levels,
                                      min_top_layers=min_top_layers)
  dispatch = meta.get('dispatch', dispatch_lib.DEFAULT)
  gate_grad = meta.get('gate_grad', 'scope')
  for field, value, known in (('dispatch', dispatch, dispatch_lib.DISPATCHERS),
                              ('gate_grad', gate_grad, GATE_GRADS)):
    if value not in known:
      raise ValueError(f'meta.{field}={value!r} is unknown; known: {", ".join(known)}.')
  return dict(layers=cands, leaf_layer=_leaf_layer_index(params, cands),
              treedef=jax.tree_util.tree_structure(params), scopes=scopes,
              dispatch=dispatch, gate_grad=gate_grad)


def _no_sampler(meta, params, cands, block_flops) -> None:
  """'all' and 'block': every scope leaf carries the meta gradient (no gates)."""
  del meta, params, cands, block_flops


def _random_sampler(meta, params, cands, block_flops) -> RandomSampler:
  s = _check_int(meta, 's', 1, len(cands),
                 f'the number of random layers s (there are {len(cands)} candidate layers)')
  return RandomSampler(s=s, **_common_fields(meta, params, cands, block_flops, s))


# FaMUS's departures that can be switched: (config field of `meta`, FamusSampler
# attribute, registry whose first key is the default).
FAMUS_OPTIONS = (('sampler_depth', 'depth', SAMPLER_DEPTHS),
                 ('sampler_input', 'sampler_input', pooling.SAMPLER_INPUTS),
                 ('gate_surrogate', 'gate_surrogate', GATE_SURROGATES))


def _famus_sampler(meta, params, cands, block_flops) -> FamusSampler:
  k = _check_int(meta, 'k', 1, len(cands),
                 f'K (there are {len(cands)} candidate layers; see meta.candidate_layers)')
  common = _common_fields(meta, params, cands, block_flops, k)
  if not meta.tau > 0:
    raise ValueError(f'meta.tau={meta.tau!r}: the Gumbel temperature must be > 0.')
  by_path = dict(zip(lookahead_lib.leaf_paths(params), jax.tree_util.tree_leaves(params)))
  options = {}
  for field, attr, known in FAMUS_OPTIONS:
    value = meta.get(field, next(iter(known)))
    if value not in known:
      raise ValueError(f'meta.{field}={value!r} is unknown; known: '
                       f'{", ".join(map(str, known))}.')
    options[attr] = value
  return FamusSampler(k=k, tau=float(meta.tau), lambda1=float(meta.lambda1),
                      lambda2=float(meta.lambda2), delta=float(meta.delta),
                      feature_dims=pooling.feature_dims(by_path, cands), **options,
                      **common)


SAMPLERS = {
    'all': _no_sampler,
    'block': _no_sampler,
    'famus': _famus_sampler,
    'random': _random_sampler,
}
