"""Controlled Noisy Web Labels (red mini-ImageNet, 32×32), MW-Net + FaMUS.

Paper (supplement §E): PreAct ResNet-18, batch 64, SGD momentum 0.9, wd 5e-4,
lr 0.02 ÷10 at epochs 200 and 250, 300 epochs, β = 1e-3, δ = 0.1, K = 4; web
noise 20/40/60/80 % (--config.data.cnwl_noise=20 ...). Where the paper is
silent, the official FaMUS code of this setting (youjiangxu/FaMUS,
`FaMUS/build_models.py`): Nesterov for the base optimiser, and the meta model
trained by SGD (lr 1e-3, momentum 0.9, Nesterov, the base wd 5e-4). Paper
accuracy at 20/40/60/80 %: 51.42/48.06/45.10/35.50 — obtained with the
pseudo-clean validation set (configs/cnwl_alg2.py); this config uses a clean
meta set of 10 images per class drawn from the training images flagged clean.
"""

import ml_collections

from famus_jax.training.config import base_config


def get_config():
  c = base_config()
  c.model.name = 'preact_resnet18'
  c.model.kwargs = ml_collections.ConfigDict({'width': 64})

  c.data.name = 'cnwl'
  c.data.cnwl_color = 'red'
  c.data.cnwl_noise = 40
  c.data.cnwl_image_size = 32
  c.data.noise_type = 'none'
  c.data.noise_rate = 0.0
  c.data.meta_per_class = 10
  c.data.batch_size = 64
  c.data.meta_batch_size = 64
  c.data.eval_batch_size = 500
  c.data.augment = 'crop_flip'

  c.optim.lr = 0.02  # supplement §E; run_famus.sh --lr 0.02
  c.optim.momentum = 0.9  # supplement §E
  c.optim.weight_decay = 5e-4  # supplement §E
  c.optim.nesterov = True  # FaMUS/build_models.py (paper silent)
  c.optim.schedule = 'piecewise'
  c.optim.unit = 'epoch'
  c.optim.boundaries = (200, 250)  # supplement §E
  c.optim.num_steps = 0
  c.optim.num_epochs = 300  # supplement §E

  c.meta.method = 'mwnet'
  c.meta.sampler = 'famus'
  # FaMUS/build_models.py: SGD(vnet, meta_lr 1e-3, momentum 0.9, nesterov, wd 5e-4)
  c.meta.optimizer = 'sgd'
  c.meta.lr = 1e-3  # β, supplement §E and the code
  c.meta.momentum = 0.9
  c.meta.nesterov = True
  c.meta.weight_decay = 5e-4
  c.meta.k = 4  # supplement §E; the code's num_act 4
  c.meta.lambda1 = 0.1  # L_r keeps about K layers on (the code's act_factor 0.1)
  c.meta.lambda2 = 0.1  # L_g: the paper's full FaMUS (the code's mse_factor 0.1)
  c.meta.delta = 0.1  # supplement §E; the code's go_lr 0.1
  # FaMUS over every layer (the paper's candidates) on run-time scopes cut at
  # block boundaries (meta.prune_levels=0, meta.dispatch='ahead': the defaults;
  # Algorithm 1's gates of the current iteration: meta.dispatch='host').
  # Ours: L_r gains a one-sided price per layer, the marginal meta work of
  # extending the scope down to it, so the gates reach low layers only where it
  # pays (README "FaMUS at run time"); the paper's L_r: meta.rate_cost='count'.
  c.meta.rate_cost = 'scope'

  c.train.log_every = 100
  c.train.eval_every = 5000
  c.train.checkpoint_every = 5000
  return c
