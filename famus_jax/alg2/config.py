"""`config.alg2`: the Algorithm 2 fields, their defaults, validation, ablations.

An Alg. 2 config is an ordinary experiment config (`famus_jax.training.config.
base_config()` schema) plus an `alg2` sub-config; `config.alg2.enabled = True`
selects `famus_jax.alg2.train_and_evaluate`. The run length is in epochs
(`optim.unit='epoch'`); `data.meta_per_class` must be 0 (no clean meta set: the
pseudo-clean sets replace it). `meta.method`/`meta.sampler` choose the meta
step (MW-Net + FaMUS by default; `meta.method='ce'` trains the supervised part
with plain cross-entropy, no meta step).

Ablations (command-line overrides, also `ABLATIONS`):
  MW-Net + Pseudo-clean (supplement Table 2)  --config.meta.sampler=all
  no semi-supervised term                     --config.alg2.ssl.enabled=False
  no co-guessing (own guesses only)           --config.alg2.ssl.co_guess=False
  no label refinement                         --config.alg2.ssl.label_refine=False
  no mixup                                    --config.alg2.ssl.mixup=False
  no unsupervised term                        --config.alg2.ssl.lambda_u=0
  no class-prior regulariser                  --config.alg2.ssl.prior_weight=0
  co-divide + SSL without meta-learning       --config.meta.method=ce --config.meta.sampler=all
"""

from __future__ import annotations

import copy
import importlib.util
import os

import ml_collections

from famus_jax.training import config as config_lib
from famus_jax.training.config import ConfigError

ABLATIONS = {
    'famus': {},
    'mwnet_pseudo_clean': {'meta.sampler': 'all'},
    'no_ssl': {'alg2.ssl.enabled': False},
    'no_co_guess': {'alg2.ssl.co_guess': False},
    'no_label_refine': {'alg2.ssl.label_refine': False},
    'no_mixup': {'alg2.ssl.mixup': False},
    'no_unsupervised': {'alg2.ssl.lambda_u': 0.0},
    'no_prior': {'alg2.ssl.prior_weight': 0.0},
    'ce_codivide_ssl': {'meta.method': 'ce', 'meta.sampler': 'all'},
}

SSL_AUGMENTS = ('data', 'shift', 'none')


def alg2_defaults() -> ml_collections.ConfigDict:
  """The `config.alg2` sub-config with its defaults (DivideMix's where the paper
  is silent: warm-up, λ_u, ramp-up 16 epochs, T 0.5, α 4, threshold 0.5)."""
  a = ml_collections.ConfigDict()
  a.enabled = True
  a.warmup_epochs = 10  # cross-entropy on all data, both networks
  a.eval_every_epochs = 1  # test evaluation (0: only at the end)
  a.checkpoint_every_epochs = 1  # (0: only at the end)
  a.min_set_size = 0  # smallest pseudo-clean/-noisy set; 0 = its batch size

  a.gmm = ml_collections.ConfigDict()
  a.gmm.threshold = 0.5  # pseudo-clean iff clean probability > threshold
  a.gmm.max_iter = 10
  a.gmm.tol = 1e-2
  a.gmm.reg_covar = 5e-4
  a.gmm.pool = 0  # examples drawn per epoch for the split; 0 = the whole train set
  a.gmm.during_warmup = False  # also fit (analysis only) in warm-up epochs

  a.ssl = ml_collections.ConfigDict()
  a.ssl.enabled = True
  a.ssl.co_guess = True
  a.ssl.label_refine = True
  a.ssl.mixup = True
  a.ssl.alpha = 4.0  # mixup Beta(α, α)
  a.ssl.temperature = 0.5  # sharpening
  a.ssl.labeled_weight = 1.0  # w_x of L_x (mixup CE on refined pseudo-clean labels)
  a.ssl.lambda_u = 25.0  # weight of the unsupervised MSE after ramp-up
  a.ssl.rampup_epochs = 16.0  # linear ramp-up of λ_u after warm-up
  a.ssl.prior_weight = 1.0  # uniform class-prior regulariser
  a.ssl.batch_size = 0  # labelled = unlabelled batch size; 0 = data.batch_size
  a.ssl.augment = 'data'  # views: data (config.data.augment) | shift | none
  return a


def with_alg2(config: ml_collections.ConfigDict, **alg2_overrides
              ) -> ml_collections.ConfigDict:
  """`config` switched to the Alg. 2 path: adds `alg2`, no clean meta set."""
  c = copy.deepcopy(config)
  with c.unlocked():
    c.alg2 = alg2_defaults()
  c.data.meta_per_class = 0
  for dotted, value in alg2_overrides.items():
    set_field(c.alg2, dotted, value)
  return c


def set_field(config, dotted: str, value) -> None:
  node = config
  *parents, last = dotted.split('.')
  for p in parents:
    node = node[p]
  node[last] = value


