"""Algorithm 2 on the embedded digits data: no clean meta set at all.

The small real run of the pseudo-clean path: scikit-learn digits (1,347
training images, 450 clean test images), symmetric label noise, two tiny
ResNets (`digits_cnn`, width 8, depth 2) co-trained; each one's GMM picks the
pseudo-clean set that is the other's meta validation set; MW-Net + FaMUS
(K=4) on each, plus the semi-supervised term on the pseudo-noisy part. About
two to three minutes on 2 CPU cores (40 epochs).

  python -m famus_jax.main --config=configs/digits_alg2.py --workdir=/tmp/digits_alg2
  ... --config.data.noise_rate=0.6          # 60 % symmetric noise
  ... --config.meta.sampler=all             # MW-Net + Pseudo-clean (exact meta gradient)
  ... --config.alg2.ssl.enabled=False       # meta step only, no SSL term

CE with the same model, data, epochs and schedule, and Alg. 2, side by side:
  python -m experiments.studies.alg2_compare_digits --noise=0.4,0.6 --seeds=0,1
Measured (2 seeds, 40 epochs; famus_jax/alg2/README.md): 40 % noise CE
73.3/72.7 %, Alg. 2 99.1/99.3 %; 60 % noise CE 57.3/58.7 %, Alg. 2 97.8/98.9 %.
"""

from famus_jax.alg2.config import with_alg2
from famus_jax.training.config import load_config


def get_config():
  c = load_config('digits.py', relative_to=__file__)  # model, data, optimizer
  c = with_alg2(c)  # data.meta_per_class = 0: no clean meta set
  c.data.meta_batch_size = 64
  c.data.augment = 'none'
  c.optim.boundaries = (30,)
  c.alg2.warmup_epochs = 5
  c.alg2.gmm.during_warmup = True
  c.alg2.ssl.lambda_u = 25.0
  c.alg2.ssl.rampup_epochs = 10.0
  c.alg2.ssl.augment = 'shift'  # digits: a 1-pixel translation, no flip
  return c
