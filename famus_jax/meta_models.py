"""Meta models Ψ(·; θ): how the meta parameters θ enter the training objective.

Every meta model defines the look-ahead objective `Σ_i V_i(θ) ℓ_i(f(x_i; w), θ)`
through pure functions:

- `loss(θ, logits, labels) -> (n,)`: per-example training loss ℓ_i (θ enters
  it only for the MLC models);
- `weights(θ, losses) -> (n,)`: weights V_i from the stop-gradient per-example
  losses; the same function gives the Actual-Train weights V'_i at θ';
- `lookahead_params(meta_params, n)`: θ as the look-ahead uses it;
- `lookahead_lr(base_lr)`: learning rate of the plain-SGD look-ahead (the
  base rate α, or a fixed inner rate of the method);
- `meta_update(θ, ∇_θ L^val) -> θ'`: θ after the meta step, for meta models
  whose θ is not persistent (`persistent=False`; persistent θ follows the
  meta optimizer instead);
- `idle_params(meta_params, n)`: θ for an iteration without a meta step
  (`meta.interval > 1`);
- `zero_lookahead`: the look-ahead weights are identically zero (L2R's ε = 0),
  so Virtual-Train skips its backward (ŵ = U(w, 0)) and a layer sampler reads
  the gradient at `idle_params` (`famus_jax.core.virtual`).

Models live in `META_MODELS`, keyed by the config string `meta.method`.
"""

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from famus_jax import losses as losses_lib

PyTree = Any


def torch_linear_init(fan_in: int):
  """PyTorch `nn.Linear`'s default U(±1/√fan_in), as the official MW-Net VNet.

  Flax's default (normal kernel, zero bias) can start Ψ as a steep increasing
  sigmoid of the loss that up-weights noisy examples and, with β = 1e-3, never
  recovers (seen on digits at 40 % noise).
  """
  bound = fan_in ** -0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
      key, shape, dtype, -bound, bound)


def persistent_meta_update(model, theta, meta_grad):
  """`meta_update` of a persistent θ: never called, the meta optimizer steps it."""
  del theta, meta_grad
  raise TypeError(f'meta model {model.name!r} keeps θ across iterations: the meta '
                  'optimizer (StepSetup.meta_tx) updates it, not meta_update.')


class WeightNet(nn.Module):
  """MW-Net's MLP 1 → hidden → 1 (ReLU, sigmoid) on the per-example loss."""
  hidden: int = 100

  @nn.compact
  def __call__(self, losses: jax.Array) -> jax.Array:  # (n,) -> (n,)
    init_in, init_hidden = torch_linear_init(1), torch_linear_init(self.hidden)
    h = nn.relu(nn.Dense(self.hidden, kernel_init=init_in, bias_init=init_in,
                         name='hidden')(losses[:, None]))
    return nn.sigmoid(nn.Dense(1, kernel_init=init_hidden, bias_init=init_hidden,
                               name='out')(h))[:, 0]


@dataclasses.dataclass(frozen=True)
class MWNet:
  """Meta-Weight-Net (Shu et al. 2019): V_i = Ψ(ℓ_i; θ), normalised by Σ_i."""
  hidden: int = 100
  normalize: bool = True
  name: str = 'mwnet'
  persistent: bool = True   # θ is kept and updated across iterations
  zero_lookahead = False    # V(θ) is not identically zero

  def init(self, rng: jax.Array, num_classes: int) -> PyTree:
    del num_classes
    return WeightNet(self.hidden).init(rng, jnp.zeros((1,)))['params']

  def lookahead_params(self, theta: PyTree, batch_size: int) -> PyTree:
    del batch_size
    return theta

  idle_params = lookahead_params  # no meta step: the current θ

  def lookahead_lr(self, base_lr):
    return base_lr

  def meta_update(self, theta, meta_grad):
    return persistent_meta_update(self, theta, meta_grad)

  def loss(self, theta, logits, labels):
    del theta
    return losses_lib.cross_entropy(logits, labels)

  def raw_weights(self, theta, losses):
    """Ψ(ℓ; θ) in (0, 1) before normalisation, (n,)."""
    return WeightNet(self.hidden).apply({'params': theta}, losses)

  def weights(self, theta, losses):
    raw = self.raw_weights(theta, losses)
    if self.normalize:
      return losses_lib.normalize_by_sum(raw)
    return raw / raw.shape[0]


