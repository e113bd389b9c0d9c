"""Meta models Ψ(·; θ): how the meta parameters θ enter the training objective.

Every meta model defines the look-ahead objective `Σ_i V_i(θ) ℓ_i(f(x_i; w), θ)`
through three pure functions, and the weights of the real update:

- `loss(θ, logits, labels) -> (n,)`: per-example training loss ℓ_i (θ enters
  it only for MLC);
- `weights(θ, losses) -> (n,)`: look-ahead weights V_i from the stop-gradient
  per-example losses;
- `actual_weights(θ', losses, meta_grad) -> (n,)`: weights of the Actual-Train
  step, after the meta update.

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

  def init(self, rng: jax.Array, num_classes: int) -> PyTree:
    del num_classes
    return WeightNet(self.hidden).init(rng, jnp.zeros((1,)))['params']

  def lookahead_params(self, theta: PyTree, batch_size: int) -> PyTree:
    del batch_size
    return theta

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

  def actual_weights(self, theta, losses, meta_grad):
    del meta_grad
    return self.weights(theta, losses)


@dataclasses.dataclass(frozen=True)
class L2R:
  """Learning to Reweight (Ren et al. 2018): ε = 0 per example, w = max(−∂/∂ε, 0)."""
  name: str = 'l2r'
  persistent: bool = False  # ε is drawn anew (zeros) for every batch

  def init(self, rng, num_classes):
    del rng, num_classes
    return {}

  def lookahead_params(self, theta, batch_size):
    del theta
    return jnp.zeros((batch_size,), jnp.result_type(float))  # float64 under x64

  def loss(self, theta, logits, labels):
    del theta
    return losses_lib.cross_entropy(logits, labels)

  def weights(self, theta, losses):
    del losses
    return theta  # V_i = ε_i

  def actual_weights(self, theta, losses, meta_grad):
    del theta, losses
    return losses_lib.normalize_by_sum(jnp.maximum(-meta_grad, 0.0))


@dataclasses.dataclass(frozen=True)
class MLC:
  """Meta loss correction (Wang et al. 2020): a learned transition matrix T.

  θ is a (C, C) matrix of logits, `T = softmax(θ, axis=1)` (row-stochastic),
  initialised with `init_diagonal` probability on the diagonal; the training
  loss is `CE(Tᵀ softmax(f(x)), ỹ)`, so θ enters the loss itself.
  """
  init_diagonal: float = 0.9
  name: str = 'mlc'
  persistent: bool = True

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

  def transition(self, theta) -> jax.Array:
    """Row-stochastic (C, C) transition matrix T."""
    return jax.nn.softmax(theta['transition_logits'], axis=1)

  def loss(self, theta, logits, labels):
    log_t = jax.nn.log_softmax(theta['transition_logits'], axis=1)
    return losses_lib.corrected_cross_entropy(logits, labels, log_t)

  def weights(self, theta, losses):
    del theta
    return jnp.full(losses.shape, 1.0 / losses.shape[0], losses.dtype)

  def actual_weights(self, theta, losses, meta_grad):
    del meta_grad
    return self.weights(theta, losses)


META_MODELS: dict[str, Callable[..., Any]] = {
    'mwnet': MWNet,
    'l2r': L2R,
    'mlc': MLC,
}


def get_meta_model(name: str, **kwargs):
  """Builds the meta model registered under `name` (config `meta.method`)."""
  if name not in META_MODELS:
    raise ValueError(
        f'Unknown meta model {name!r} (config field meta.method); known: '
        f'{", ".join(sorted(META_MODELS))}.')
  return META_MODELS[name](**kwargs)
