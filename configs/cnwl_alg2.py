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

from famus_jax.alg2.config import load_sibling, with_alg2


def get_config():
  c = load_sibling('cnwl.py', __file__)   # model, data, schedule of configs/cnwl.py
  c = with_alg2(c)                        # pseudo-clean meta sets: meta_per_class = 0
  c.alg2.warmup_epochs = 30
  c.alg2.ssl.lambda_u = 150.0
  return c
