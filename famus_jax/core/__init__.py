"""The three stages of a meta iteration as pure, jit-compatible functions."""

from famus_jax.core.actual import ActualStep, actual_step
from famus_jax.core.lookahead import Lookahead, leaf_paths
from famus_jax.core.meta_gradient import MODES, MetaGrad, meta_grad, validation_loss
from famus_jax.core.train_state import (StepSetup, TrainState, create_train_state,
                                        make_meta_optimizer, sgd_with_weight_decay)
from famus_jax.core.train_step import (PER_EXAMPLE_METRICS, MetaBegin, forward_and_virtual,
                                       jit_meta_train_step, jit_plain_train_step,
                                       meta_begin, meta_finish,
                                       meta_train_step, plain_train_step,
                                       weighted_train_step)
from famus_jax.core.virtual import VirtualStep, virtual_step