def load_sibling(name: str, relative_to: str):
  """`get_config()` of configs/<name> if that file exists, else None."""
  path = os.path.join(os.path.dirname(os.path.abspath(relative_to)), name)
  if not os.path.isfile(path):
    return None
  spec = importlib.util.spec_from_file_location(
      'famus_alg2_base_' + os.path.splitext(name)[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def is_enabled(config) -> bool:
  """True when `config` selects the Alg. 2 path (`config.alg2.enabled`)."""
  return 'alg2' in config and bool(config.alg2.get('enabled', False))


def _plain(config) -> ml_collections.ConfigDict:
  """A deep copy without `alg2` (what the base schema knows)."""
  d = config_lib.config_to_dict(config)
  d.pop('alg2', None)
  return ml_collections.ConfigDict(d)


def _unknown_fields(config, schema, prefix: str) -> list[str]:
  out = []
  for key in config.keys():
    if key not in schema:
      out.append(prefix + key)
    elif isinstance(config[key], ml_collections.ConfigDict):
      out.extend(_unknown_fields(config[key], schema[key], f'{prefix}{key}.'))
  return out


def validate(config) -> None:
  """Base schema checks plus the Alg. 2 fields; raises `ConfigError` (one line).

  The base validation runs twice: once with the real data config and meta
  step disabled (the base schema requires a clean meta set for a meta method),
  once with the default data config and the real meta fields.
  """
  if 'alg2' not in config:
    raise ConfigError('config.alg2: missing; build the config with '
                      'famus_jax.alg2.config.with_alg2()')
  unknown = _unknown_fields(config.alg2, alg2_defaults(), 'alg2.')
  if unknown:
    raise ConfigError(f'config.{unknown[0]}: unknown field; the schema is '
                      'famus_jax.alg2.config.alg2_defaults()')
  data_check = _plain(config)
  data_check.meta.method, data_check.meta.sampler = 'ce', 'all'
  config_lib.validate_config(data_check)
  meta_check = _plain(config)
  meta_check.data = ml_collections.ConfigDict(config_lib.base_config().data.to_dict())
  meta_check.train.eval_batch_size = meta_check.data.eval_batch_size
  config_lib.validate_config(meta_check)

  if config.data.meta_per_class != 0:
    raise ConfigError(f'config.data.meta_per_class={config.data.meta_per_class!r}: '
                      'must be 0 with alg2.enabled (the pseudo-clean sets are the meta '
                      'sets; Algorithm 2 uses no clean labels)')
  if config.optim.unit != 'epoch' or float(config.optim.num_epochs) != int(
      config.optim.num_epochs):
    raise ConfigError(f'config.optim.unit={config.optim.unit!r}: Algorithm 2 runs whole '
                      "epochs; must be 'epoch' with an integer optim.num_epochs")
  a = config.alg2
  config_lib.boolean(config, 'alg2.enabled')
  config_lib.number(config, 'alg2.warmup_epochs', 0, integer=True)
  if a.warmup_epochs >= config.optim.num_epochs:
    raise ConfigError(f'config.alg2.warmup_epochs={a.warmup_epochs}: must be < '
                      f'optim.num_epochs={config.optim.num_epochs} (no co-training '
                      'epoch would be left)')
  config_lib.number(config, 'alg2.eval_every_epochs', 0, integer=True)
  config_lib.number(config, 'alg2.checkpoint_every_epochs', 0, integer=True)
  config_lib.number(config, 'alg2.min_set_size', 0, integer=True)
  config_lib.number(config, 'alg2.gmm.threshold', 0, 1, hi_open=True)
  config_lib.number(config, 'alg2.gmm.max_iter', 1, integer=True)
  config_lib.number(config, 'alg2.gmm.tol', 0, lo_open=True)
  config_lib.number(config, 'alg2.gmm.reg_covar', 0)
  config_lib.number(config, 'alg2.gmm.pool', 0, integer=True)
  config_lib.boolean(config, 'alg2.gmm.during_warmup')
  for f in ('enabled', 'co_guess', 'label_refine', 'mixup'):
    config_lib.boolean(config, f'alg2.ssl.{f}')
  config_lib.number(config, 'alg2.ssl.alpha', 0, lo_open=True)
  config_lib.number(config, 'alg2.ssl.temperature', 0, lo_open=True)
  config_lib.number(config, 'alg2.ssl.labeled_weight', 0)
  config_lib.number(config, 'alg2.ssl.lambda_u', 0)
  config_lib.number(config, 'alg2.ssl.rampup_epochs', 0)
  config_lib.number(config, 'alg2.ssl.prior_weight', 0)
  config_lib.number(config, 'alg2.ssl.batch_size', 0, integer=True)
  config_lib.choice(config, 'alg2.ssl.augment', SSL_AUGMENTS)
