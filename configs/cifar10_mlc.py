"""CIFAR-10, symmetric noise, MLC ± FaMUS on WRN-40-2 (paper Table 2).

`meta.method='mlc'` is the official MLC step (Wang, Hu, Hu 2020, `main.py`):
T restarts at the identity every iteration, the loss is Σ_i CE(f(x_i) @ T, ỹ_i),
the look-ahead uses a fixed inner lr of 1e-3, and T' = max(T − 0.11 G, 0) with
non-zero columns normalised drives Actual-Train.

The official run, reproduced here:
- WRN-40-2, batch 64, SGD momentum 0.9, weight decay 5e-4;
- a CE warm-up of 30,000 iterations at lr 0.1 (here `meta.warmup_epochs=39`,
  ≈ 30,150 iterations of 773 per epoch), then 50,000 MLC iterations at
  lr 1e-4 (65 epochs; the piecewise schedule drops 0.1 → 1e-4 at epoch 39);
- the MLC phase restarts (`meta.warmup_restart`): from the best warm-up
  network, evaluated every 100 iterations, with a new optimiser (momentum
  zeroed). The official code picks that network on the test set; here on
  the clean meta set (famus_jax/training/warmup.py);
- 50 clean validation images per class, the whole set (500) as the meta batch.
Where the paper and the code differ, `mlc` follows the code: the T step is
the fixed 0.11 (`meta.model_kwargs.step_size`), not the paper's meta rate
β = 1e-5 (set `--config.meta.model_kwargs.step_size=1e-5` to run that one;
`meta.lr=1e-5` is used by `--config.meta.method=mlc_transition` only).
Differences that remain: the official network uses leaky ReLU (ours ReLU),
its clean images come from the test split (ours from the training split),
and it draws every batch at random (ours: shuffled epochs).
Paper timing: MLC 265 ms → +FaMUS 84 ms per iteration (V100).

  python -m famus_jax.main --config=configs/cifar10_mlc.py --workdir=runs/c10_mlc
  ... --config.meta.sampler=famus       # MLC + FaMUS
"""

import ml_collections

from famus_jax.training.config import load_config


def get_config():
  c = load_config('cifar10.py', relative_to=__file__)
  c.model.name = 'wrn40_2'
  c.model.kwargs = ml_collections.ConfigDict({'dropout': 0.0})
  c.data.meta_per_class = 50
  c.data.batch_size = 64
  c.data.meta_batch_size = 500
  c.meta.method = 'mlc'
  c.meta.sampler = 'all'
  c.meta.model_kwargs = ml_collections.ConfigDict({'step_size': 0.11, 'inner_lr': 1e-3})
  c.meta.warmup_epochs = 39  # main.py: train_warm_up, 30,000 iterations
  c.meta.warmup_restart = True  # main.py: train_MLC loads the best warm-up model
  c.meta.warmup_select_every = 100  # main.py: plot_step = 100
  c.meta.lr = 1e-5  # β, supplement §E (used by meta.method=mlc_transition only)
  c.optim.lr = 0.1  # main.py --lr_1 (warm-up); × 1e-3 = --lr_2 1e-4 for the MLC phase
  c.optim.momentum = 0.9  # main.py --momentum; supplement §E
  c.optim.weight_decay = 5e-4  # main.py --weight_decay; supplement §E
  c.optim.nesterov = False  # main.py: torch.optim.SGD without nesterov
  c.optim.schedule = 'piecewise'
  c.optim.unit = 'epoch'
  c.optim.boundaries = (39,)
  c.optim.decay_factor = 1e-3
  c.optim.num_steps = 0
  c.optim.num_epochs = 104
  c.train.eval_every = 5000
  c.train.checkpoint_every = 5000
  return c
