"""Algorithm 2 on Fashion-MNIST: no clean meta set at all.

  sudo apt-get install dataset-fashion-mnist
  python -m famus_jax.main --config=configs/fashion_mnist_alg2.py --workdir=/tmp/fmnist_alg2

All 60,000 training images carry noisy labels (40 % symmetric); two small
ResNets (`fashion_resnet`, as configs/fashion_mnist.py) are co-trained: each
one's GMM split of its training losses is the other's pseudo-clean meta set;
MW-Net + FaMUS (K=4, λ1=0.1, as configs/fashion_mnist.py) on each, plus the
semi-supervised term on the pseudo-noisy part. Same batch, optimiser and
schedule as configs/fashion_mnist.py (4 epochs, lr ÷10 after 3.6 and 3.8
epochs), of which the first is a cross-entropy warm-up.

  ... --config.data.noise_rate=0.6          # 60 % symmetric noise
  ... --config.data.noise_type=asymmetric   # the Fashion-MNIST class map
  ... --config.meta.sampler=all            # MW-Net + Pseudo-clean (exact meta gradient)
  ... --config.alg2.ssl.enabled=False       # meta step only, no SSL term
"""

from famus_jax.alg2.config import load_sibling, with_alg2
from famus_jax.training.config import base_config


def get_config():
  c = load_sibling('fashion_mnist.py', __file__) or base_config()
  c.data.augment = 'none'

  c.train.progress = True
  c = with_alg2(c)  # data.meta_per_class = 0
  # DivideMix's warm-up and ramp-up (10 and 16 of 300 epochs) would leave no
  # co-training in a 4-epoch run: one warm-up epoch, λ_u ramped over one epoch.
  c.alg2.warmup_epochs = 1
  c.alg2.ssl.lambda_u = 25.0
  c.alg2.ssl.rampup_epochs = 1.0
  c.alg2.ssl.augment = 'shift'  # a 1-pixel translation, as on digits
  return c
