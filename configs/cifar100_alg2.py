"""CIFAR-100, symmetric noise, Algorithm 2 (paper Table 5 / supplement Table 2).

As configs/cifar10_alg2.py (PreAct ResNet-18, batch 64, lr 0.02 ÷10 at 200 and
250, 300 epochs, β=1e-3, δ=0.1, K=4, λ1, λ2 in {0, 0.1}) on CIFAR-100, with
DivideMix's CIFAR-100 values where the paper is silent: warm-up 30 epochs,
λ_u 150. Table 5, 40 / 60 % noise: 75.91 / 73.58 (MW-Net + Pseudo-clean:
74.61 / 70.55).

  python -m famus_jax.main --config=configs/cifar100_alg2.py --workdir=runs/c100_alg2_60 \\
      --config.data.noise_rate=0.6
"""

from famus_jax.alg2.config import load_sibling


def get_config():
  c = load_sibling('cifar10_alg2.py', __file__)
  c.data.name = 'cifar100'
  c.alg2.warmup_epochs = 30
  c.alg2.ssl.lambda_u = 150.0
  return c
