"""Controlled Noisy Web Labels (red mini-ImageNet, 32×32), Algorithm 2.

The paper's CNWL numbers (20/40/60/80 % web noise: 51.42/48.06/45.10/35.50)
come from the pseudo-clean path: no clean meta set. PreAct ResNet-18, batch
64, "as CIFAR": lr 0.02 ÷10 at epochs 200 and 250, 300 epochs, SGD momentum
0.9, wd 5e-4, β=1e-3, δ=0.1, K=4. The SSL settings are not in the paper; with
100 classes we use DivideMix's CIFAR-100 values (warm-up 30, λ_u 150):
unverified on CNWL.

  python -m famus_jax.main --config=configs/cnwl_alg2.py --workdir=runs/cnwl_alg2_40 \\
      --config.data.cnwl_noise=40 --config.data.data_dir=/path/to/tensorflow_datasets
"""

import ml_collections

from famus_jax.alg2.config import load_sibling, with_alg2
from famus_jax.training.config import base_config


def get_config():
  c = load_sibling('cnwl.py', __file__) or base_config()
  c.model.name = 'preact_resnet18'
  c.model.kwargs = ml_collections.ConfigDict({'width': 64})

  c.data.name = 'cnwl'
  c.data.cnwl_color = 'red'
  c.data.cnwl_noise = 40
  c.data.cnwl_image_size = 32
  c.data.noise_type = 'none'
  c.data.noise_rate = 0.0
  c.data.batch_size = 64
  c.data.meta_batch_size = 64
  c.data.eval_batch_size = 500
  c.data.augment = 'crop_flip'

  c.optim.lr = 0.02
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.schedule = 'piecewise'
  c.optim.unit = 'epoch'
  c.optim.num_steps = 0
  c.optim.num_epochs = 300
  c.optim.boundaries = (200, 250)

  c.meta.method = 'mwnet'
  c.meta.sampler = 'famus'
  c.meta.lr = 1e-3
  c.meta.weight_decay = 1e-4
  c.meta.k = 4
  c.meta.delta = 0.1

  c = with_alg2(c)
  c.alg2.warmup_epochs = 30
  c.alg2.ssl.lambda_u = 150.0
  return c
