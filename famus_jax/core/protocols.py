"""Written contracts of the core: what a meta model and a layer sampler provide.

The core calls exactly the members listed here; a new meta model (registered
in `famus_jax.meta_models.META_MODELS`) or layer sampler (registered in
`famus_jax.famus.samplers.SAMPLERS`) implements them and nothing else is
needed from it. Shapes: n examples in the batch, C classes, L candidate
layers.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Protocol, runtime_checkable

import jax
import optax

PyTree = Any


@runtime_checkable
class MetaModel(Protocol):
  """Ψ(·; θ): how the meta parameters θ enter the training objective."""

  name: str
  persistent: bool  # θ is kept and stepped by the meta optimizer across iterations
  # V ≡ 0 at the look-ahead θ (L2R's ε = 0): Virtual-Train skips its backward
  # and a layer sampler reads the gradient at `idle_params`
  zero_lookahead: bool

  def init(self, rng: jax.Array, num_classes: int) -> PyTree:
    """The stored meta parameters (when θ is not persistent, only what
    `lookahead_params` needs: L2R an empty dict, MLC the C×C identity)."""

  def lookahead_params(self, meta_params: PyTree, batch_size: int) -> PyTree:
    """θ as Virtual-Train and Meta-Train use it."""

  def idle_params(self, meta_params: PyTree, batch_size: int) -> PyTree:
    """θ for an iteration without a meta step (`meta.interval > 1`)."""

  def lookahead_lr(self, base_lr: jax.Array) -> jax.Array:
    """Learning rate of the plain-SGD look-ahead."""

  def meta_update(self, theta: PyTree, meta_grad: PyTree) -> PyTree:
    """θ' after the meta step when θ is not persistent (L2R's ε', MLC's T');
    a persistent model raises TypeError (the meta optimizer steps its θ)."""

  def loss(self, theta: PyTree, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """(n,) per-example training loss ℓ_i from (n, C) logits and (n,) labels."""

  def weights(self, theta: PyTree, losses: jax.Array) -> jax.Array:
    """(n,) example weights V_i from the (n,) stop-gradient losses."""


class MetaStepContext(NamedTuple):
  """What a layer sampler reads after Meta-Train (`LayerSampler.finish`).

  Attributes:
    selection: the gates of this iteration (`begin`'s first result).
    begin_state: `begin`'s second result (e.g. the gates' VJP), or None.
    meta_grad: the core's `MetaGrad` (`.gate`: ∂L^val/∂r per gated leaf).
    theta: θ in look-ahead form.
    theta_grad: ∇_θ L^val, shaped like θ.
    lookahead_grads: θ -> the weighted training gradient at w (params-shaped).
    val_grads: v = ∇_ŵ L^val (params-shaped).
  """
  selection: Any
  begin_state: Any
  meta_grad: Any
  theta: PyTree
  theta_grad: PyTree
  lookahead_grads: Callable[[PyTree], PyTree]
  val_grads: PyTree


@runtime_checkable
class LayerSampler(Protocol):
  """Chooses, per iteration, the layers whose look-ahead terms carry the meta
  gradient (gates r ∈ {0, 1}^L), and learns from the meta gradient.

  Exactly the members called from outside a sampler: by the core (state
  creation, `meta_begin`, `meta_finish`), by the dispatch layer
  (`famus_jax.famus.dispatch`: scopes, dispatcher, pending draws) and by the
  training harness (`layers`, `warnings`).
  """

  layers: tuple     # candidate layers (`models.Layer`), forward order
  scopes: Any       # `dispatch.NestedScopes`: nested static scopes, smallest first
  dispatch: str     # key of `dispatch.DISPATCHERS`: how a scope's program is chosen
  gate_grad: str    # where ∂L^val/∂r is formed under pruning ('scope' | 'all')

  def init(self, rng: jax.Array) -> PyTree:
    """The sampler's parameters η (an empty dict when nothing is learned)."""

  def optimizer(self) -> optax.GradientTransformation:
    """The optimizer of η."""

  def init_pending(self) -> PyTree:
    """The train state's `sampler_state` before any draw ({} unless the
    dispatcher draws the gates one meta iteration ahead; the base sampler's
    is `dispatch.init_pending(self)`, the draw's fields zero)."""

  def begin(self, params: PyTree, grads: PyTree, rng: jax.Array) -> tuple[Any, Any]:
    """(selection, begin_state): the gates of this iteration from its
    Virtual-Train gradient `grads` (Algorithm 1).

    The selection has `.gates` (L,), `.leaf_gates` (params-shaped scalars)
    and `.level` (int32 index into `scopes`, or None).
    """

  def finish(self, ctx: MetaStepContext, params: PyTree, opt_state: PyTree
             ) -> tuple[PyTree, PyTree, PyTree, dict]:
    """(θ gradient, new η, new η optimizer state, metrics) after Meta-Train."""

  def draw(self, params: PyTree, grads: PyTree, rng: jax.Array) -> dict:
    """A draw for a later meta iteration: {'gates': (L,) hard, ...}, the same
    fields `init_pending` starts with besides 'level' and 'valid'."""

  def begin_pending(self, params: PyTree, pending: dict) -> tuple[Any, Any]:
    """(selection, begin_state) of a stored draw under the current η."""

  def warnings(self) -> tuple[str, ...]:
    """One-line notes on settings that make a config field ineffective."""
