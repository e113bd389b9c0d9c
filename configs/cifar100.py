"""CIFAR-100, symmetric noise, MW-Net ± FaMUS on WRN-28-10 (paper Table 1).

As configs/cifar10.py (batch 100, lr 0.05 ÷10 at 18K/19K, 20K iterations,
β=1e-3, K=4), with 1,000 clean validation images (10 per class).
Table 1, MW-Net → +FaMUS at 20/40/60 %: 73.1/68.1/61.7 → 73.6/69.4/62.9.
Table 4 ablations at 60 % (--config.data.noise_rate=0.6):
  --config.meta.sampler=random --config.meta.s=4|8|16   (61.2/61.6/62.1 %)
  --config.meta.sampler=block --config.meta.b=4|8|12    (60.8/61.9/61.4 %)
  FaMUS K=4: 62.9 %.
"""

from famus_jax.training.config import load_config


def get_config():
  c = load_config('cifar10.py', relative_to=__file__)
  c.data.name = 'cifar100'
  c.data.meta_per_class = 10
  return c
