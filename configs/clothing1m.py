"""Clothing1M (real label noise), MW-Net + FaMUS on ResNet-50.

Paper: ResNet-50, batch 32, lr 0.002 ÷10 at epoch 100, 150 epochs of 1,000
noise-balanced mini-batches, wd 1e-3; meta set: the official clean
validation list. Paper accuracy: 74.43 %. The paper's network starts from
ImageNet-pretrained weights; this package has no weight import, so this
config trains from scratch unless you add one.

  python -m famus_jax.main --config=configs/clothing1m.py --workdir=runs/c1m \\
      --config.data.data_dir=/path/to/clothing1m
"""

import ml_collections

from famus_jax.training.config import base_config


def get_config():
  c = base_config()
  c.model.name = 'resnet50'
  c.model.kwargs = ml_collections.ConfigDict({'width': 64})

  c.data.name = 'clothing1m'
  c.data.noise_type = 'none'
  c.data.noise_rate = 0.0
  c.data.meta_per_class = -1  # the whole clean validation list
  c.data.batch_size = 32
  c.data.meta_batch_size = 32
  c.data.eval_batch_size = 128
  c.data.augment = 'resize_crop'
  c.data.clothing1m_batches_per_epoch = 1000
  c.data.num_workers = 4

  c.optim.lr = 0.002
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-3
  c.optim.schedule = 'piecewise'
  c.optim.unit = 'epoch'
  c.optim.boundaries = (100,)
  c.optim.num_steps = 0
  c.optim.num_epochs = 150

  c.meta.method = 'mwnet'
  c.meta.sampler = 'famus'
  c.meta.lr = 1e-3
  c.meta.weight_decay = 1e-4
  c.meta.k = 4
  c.meta.lambda1 = 0.1  # L_r keeps about K layers on
  c.meta.lambda2 = 0.1  # L_g: the paper's full FaMUS

  c.train.log_every = 100
  c.train.eval_every = 5000
  c.train.checkpoint_every = 1000
  return c
