"""Algorithm 2 of the FaMUS supplement: pseudo-clean validation sets from a
two-component GMM on the training losses, two co-trained networks (each one's
split is the other's meta set), MW-Net + FaMUS on each, and the DivideMix-style
semi-supervised term on the pseudo-noisy part.

The trainer's algorithm `config.algorithm = 'alg2'` (`CoTraining`; run it with
`famus_jax.train.train_and_evaluate`; configs from `famus_jax.alg2.config.with_alg2`
and `configs/*_alg2.py`).
"""

from famus_jax.alg2.config import (ABLATIONS, alg2_defaults, validate,
                                   with_alg2)
from famus_jax.alg2.cotrain import CoTraining
from famus_jax.alg2.epoch import EpochPlan, plan_cotraining, plan_epoch
from famus_jax.alg2.gmm import GmmSplit, GmmWarning, precision_recall, split_by_loss

__all__ = ['ABLATIONS', 'CoTraining', 'EpochPlan', 'GmmSplit', 'GmmWarning', 'alg2_defaults',
           'plan_cotraining', 'plan_epoch', 'precision_recall',
           'split_by_loss', 'validate', 'with_alg2']
