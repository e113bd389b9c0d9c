"""The train state and the static description of one meta iteration."""

import dataclasses
from typing import Any, Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from famus_jax.core import meta_gradient as meta_grad

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training (a pytree; donate it to the step).

  Attributes:
    step: iteration counter, int32 scalar.
    params, batch_stats, opt_state: base network, its running statistics
      (empty dict without batch norm) and the base optimizer state.
    meta_params, meta_opt_state: θ and the meta optimizer state.
    sampler_params, sampler_opt_state: FaMUS gradient samplers η (empty dict
      when no learned sampler is used).
    sampler_state: the gates drawn for the next meta iteration when the sampler
      draws them one meta iteration ahead (`meta.dispatch='ahead'`; see
      `LayerSampler.init_pending`), else an empty dict.
    rng: PRNG key, split every iteration.
  """
  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  meta_params: PyTree
  meta_opt_state: PyTree
  rng: jax.Array
  sampler_params: PyTree = dataclasses.field(default_factory=dict)
  sampler_opt_state: PyTree = dataclasses.field(default_factory=dict)
  sampler_state: PyTree = dataclasses.field(default_factory=dict)


LOOKAHEADS = ('sgd', 'optimizer')


@dataclasses.dataclass(frozen=True)
class StepSetup:
  """Static parts of a training iteration (hashable; a jit static argument).

  Attributes:
    apply_fn: Flax `apply` of the base network.
    meta_model: entry of `famus_jax.meta_models.META_MODELS`.
    tx: base optimizer (optax).
    meta_tx: meta optimizer (optax) for persistent meta models.
    lr_schedule: step -> base learning rate α (also the look-ahead's).
    mode: meta-gradient path, 'jvp' or 'reverse'.
    lookahead: 'sgd' (ŵ = w − α g) or 'optimizer' (the base optimizer's update,
      with its momentum and weight decay).
    scope: frozenset of parameter leaf names that may carry the meta gradient,
      or None for all.
    sampler: a layer sampler of `famus_jax.famus` ('famus', 'random'), or None
      for the exact meta gradient.
  """
  apply_fn: Callable
  meta_model: Any
  tx: optax.GradientTransformation
  meta_tx: optax.GradientTransformation
  lr_schedule: Callable[[jax.Array], jax.Array]
  mode: str = 'jvp'
  lookahead: str = 'sgd'
  scope: Optional[frozenset] = None
  sampler: Any = None

  def __post_init__(self):
    meta_grad.check_mode(self.mode)
    if self.lookahead not in LOOKAHEADS:
      raise ValueError(f'Unknown look-ahead {self.lookahead!r} (config field '
                       f'meta.lookahead); known: {", ".join(LOOKAHEADS)}.')


def create_train_state(rng: jax.Array, model: nn.Module, sample_images: jax.Array,
                       num_classes: int, setup: StepSetup) -> TrainState:
  """Initialises the base network, its optimizer, the meta model and its optimizer.

  Args:
    rng: PRNG key.
    model: Flax module called as `model(x, train=bool)`.
    sample_images: (n, ...) example input (only its shape and dtype are used).
    num_classes: number of classes C.
    setup: the `StepSetup` whose optimizers are initialised.
  """
  init_rng, meta_rng, state_rng = jax.random.split(rng, 3)
  variables = model.init({'params': init_rng, 'dropout': init_rng},
                         jnp.asarray(sample_images), train=False)
  params = variables['params']
  batch_stats = variables.get('batch_stats', {})
  meta_rng, sampler_rng = jax.random.split(meta_rng)
  meta_params = setup.meta_model.init(meta_rng, num_classes)
  sampler_params, sampler_opt_state, sampler_state = {}, {}, {}
  if setup.sampler is not None:
    sampler_params = setup.sampler.init(sampler_rng)
    sampler_opt_state = setup.sampler.optimizer().init(sampler_params)
    sampler_state = setup.sampler.init_pending()
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
      opt_state=setup.tx.init(params), meta_params=meta_params,
      meta_opt_state=setup.meta_tx.init(meta_params), rng=state_rng,
      sampler_params=sampler_params, sampler_opt_state=sampler_opt_state,
      sampler_state=sampler_state)


def sgd_with_weight_decay(learning_rate, momentum: float = 0.9,
                          weight_decay: float = 5e-4,
                          nesterov: bool = False) -> optax.GradientTransformation:
  """PyTorch-style SGD: `d = g + λw; m = μm + d; w −= α m`."""
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(learning_rate, momentum=momentum or None,
                               nesterov=nesterov))


# config `meta.optimizer`: name -> (lr, weight decay, momentum, nesterov) -> optax.
# Both couple the weight decay to the gradient, as torch.optim does. 'adam': the
# official MW-Net ResNet-32 code (`MW-Net.py`: Adam 1e-3, wd 1e-4; momentum and
# nesterov unused); 'sgd': its WRN-28-10 and class-imbalance codes and the
# official FaMUS code (SGD, momentum 0.9, Nesterov, the base network's wd).
META_OPTIMIZERS = {
    'adam': lambda lr, wd, momentum, nesterov: optax.chain(
        optax.add_decayed_weights(wd), optax.adam(lr)),
    'sgd': lambda lr, wd, momentum, nesterov: sgd_with_weight_decay(
        lr, momentum, wd, nesterov=nesterov),
}


def make_meta_optimizer(name: str, learning_rate: float, weight_decay: float = 0.0,
                        momentum: float = 0.9,
                        nesterov: bool = False) -> optax.GradientTransformation:
  """Meta optimizer from config `meta.optimizer` ('adam' or 'sgd'); `momentum`
  and `nesterov` are read by 'sgd' only."""
  if name not in META_OPTIMIZERS:
    raise ValueError(f'Unknown meta optimizer {name!r} (config field '
                     f'meta.optimizer); known: {", ".join(sorted(META_OPTIMIZERS))}.')
  return META_OPTIMIZERS[name](learning_rate, weight_decay, momentum, nesterov)
