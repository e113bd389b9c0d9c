"""FaMUS: learned per-layer sampling of the meta gradient, and its ablations."""

from famus_jax.famus.gumbel import GradientSampler, hard_gumbel_softmax
from famus_jax.famus.layers import (block_layers, leaf_names, network_layers,
                                    select_candidates)
from famus_jax.famus.pooling import pool_tensor, pooled_layer_gradient, standardize
from famus_jax.famus.dispatch import (DEFAULT as DEFAULT_DISPATCH, DISPATCHERS, Compiler,
                                      Dispatcher, NestedScopes, make_dispatcher,
                                      nested_scopes)
from famus_jax.famus.samplers import (GATE_GRADS, RATE_COSTS, SAMPLERS,
                                      FamusSampler, LayerSampler, RandomSampler,
                                      Selection, build_sampler, candidates,
                                      meta_path, static_scope)
