"""CIFAR-10, symmetric noise, L2R ± FaMUS on WRN-28-10 (paper Table 1).

Paper: batch 100, lr 0.05 ÷10 at 40K and 50K iterations, 60K iterations,
β=1e-3 (L2R has no persistent meta model: its per-example weights are the
clipped, normalised negative meta gradient; β is unused). Paper timing:
L2R 839 ms → +FaMUS 244 ms per iteration (V100).

  python -m famus_jax.main --config=configs/cifar10_l2r.py --workdir=runs/c10_l2r
"""

from famus_jax.training.config import load_config


def get_config():
  c = load_config('cifar10.py', relative_to=__file__)
  c.meta.method = 'l2r'
  c.optim.boundaries = (40000, 50000)
  c.optim.num_steps = 60000
  return c
