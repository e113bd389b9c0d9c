"""Long-tailed CIFAR-10 (imbalance factor 100), MW-Net + FaMUS on ResNet-32.

Paper: ResNet-32, lr 0.1 ÷10 at epochs 160 and 180, 200 epochs, β=1e-5,
δ=1e-2, 10 clean images per class as the meta set, imbalance 100/50/20/10
(--config.data.imbalance_factor=50 ...). The batch size is not given: 100
(MW-Net's). Paper, MW-Net+FaMUS (CE) at IF 100/50/20/10: 79.30/83.15/87.15/89.39.
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
  c.data.batch_size = 100
  c.data.meta_batch_size = 100
  c.data.eval_batch_size = 500
  c.data.augment = 'crop_flip'

  c.optim.lr = 0.1
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.schedule = 'piecewise'
  c.optim.unit = 'epoch'
  c.optim.boundaries = (160, 180)
  c.optim.num_steps = 0
  c.optim.num_epochs = 200

  c.meta.method = 'mwnet'
  c.meta.sampler = 'famus'
  c.meta.lr = 1e-5
  c.meta.weight_decay = 1e-4
  c.meta.delta = 1e-2
  c.meta.k = 4
  c.meta.lambda1 = 0.1  # L_r keeps about K layers on
  c.meta.lambda2 = 0.1  # L_g: the paper's full FaMUS

  c.train.log_every = 100
  c.train.eval_every = 2000
  c.train.checkpoint_every = 2000
  return c
