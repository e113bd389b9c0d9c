"""CIFAR-10, symmetric noise, Algorithm 2 (paper Table 5 / supplement Table 2).

No clean labels: two PreAct ResNet-18s co-trained, each one's GMM split of the
training losses is the other's meta validation set; MW-Net + FaMUS on each,
plus the DivideMix-style semi-supervised term on the pseudo-noisy part.
Supplement §E: batch 64, SGD (momentum 0.9, wd 5e-4), lr 0.02 ÷10 at epochs
200 and 250, 300 epochs; β=1e-3, δ=0.1, K=4, λ1, λ2 searched in {0, 0.1}.
Not in the paper (DivideMix's CIFAR-10 values): warm-up 10 epochs, λ_u 25
with a 16-epoch ramp-up, T 0.5, mixup α 4, threshold 0.5.
Table 5, 40 / 60 % noise: 95.37 / 94.97 (MW-Net + Pseudo-clean, supplement
Table 2: 93.64 / 92.91).

  python -m famus_jax.main --config=configs/cifar10_alg2.py --workdir=runs/c10_alg2_40
  ... --config.data.noise_rate=0.6
  ... --config.meta.lambda1=0 --config.meta.lambda2=0     # the other grid points
  ... --config.meta.sampler=all        # MW-Net + Pseudo-clean (exact meta gradient)
  ... --config.alg2.ssl.enabled=False  # meta step only (no semi-supervised term)
"""

import ml_collections

from famus_jax.alg2.config import load_sibling, with_alg2
from famus_jax.training.config import base_config


def get_config():
  c = load_sibling('cifar10.py', __file__) or base_config()
  c.model.name = 'preact_resnet18'
  c.model.kwargs = ml_collections.ConfigDict({'width': 64})

  c.data.name = 'cifar10'
  c.data.noise_type = 'symmetric'
  c.data.noise_rate = 0.4
  c.data.batch_size = 64
  c.data.meta_batch_size = 64
  c.data.eval_batch_size = 500
  c.data.augment = 'crop_flip'

  c.optim.lr = 0.02
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.nesterov = False
  c.optim.schedule = 'piecewise'
  c.optim.unit = 'epoch'
  c.optim.num_steps = 0
  c.optim.num_epochs = 300
  c.optim.boundaries = (200, 250)
  c.optim.decay_factor = 0.1

  c.meta.method = 'mwnet'
  c.meta.sampler = 'famus'
  c.meta.optimizer = 'adam'
  c.meta.lr = 1e-3
  c.meta.weight_decay = 1e-4
  c.meta.k = 4
  c.meta.delta = 0.1
  c.meta.lambda1 = 0.1
  c.meta.lambda2 = 0.1

  c.train.log_every = 100
  c = with_alg2(c)
  c.alg2.warmup_epochs = 10
  c.alg2.ssl.lambda_u = 25.0
  c.alg2.ssl.rampup_epochs = 16.0
  return c
