"""Learning-rate schedules (optax) from `config.optim`, in iterations."""

from __future__ import annotations

import optax


def num_train_steps(optim_config, steps_per_epoch: int) -> int:
  """Total iterations: `num_steps`, or `num_epochs × steps_per_epoch`."""
  if optim_config.unit == 'epoch':
    return int(round(float(optim_config.num_epochs) * steps_per_epoch))
  return int(optim_config.num_steps)


def boundaries_in_steps(optim_config, steps_per_epoch: int) -> list[int]:
  scale = steps_per_epoch if optim_config.unit == 'epoch' else 1
  return [int(round(float(b) * scale)) for b in optim_config.boundaries]


def make_lr_schedule(optim_config, steps_per_epoch: int) -> optax.Schedule:
  """Schedule over iterations 0, 1, ... (the base optimizer's update count).

  'piecewise': `lr × decay_factor^k` from the k-th boundary on (a boundary of
  18000 steps means iteration 18000 is the first at the lower rate);
  'constant': `lr`; 'cosine': cosine decay from `lr` to 0 over the run.
  """
  lr = float(optim_config.lr)
  if optim_config.schedule == 'constant':
    return optax.constant_schedule(lr)
  if optim_config.schedule == 'cosine':
    return optax.cosine_decay_schedule(lr, max(num_train_steps(optim_config,
                                                               steps_per_epoch), 1))
  factor = float(optim_config.decay_factor)
  return optax.piecewise_constant_schedule(
      lr, {b: factor for b in boundaries_in_steps(optim_config, steps_per_epoch)})
