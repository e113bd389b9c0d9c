"""WebVision 1.0, first 50 classes, Algorithm 2 on Inception-ResNet-v2.

WebVision has no clean training labels: the paper's meta sets are the
pseudo-clean ones (top-1 79.40 % on the WebVision validation set; ILSVRC12
validation images of the same classes are evaluated when present). Batch 16,
lr 0.02 ÷10 at epoch 100, 150 epochs, wd 5e-4; β=1e-3, δ=0.1, K=4. SSL
settings from DivideMix's WebVision run (not in the paper): warm-up 1 epoch,
λ_u 0.

  python -m famus_jax.main --config=configs/webvision_alg2.py --workdir=runs/wv_alg2 \\
      --config.data.data_dir=/path/to/webvision
"""

import ml_collections

from famus_jax.alg2.config import load_sibling, with_alg2
from famus_jax.training.config import base_config


def get_config():
  c = load_sibling('webvision.py', __file__) or base_config()
  c.model.name = 'inception_resnet_v2'
  c.model.kwargs = ml_collections.ConfigDict({'dropout': 0.0})

  c.data.name = 'webvision'
  c.data.noise_type = 'none'
  c.data.noise_rate = 0.0
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
  c.optim.num_steps = 0
  c.optim.num_epochs = 150
  c.optim.boundaries = (100,)

  c.meta.method = 'mwnet'
  c.meta.sampler = 'famus'
  c.meta.lr = 1e-3
  c.meta.weight_decay = 1e-4
  c.meta.k = 4
  c.meta.delta = 0.1

  c = with_alg2(c)
  c.alg2.warmup_epochs = 1
  c.alg2.ssl.lambda_u = 0.0
  return c
