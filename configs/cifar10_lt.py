"""Long-tailed CIFAR-10 (imbalance factor 100), MW-Net + FaMUS on ResNet-32.

Paper (supplement §E): ResNet-32, SGD momentum 0.9, wd 5e-4, lr 0.1 ÷10 at
epochs 160 and 180, 200 epochs, β = 1e-5, δ = 1e-2, K = 4, λ1, λ2 ∈ {0, 0.1};
10 clean images per class as the meta set, imbalance 100/50/20/10
(--config.data.imbalance_factor=50 ...). Where the paper is silent, the
official MW-Net class-imbalance code (xjtushujun/Meta-weight-net_class-imbalance,
`meta-weight-net-class-imbalance.py`): batch 100, Nesterov for the base
optimiser, the meta model by SGD (lr 1e-5, momentum 0.9, Nesterov, the base
wd 5e-4). Its schedule (÷10 at 80 and 90 of 100 epochs) is not the paper's;
the paper's is kept. Paper, MW-Net+FaMUS (CE) at IF 100/50/20/10:
79.30/83.15/87.15/89.39.
"""

import ml_collections

from famus_jax.training.config import base_config


def get_config():
  c = base_config()
  c.model.name = 'resnet32'
  c.model.kwargs = ml_collections.ConfigDict({'width': 16})

  c.data.name = 'cifar10_lt'
  c.data.noise_type = 'none'
  c.data.noise_rate = 0.0
  c.data.imbalance_factor = 100.0
  c.data.meta_per_class = 10
  c.data.batch_size = 100  # the class-imbalance code (paper silent)
  c.data.meta_batch_size = 100
  c.data.eval_batch_size = 500
  c.data.augment = 'crop_flip'

  c.optim.lr = 0.1  # supplement §E and the code
  c.optim.momentum = 0.9  # supplement §E and the code
  c.optim.weight_decay = 5e-4  # supplement §E and the code
  c.optim.nesterov = True  # the class-imbalance code (paper silent)
  c.optim.schedule = 'piecewise'
  c.optim.unit = 'epoch'
  c.optim.boundaries = (160, 180)  # supplement §E (the code: 80, 90 of 100)
  c.optim.num_steps = 0
  c.optim.num_epochs = 200  # supplement §E

  c.meta.method = 'mwnet'
  c.meta.sampler = 'famus'
  # the class-imbalance code: SGD(vnet, 1e-5, momentum 0.9, nesterov, wd 5e-4)
  c.meta.optimizer = 'sgd'
  c.meta.lr = 1e-5  # β, supplement §E and the code
  c.meta.momentum = 0.9
  c.meta.nesterov = True
  c.meta.weight_decay = 5e-4
  c.meta.delta = 1e-2  # supplement §E
  c.meta.k = 4  # supplement §E
  c.meta.lambda1 = 0.1  # L_r keeps about K layers on
  c.meta.lambda2 = 0.1  # L_g: the paper's full FaMUS
  # FaMUS over every layer (the paper's candidates) on run-time scopes cut at
  # block boundaries (meta.prune_levels=0, meta.dispatch='ahead': the defaults;
  # Algorithm 1's gates of the current iteration: meta.dispatch='host').
  # Ours: L_r gains a one-sided price per layer, the marginal meta work of
  # extending the scope down to it, so the gates reach low layers only where it
  # pays (README "FaMUS at run time"); the paper's L_r: meta.rate_cost='count'.
  c.meta.rate_cost = 'scope'

  c.train.log_every = 100
  c.train.eval_every = 2000
  c.train.checkpoint_every = 2000
  return c
