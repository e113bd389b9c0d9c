"""`config.alg2`: the Algorithm 2 fields, their defaults, validation, ablations.

The Alg. 2 schema (`alg2_schema()`) is the experiment schema
(`famus_jax.training.config.base_config()`) plus an `alg2` sub-config;
`config.algorithm = 'alg2'` selects it (`famus_jax.train.ALGORITHMS`). The
run length is in epochs (`optim.unit='epoch'`); `data.meta_per_class` must be
0 (no clean meta set: the pseudo-clean sets replace it). `meta.method` /
`meta.sampler` choose the meta step (MW-Net + FaMUS by default; `meta.method=ce`
trains the supervised part with plain cross-entropy, no meta step). Fields of
the base schema that Algorithm 2 does not use (`IGNORED`) must keep their
defaults: a value there would be silently without effect.

Ablations (command-line overrides, also `ABLATIONS`):
  MW-Net + Pseudo-clean (supplement Table 2)  --config.meta.sampler=all
  no semi-supervised term                     --config.alg2.ssl.enabled=False
  no co-guessing (own guesses only)           --config.alg2.ssl.co_guess=False
  no label refinement                         --config.alg2.ssl.label_refine=False
  no mixup                                    --config.alg2.ssl.mixup=False
  no unsupervised term                        --config.alg2.ssl.lambda_u=0
  no class-prior regulariser                  --config.alg2.ssl.prior_weight=0
  co-divide + SSL without meta-learning       --config.meta.method=ce
"""

from __future__ import annotations

import copy

import ml_collections

from famus_jax.alg2 import sampling
from famus_jax.training import config as config_lib
from famus_jax.training import strategies
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
    'ce_codivide_ssl': {'meta.method': strategies.PLAIN},
}

# Base-schema fields Algorithm 2 does not read, and what it reads instead.
IGNORED = {
    'train.log_every': 'it writes one row per epoch (alg2_epochs.jsonl)',
    'train.eval_every': 'it evaluates every alg2.eval_every_epochs',
    'train.checkpoint_every': 'it saves every alg2.checkpoint_every_epochs',
    'meta.warmup_epochs': 'its warm-up is alg2.warmup_epochs',
    'meta.warmup_restart': 'its warm-up is alg2.warmup_epochs, without a restart',
    'meta.warmup_select_every': 'its warm-up is alg2.warmup_epochs, without a restart',
}


def alg2_defaults() -> ml_collections.ConfigDict:
  """The `config.alg2` sub-config with its defaults (DivideMix's where the paper
  is silent: warm-up, λ_u, ramp-up 16 epochs, T 0.5, α 4, threshold 0.5)."""
  a = ml_collections.ConfigDict()
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


def alg2_schema() -> ml_collections.ConfigDict:
  """Every field of an Alg. 2 config with its default: `base_config()` + `alg2`."""
  c = config_lib.base_config()
  c.algorithm = 'alg2'
  c.alg2 = alg2_defaults()
  return c


def with_alg2(config: ml_collections.ConfigDict, **alg2_overrides
              ) -> ml_collections.ConfigDict:
  """`config` switched to the Alg. 2 path: adds `alg2`, no clean meta set, and
  the fields Algorithm 2 does not read (`IGNORED`) back at their defaults."""
  c = copy.deepcopy(config)
  c.algorithm = 'alg2'
  with c.unlocked():
    c.alg2 = alg2_defaults()
  c.data.meta_per_class = 0
  base = config_lib.base_config()
  for dotted in IGNORED:
    config_lib.set_field(c, dotted, config_lib.get_field(base, dotted))
  for dotted, value in alg2_overrides.items():
    config_lib.set_field(c.alg2, dotted, value)
  return c


def load_sibling(name: str, relative_to: str):
  """`get_config()` of the config file `name` beside `relative_to`
  (`famus_jax.training.config.load_config`)."""
  return config_lib.load_config(name, relative_to=relative_to)


def validate(config) -> None:
  """The Alg. 2 schema's checks; raises `ConfigError` (one line)."""
  if 'alg2' not in config:
    raise ConfigError('config.alg2: missing; build the config with '
                      'famus_jax.alg2.config.with_alg2()')
  config_lib.validate_config(config, schema=alg2_schema(),
                             schema_name='famus_jax.alg2.config.alg2_schema()',
                             clean_meta_set=False)
  base = config_lib.base_config()
  for dotted, instead in IGNORED.items():
    value, default = config_lib.get_field(config, dotted), config_lib.get_field(base, dotted)
    if value != default:
      raise ConfigError(f'config.{dotted}={value!r}: not used by Algorithm 2 ({instead}); '
                        f'leave it at {default!r}')
  if config.data.meta_per_class != 0:
    raise ConfigError(f'config.data.meta_per_class={config.data.meta_per_class!r}: '
                      'must be 0 with algorithm=\'alg2\' (the pseudo-clean sets are the meta '
                      'sets; Algorithm 2 uses no clean labels)')
  if config.optim.unit != 'epoch' or float(config.optim.num_epochs) != int(
      config.optim.num_epochs):
    raise ConfigError(f'config.optim.unit={config.optim.unit!r}: Algorithm 2 runs whole '
                      "epochs; must be 'epoch' with an integer optim.num_epochs")
  a = config.alg2
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
  config_lib.choice(config, 'alg2.ssl.augment', sorted(sampling.AUGMENTS))
