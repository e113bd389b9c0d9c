"""CIFAR-10, symmetric noise, MW-Net ± FaMUS on WRN-28-10 (paper Table 1).

Paper (supplement §E, "comparing with meta-learning methods"): batch 100, SGD
(momentum 0.9, wd 5e-4), lr 0.05 ÷10 at 18K and 19K iterations, 20K
iterations; β = 1e-3; 1,000 clean validation images (100 per class).
Where the paper is silent, the official MW-Net code of this schedule
(xjtushujun/meta-weight-net, `train_WRN-28-10_Meta_PGC.py`): Nesterov for the
base optimiser, and the meta model trained by SGD (lr 1e-3, momentum 0.9,
Nesterov, the base network's wd 5e-4) — not Adam, which is its ResNet-32
code's (`MW-Net.py`: Adam 1e-3, wd 1e-4). FaMUS (supplement §E, and the
official FaMUS code youjiangxu/FaMUS, `train_famus_redminiimage.py`): K 4,
δ 0.1, λ1, λ2 ∈ {0, 0.1} (the code: 0.1 and 0.1), Gumbel temperature 5.
Table 1, MW-Net → +FaMUS at 20/40/60 % noise: 91.9/89.6/84.5 → 92.9/90.5/85.8.

  python -m famus_jax.main --config=configs/cifar10.py --workdir=runs/c10_40_famus
  ... --config.meta.sampler=all        # MW-Net (exact meta gradient)
  ... --config.data.noise_rate=0.6     # 60 % noise
"""

import ml_collections

from famus_jax.training.config import base_config


def get_config():
  c = base_config()
  c.model.name = 'wrn28_10'
  c.model.kwargs = ml_collections.ConfigDict({'dropout': 0.0})

  c.data.name = 'cifar10'
  c.data.noise_type = 'symmetric'
  c.data.noise_rate = 0.4
  c.data.meta_per_class = 100
  c.data.batch_size = 100
  c.data.meta_batch_size = 100
  c.data.eval_batch_size = 500
  c.data.augment = 'crop_flip'

  c.optim.lr = 0.05  # supplement §E (the official code's default is 0.1)
  c.optim.momentum = 0.9  # supplement §E
  c.optim.weight_decay = 5e-4  # supplement §E
  c.optim.nesterov = True  # train_WRN-28-10_Meta_PGC.py (paper silent)
  c.optim.schedule = 'piecewise'
  c.optim.unit = 'step'
  c.optim.boundaries = (18000, 19000)  # supplement §E
  c.optim.num_steps = 20000  # supplement §E

  c.meta.method = 'mwnet'
  c.meta.sampler = 'famus'
  # train_WRN-28-10_Meta_PGC.py: SGD(vnet, 1e-3, momentum 0.9, nesterov, wd 5e-4)
  c.meta.optimizer = 'sgd'
  c.meta.lr = 1e-3  # β, supplement §E and the code
  c.meta.momentum = 0.9
  c.meta.nesterov = True
  c.meta.weight_decay = 5e-4
  c.meta.k = 4  # supplement §E
  c.meta.lambda1 = 0.1  # L_r keeps about K layers on
  c.meta.lambda2 = 0.1  # L_g: the paper's full FaMUS
  c.meta.delta = 0.1  # supplement §E; official FaMUS code go_lr 0.1
  # FaMUS over every layer (the paper's candidates) on run-time scopes cut at
  # block boundaries (meta.prune_levels=0, meta.dispatch='ahead': the defaults;
  # Algorithm 1's gates of the current iteration: meta.dispatch='host').
  # Ours: L_r gains a one-sided price per layer, the marginal meta work of
  # extending the scope down to it, so the gates reach low layers only where it
  # pays (README "FaMUS at run time"); the paper's L_r: meta.rate_cost='count'.
  c.meta.rate_cost = 'scope'

  c.train.log_every = 100
  c.train.eval_every = 1000
  c.train.checkpoint_every = 1000
  return c
