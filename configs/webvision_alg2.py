"""WebVision 1.0, first 50 classes, Algorithm 2 on Inception-ResNet-v2.

WebVision has no clean training labels: the paper's meta sets are the
pseudo-clean ones (top-1 79.40 % on the WebVision validation set; ILSVRC12
validation images of the same classes are evaluated when present). Batch 16,
lr 0.02 ÷10 at epoch 100, 150 epochs, wd 5e-4; β=1e-3, δ=0.1, K=4. There is
no official FaMUS script for WebVision: the optimisers are those of the
official FaMUS code (youjiangxu/FaMUS, `FaMUS/build_models.py`: Nesterov for
the base networks, meta models by SGD, lr 1e-3, momentum 0.9, Nesterov, the
base wd), the SSL settings DivideMix's WebVision code (LiJunnan1992/DivideMix,
`Train_webvision.py`; not in the paper): warm-up 1 epoch, λ_u 0, mixup α 0.5.

  python -m famus_jax.main --config=configs/webvision_alg2.py --workdir=runs/wv_alg2 \\
      --config.data.data_dir=/path/to/webvision
"""

from famus_jax.alg2.config import load_sibling, with_alg2


def get_config():
  c = load_sibling('webvision.py', __file__)   # model, data, schedule of configs/webvision.py
  c.meta.method = 'mwnet'                      # the base config is the CE baseline
  c.meta.sampler = 'famus'
  c.meta.lambda1 = 0.1                         # L_r keeps about K layers on
  c.meta.lambda2 = 0.1                         # L_g: the paper's full FaMUS
  c.optim.nesterov = True                      # FaMUS/build_models.py (paper silent)
  c.meta.optimizer = 'sgd'                     # FaMUS/build_models.py: SGD(vnet, meta_lr,
  c.meta.lr = 1e-3                             #   momentum 0.9, nesterov, wd); β 1e-3 §E
  c.meta.momentum = 0.9
  c.meta.nesterov = True
  c.meta.weight_decay = c.optim.weight_decay   # the base network's, as the code
  # FaMUS over every layer (the paper's candidates) on run-time scopes cut at
  # block boundaries (meta.prune_levels=0, meta.dispatch='ahead': the defaults;
  # Algorithm 1's gates of the current iteration: meta.dispatch='host').
  # Ours: L_r gains a one-sided price per layer, the marginal meta work of
  # extending the scope down to it, so the gates reach low layers only where it
  # pays (README "FaMUS at run time"); the paper's L_r: meta.rate_cost='count'.
  c.meta.rate_cost = 'scope'
  c = with_alg2(c)
  c.alg2.warmup_epochs = 1                     # Train_webvision.py: warm_up = 1
  c.alg2.ssl.lambda_u = 0.0                    # Train_webvision.py --lambda_u 0
  c.alg2.ssl.alpha = 0.5                       # Train_webvision.py --alpha 0.5
  return c
