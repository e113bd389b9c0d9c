"""Fashion-MNIST, 40 % symmetric noise, MW-Net + FaMUS: real data on a CPU.

  sudo apt-get install dataset-fashion-mnist     # the four IDX files, ~30 MB
  python -m famus_jax.main --config=configs/fashion_mnist.py --workdir=/tmp/famus_fmnist

60,000 training images (28×28 grey, 10 classes): 1,000 clean meta images
(100 per class, as the paper's CIFAR setting) are removed from training, the
59,000 others get 40 % symmetric label noise; 10,000 clean test images. A
small ResNet (`fashion_resnet`: width 8, 3 blocks, 19,890 parameters).
MW-Net + FaMUS as the digits recipe sets it (every layer a candidate,
run-time scopes, the scope price on L_r). Compare with
`--config.meta.method=ce` (plain cross-entropy) and `--config.meta.sampler=all`
(the exact meta gradient over every layer); `--config.data.noise_type=asymmetric` uses the Fashion-MNIST class map
(famus_jax/data/README.md). Another folder:
`--config.data.data_dir=DIR` (the IDX files, gzipped or not).
"""

import ml_collections

from famus_jax.training.config import load_config


def get_config():
  # The digits quickstart's recipe (MW-Net + FaMUS over every layer, K 4,
  # λ1 = λ2 = 0.1, the scope price on L_r, SGD m 0.9, wd 5e-4, lr 0.05 piecewise
  # by epoch); what differs is below.
  c = load_config('digits.py', relative_to=__file__)
  c.model.name = 'fashion_resnet'
  # width 8: channels 8/16/32, ~0.7 M multiply-adds per image (width 16: ~2.7 M);
  # 2.5x less CPU time per MW-Net + FaMUS iteration than width 16.
  c.model.kwargs = ml_collections.ConfigDict({'width': 8, 'stage_sizes': (1, 1, 1)})

  c.data.name = 'fashion_mnist'
  c.data.meta_per_class = 100
  c.data.batch_size = 100
  c.data.meta_batch_size = 100
  c.data.eval_batch_size = 1000

  # The paper's CIFAR recipe (Table 1: batch 100, lr 0.05, ÷10 at 90 % and
  # 95 % of the run), in epochs of the 59,000 noisy training images:
  # 4 epochs × 590 batches = 2,360 iterations, ÷10 after 3.6 and 3.8 epochs.
  c.optim.num_epochs = 4
  c.optim.boundaries = (3.6, 3.8)

  c.train.log_every = 59
  c.train.eval_every = 590
  c.train.checkpoint_every = 590
  return c
