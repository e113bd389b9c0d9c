"""Algorithm 2 in Fashion-MNIST's memorisation regime: no clean meta set at all.

  sudo apt-get install dataset-fashion-mnist
  python -m famus_jax.main --config=configs/fashion_mnist_long_alg2.py --workdir=/tmp/fmnist_long_alg2

The model, data size, noise and schedule of configs/fashion_mnist_long.py (all
training images noisy: 510 per class, the 500 plus the 10 that are clean meta
images there), the Alg. 2 section of configs/fashion_mnist_alg2.py (MW-Net +
FaMUS on each of two co-trained networks, GMM pseudo-clean meta sets, the
semi-supervised term), with a cross-entropy warm-up that ends before CE starts
to fit the noise (2 of 20 epochs; DivideMix: 10 of 300) and λ_u ramped up over
2 epochs.
"""

from famus_jax.alg2.config import load_sibling, with_alg2


def get_config():
  others = load_sibling('fashion_mnist_long.py', __file__)
  c = with_alg2(others)
  c.data.train_per_class += others.data.meta_per_class  # noisy here
  short = load_sibling('fashion_mnist_alg2.py', __file__)
  c.data.augment = short.data.augment
  c.alg2 = short.alg2
  c.alg2.warmup_epochs = 2
  c.alg2.ssl.rampup_epochs = 2.0
  return c
