"""WebVision 1.0, first 50 classes (Google subset), Inception-ResNet-v2.

Paper: batch 16, lr 0.02 ÷10 at epoch 100, 150 epochs, wd 5e-4; top-1
79.40 % (WebVision validation), also reported on the ILSVRC12 validation
images of the same classes (evaluated when present: `imagenet_val_accuracy`).
WebVision has no clean training labels, so the paper's meta set is the
pseudo-clean one (Algorithm 2, its own configs); until then this config
trains the cross-entropy baseline (`meta.method='ce'`), with the paper's
schedule.
"""

import ml_collections

from famus_jax.training.config import base_config


def get_config():
  c = base_config()
  c.model.name = 'inception_resnet_v2'
  c.model.kwargs = ml_collections.ConfigDict({'dropout': 0.0})

  c.data.name = 'webvision'
  c.data.noise_type = 'none'
  c.data.noise_rate = 0.0
  c.data.meta_per_class = 0
  c.data.webvision_num_classes = 50
  c.data.batch_size = 16
  c.data.meta_batch_size = 16
  c.data.eval_batch_size = 64
  c.data.augment = 'resize_crop'
  c.data.num_workers = 4

  c.optim.lr = 0.02
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.schedule = 'piecewise'
  c.optim.unit = 'epoch'
  c.optim.boundaries = (100,)
  c.optim.num_steps = 0
  c.optim.num_epochs = 150

  c.meta.method = 'ce'
  c.meta.sampler = 'all'

  c.train.log_every = 100
  c.train.eval_every = 10000
  c.train.checkpoint_every = 2000
  return c
