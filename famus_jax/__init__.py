"""famus_jax: FaMUS and meta re-weighting (MW-Net, L2R, MLC) in JAX/Flax.

The three stages of a meta iteration, composable in a notebook::

    from famus_jax import virtual_step, meta_grad, actual_step, get_meta_model

Which training labels a finished run suspects, as arrays::

    table = famus_jax.label_issues('/tmp/famus_digits')   # .index, .score, ...
"""

from etils import epy

from famus_jax.core import (ActualStep, MetaGrad, StepSetup, TrainState, VirtualStep,
                            actual_step, create_train_state, jit_meta_train_step,
                            jit_plain_train_step, make_meta_optimizer, meta_begin,
                            meta_finish, meta_grad, meta_train_step, plain_train_step,
                            sgd_with_weight_decay,
                            validation_loss, virtual_step)
from famus_jax.meta_models import META_MODELS, get_meta_model

__version__ = '0.1.0'


with epy.lazy_imports():  # orbax and scikit-learn: loaded when a run is read
  from famus_jax.analysis import runs as _runs


def label_issues(workdir: str, *, checkpoint=None):
  """The label-issue table of the run in `workdir` at its newest (or the given)
  checkpoint (`famus_jax.analysis.runs.label_issues`)."""
  return _runs.label_issues(workdir, checkpoint=checkpoint)