@dataclasses.dataclass(frozen=True)
class L2R:
  """Learning to Reweight (Ren et al. 2018): ε = 0 per example, w = max(−∂/∂ε, 0).

  At ε = 0 the look-ahead gradient Σ_i 0·∇ℓ_i is zero and ŵ = U(w, 0), so
  dL^val(ŵ(ε))/dε_i = ⟨u, ∇_w ℓ_i(w)⟩ with u = (∂U/∂g)ᵀ ∇L^val(ŵ) (plain SGD:
  −α ⟨∇L^val(w), ∇_w ℓ_i(w)⟩): one validation forward and backward and one
  forward-mode product of the per-example losses, no Virtual-Train backward
  (`zero_lookahead`). A layer sampler then reads the gradient of the mean loss
  (1/n) Σ_i ∇_w ℓ_i (`idle_params`), the look-ahead direction of uniform
  weights, instead of the zero look-ahead gradient. `zero_lookahead=False`
  runs the general Virtual-Train backward at ε = 0 and gives the sampler that
  zero gradient (the reference for tests and timings).
  """
  zero_lookahead: bool = True
  name: str = 'l2r'
  persistent: bool = False  # ε is drawn anew (zeros) for every batch

  def init(self, rng, num_classes):
    del rng, num_classes
    return {}

  def lookahead_params(self, theta, batch_size):
    del theta
    return jnp.zeros((batch_size,), jnp.result_type(float))  # float64 under x64

  def idle_params(self, theta, batch_size):
    """Without a meta step: uniform ε = 1/n (the mean cross-entropy)."""
    del theta
    return jnp.full((batch_size,), 1.0 / batch_size, jnp.result_type(float))

  def lookahead_lr(self, base_lr):
    return base_lr

  def meta_update(self, theta, meta_grad):
    """ε' = max(−∂L^val/∂ε, 0) / Σ (all zero when no entry is negative), (n,)."""
    del theta
    return losses_lib.normalize_by_sum(jnp.maximum(-meta_grad, 0.0))

  def loss(self, theta, logits, labels):
    del theta
    return losses_lib.cross_entropy(logits, labels)

  def weights(self, theta, losses):
    del losses
    return theta  # V_i = ε_i


def column_normalize(t: jax.Array) -> jax.Array:
  """Divides every column of a (C, C) matrix with a non-zero sum by that sum.

  All-zero columns stay zero (the official MLC code skips them).
  """
  total = jnp.sum(t, axis=0, keepdims=True)
  return t / jnp.where(total == 0, jnp.ones_like(total), total)


@dataclasses.dataclass(frozen=True)
class MLC:
  """Meta Loss Correction (Wang, Hu, Hu, CVPR 2020) as its official code runs it.

  Every iteration T starts again as the (C, C) identity (like L2R's ε):

  - training loss `Σ_i CE(f(x_i; w) @ T, ỹ_i)` (batch *sum*, T applied to the
    logits before the softmax), so V_i = 1;
  - look-ahead `ŵ = w − inner_lr ∇_w` of that loss (plain SGD at a fixed
    inner rate, 1e-3 in the official code, not the base rate α);
  - G = ∂L^val(ŵ)/∂T, L^val the mean CE of the uncorrected network at ŵ;
  - `T' = max(T − step_size G, 0)`, then every column with a non-zero sum is
    divided by its sum (`meta_update`);
  - Actual-Train: the base optimizer's step on `Σ_i CE(f(x_i; w) @ T', ỹ_i)`.

  `step_size` follows the official code (a fixed 0.11); the paper's meta rate
  β = 1e-5 is the other reading, selected with
  `--config.meta.model_kwargs.step_size=1e-5`. The config's `meta.lr` and
  meta optimizer are unused (nothing persists). An iteration without a meta
  step (`meta.interval > 1`) uses T = I: the plain batch-sum cross-entropy.
  The loss being a sum, the base learning rate is per example (the official
  1e-4 at batch 64). `meta.lookahead='optimizer'` replaces the fixed-rate SGD
  look-ahead with the base optimizer's update, as for every meta model.
  """
  step_size: float = 0.11
  inner_lr: float = 1e-3
  name: str = 'mlc'
  persistent: bool = False  # T restarts at the identity every iteration
  zero_lookahead = False    # V = 1

  def init(self, rng, num_classes):
    del rng
    if num_classes < 2:
      raise ValueError(f'MLC needs num_classes >= 2, got {num_classes}.')
    return {'transition': jnp.eye(num_classes, dtype=jnp.float32)}

  def lookahead_params(self, theta, batch_size):
    """{'transition': (C, C) identity}, whatever `theta` holds."""
    del batch_size
    num_classes = theta['transition'].shape[0]
    return {'transition': jnp.eye(num_classes, dtype=jnp.result_type(float))}

  idle_params = lookahead_params

  def lookahead_lr(self, base_lr):
    del base_lr
    return self.inner_lr

  def meta_update(self, theta, meta_grad):
    """T' = column_normalize(max(T − step_size G, 0)), (C, C)."""
    t = jnp.maximum(theta['transition'] - self.step_size * meta_grad['transition'], 0.0)
    return {'transition': column_normalize(t)}

  def loss(self, theta, logits, labels):
    """CE(logits @ T, ỹ), (n,)."""
    return losses_lib.cross_entropy(logits @ theta['transition'].astype(logits.dtype),
                                    labels)

  def weights(self, theta, losses):
    del theta
    return jnp.ones(losses.shape, losses.dtype)  # the batch sum


