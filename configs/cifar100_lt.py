"""Long-tailed CIFAR-100 (imbalance factor 100), MW-Net + FaMUS on ResNet-32.

As configs/cifar10_lt.py (lr 0.1 ÷10 at epochs 160/180, 200 epochs, β=1e-5,
δ=1e-2, 10 clean images per class as the meta set).
"""

from famus_jax.training.config import load_config


def get_config():
  c = load_config('cifar10_lt.py', relative_to=__file__)
  c.data.name = 'cifar100_lt'
  return c
