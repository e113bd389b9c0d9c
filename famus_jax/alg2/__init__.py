"""Algorithm 2 of the FaMUS supplement: pseudo-clean validation sets from a
two-component GMM on the training losses, two co-trained networks (each one's
split is the other's meta set), MW-Net + FaMUS on each, and the DivideMix-style
semi-supervised term on the pseudo-noisy part.

Entry point: `train_and_evaluate(config, workdir) -> summary`, for configs with
`config.alg2.enabled` (see `famus_jax.alg2.config` and `configs/*_alg2.py`).
"""

from famus_jax.alg2.config import (ABLATIONS, alg2_defaults, is_enabled, validate,
                                   with_alg2)
from famus_jax.alg2.cotrain import train_and_evaluate
from famus_jax.alg2.epoch import EpochPlan, plan_cotraining, plan_epoch
from famus_jax.alg2.gmm import GmmSplit, GmmWarning, precision_recall, split_by_loss

__all__ = ['ABLATIONS', 'EpochPlan', 'GmmSplit', 'GmmWarning', 'alg2_defaults',
           'is_enabled', 'plan_cotraining', 'plan_epoch', 'precision_recall',
           'split_by_loss', 'train_and_evaluate', 'validate', 'with_alg2']
