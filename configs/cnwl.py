"""Controlled Noisy Web Labels (red mini-ImageNet, 32×32), MW-Net + FaMUS.

Paper: PreAct ResNet-18, batch 64, "as CIFAR": lr 0.02 ÷10 at epochs 200 and
250, 300 epochs, SGD momentum 0.9, wd 5e-4, β=1e-3, δ=0.1, K=4; web noise
20/40/60/80 % (--config.data.cnwl_noise=20 ...). Paper accuracy at
20/40/60/80 %: 51.42/48.06/45.10/35.50 — obtained with the pseudo-clean
validation set (Algorithm 2); this config uses a clean meta set of 10 images
per class drawn from the training images flagged clean.
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

  c.optim.lr = 0.02
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.schedule = 'piecewise'
  c.optim.unit = 'epoch'
  c.optim.boundaries = (200, 250)
  c.optim.num_steps = 0
  c.optim.num_epochs = 300

  c.meta.method = 'mwnet'
  c.meta.sampler = 'famus'
  c.meta.lr = 1e-3
  c.meta.weight_decay = 1e-4
  c.meta.k = 4
  c.meta.lambda1 = 0.1  # L_r keeps about K layers on
  c.meta.lambda2 = 0.1  # L_g: the paper's full FaMUS
  c.meta.delta = 0.1

  c.train.log_every = 100
  c.train.eval_every = 5000
  c.train.checkpoint_every = 5000
  return c
