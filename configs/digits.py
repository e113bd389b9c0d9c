"""Embedded quickstart: scikit-learn digits, 40 % symmetric noise, MW-Net + FaMUS.

  python -m famus_jax.main --config=configs/digits.py --workdir=/tmp/famus_digits

Real 8×8 images (1,797: 450 test, 10 clean meta examples per class, the rest
noisy training data), a tiny ResNet (`digits_cnn`); a few minutes on 2 CPU
cores. Compare with `--config.meta.method=ce` (plain cross-entropy) and
`--config.meta.sampler=all` (exact meta gradient).
"""

import ml_collections

from famus_jax.training.config import base_config


def get_config():
  c = base_config()
  c.seed = 0
  c.model.name = 'digits_cnn'
  c.model.kwargs = ml_collections.ConfigDict({'width': 8, 'depth': 2})

  c.data.name = 'digits'
  c.data.noise_type = 'symmetric'
  c.data.noise_rate = 0.4
  c.data.meta_per_class = 10
  c.data.batch_size = 64
  c.data.meta_batch_size = 50
  c.data.eval_batch_size = 450

  c.optim.lr = 0.1
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.schedule = 'piecewise'
  c.optim.unit = 'step'
  c.optim.num_steps = 600
  c.optim.boundaries = (400, 500)

  c.meta.method = 'mwnet'
  c.meta.sampler = 'famus'
  c.meta.k = 4
  c.meta.lr = 1e-3
  c.meta.weight_decay = 1e-4

  c.train.log_every = 50
  c.train.eval_every = 100
  c.train.checkpoint_every = 200
  c.train.progress = True
  return c