@dataclasses.dataclass(frozen=True)
class MLCTransition:
  """Our extension of MLC: a persistent, learned transition matrix on probabilities.

  Differs from the official `MLC` in four ways: θ is a (C, C) matrix of logits
  kept across iterations and updated by the meta optimizer (Adam, rate
  `meta.lr`); `T = softmax(θ, axis=1)` is row-stochastic, initialised with
  `init_diagonal` probability on the diagonal; T acts on the probabilities,
  `CE(Tᵀ softmax(f(x)), ỹ)` (forward loss correction); and the loss is the
  batch mean, with the base learning rate α in the look-ahead.
  """
  init_diagonal: float = 0.9
  name: str = 'mlc_transition'
  persistent: bool = True
  zero_lookahead = False    # V = 1/n

  def init(self, rng, num_classes):
    del rng
    if num_classes < 2:
      raise ValueError(f'MLC needs num_classes >= 2, got {num_classes}.')
    p = self.init_diagonal
    logit = jnp.log(p * (num_classes - 1) / (1.0 - p))
    return {'transition_logits': logit * jnp.eye(num_classes, dtype=jnp.float32)}

  def lookahead_params(self, theta, batch_size):
    del batch_size
    return theta

  idle_params = lookahead_params

  def lookahead_lr(self, base_lr):
    return base_lr

  def meta_update(self, theta, meta_grad):
    return persistent_meta_update(self, theta, meta_grad)

  def transition(self, theta) -> jax.Array:
    """Row-stochastic (C, C) transition matrix T."""
    return jax.nn.softmax(theta['transition_logits'], axis=1)

  def loss(self, theta, logits, labels):
    log_t = jax.nn.log_softmax(theta['transition_logits'], axis=1)
    return losses_lib.corrected_cross_entropy(logits, labels, log_t)

  def weights(self, theta, losses):
    del theta
    return jnp.full(losses.shape, 1.0 / losses.shape[0], losses.dtype)


META_MODELS: dict[str, Callable[..., Any]] = {
    'mwnet': MWNet,
    'l2r': L2R,
    'mlc': MLC,
    'mlc_transition': MLCTransition,
}


def get_meta_model(name: str, **kwargs):
  """Builds the meta model registered under `name` (config `meta.method`)."""
  if name not in META_MODELS:
    raise ValueError(
        f'Unknown meta model {name!r} (config field meta.method); known: '
        f'{", ".join(sorted(META_MODELS))}.')
  cls = META_MODELS[name]
  fields = sorted(f.name for f in dataclasses.fields(cls) if f.name != 'name'
                  and f.name != 'persistent')
  unknown = sorted(set(kwargs) - set(fields))
  if unknown:
    raise ValueError(f'meta model {name!r} has no field(s) {", ".join(unknown)}; '
                     f'its fields: {", ".join(fields) or "none"}.')
  return cls(**kwargs)
