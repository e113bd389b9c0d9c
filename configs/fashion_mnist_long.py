"""Fashion-MNIST in the memorisation regime: long enough for noise to hurt.

  sudo apt-get install dataset-fashion-mnist
  python -m famus_jax.main --config=configs/fashion_mnist_long.py --workdir=/tmp/fmnist_long

configs/fashion_mnist.py (MW-Net + FaMUS as shipped, batch 100, the paper's
CIFAR lr recipe) with what makes a network memorise the wrong labels, as
WRN-28-10 does on CIFAR in the paper: a wider network (`fashion_resnet` width
16: 78,042 parameters, 4x configs/fashion_mnist.py's) trained for 20 epochs of a
small noisy training set (500 images per class drawn with the seed, 60 %
symmetric noise). With plain cross-entropy (`--config.meta.method=ce`) the test
accuracy rises for a few epochs, then falls as the network fits the noise. The
clean meta set keeps the paper's proportion (CIFAR: 1,000 clean of 50,000
images, 2 %): 10 images per class, 100 of 5,100. With 100 per class (17 % of the
images) CE on the clean images alone beats the meta methods. Evaluated every
epoch on the 10,000 test images and on the meta set (whose accuracy selects a
model without the test set).

  ... --config.meta.method=ce                            # CE on the noisy labels
  ... --config.meta.method=ce --config.data.noise_type=none   # CE on the true labels
  ... --config.meta.sampler=all --config.meta.candidate_layers=all   # exact MW-Net
The study: experiments/studies/fashion_mnist_long.py.
"""

import ml_collections

from famus_jax.training.config import load_config

PER_CLASS = 500
EPOCHS = 20
STEPS_PER_EPOCH = 10 * PER_CLASS // 100


def get_config():
  c = load_config('fashion_mnist.py', relative_to=__file__)
  c.model.kwargs = ml_collections.ConfigDict({'width': 16, 'stage_sizes': (1, 1, 1)})
  c.data.noise_rate = 0.6
  c.data.train_per_class = PER_CLASS
  c.data.meta_per_class = 10

  # The paper's CIFAR recipe (lr 0.05, ÷10 at 90 % and 95 % of the run), over
  # 20 epochs of the 5,000 noisy images: 1,000 iterations of 100.
  c.optim.num_epochs = EPOCHS
  c.optim.boundaries = (0.9 * EPOCHS, 0.95 * EPOCHS)

  c.train.log_every = STEPS_PER_EPOCH // 5
  c.train.eval_every = STEPS_PER_EPOCH
  c.train.checkpoint_every = 5 * STEPS_PER_EPOCH
  return c
