"""The experiment config schema (`base_config`) and its validation.

Every file in `configs/` builds on `base_config()` and overrides what the
experiment needs; any field can then be overridden on the command line
(`--config.meta.k=8`). `validate_config` checks everything that does not need
the data (names, types, ranges, combinations); `validate_against_data` checks
what does (batch sizes vs split sizes, classes, devices). Both raise
`ConfigError`, whose message is one line naming the field and what is allowed.
"""

from __future__ import annotations

import numbers
import os
import re
from typing import Any, Iterable

import ml_collections

from famus_jax.core import meta_gradient, train_state
from famus_jax.data import default_data_config, validate_data_config
from famus_jax.famus import dispatch as dispatch_lib
from famus_jax.famus import layers as layers_lib
from famus_jax.famus import samplers as samplers_lib
from famus_jax.models import MODELS
from famus_jax.training import config_file
from famus_jax.training import strategies
from famus_jax.training.config_file import ConfigFileError  # pylint: disable=unused-import

# Names that no registry holds (the meta choices are read from their registries
# in `validate_config`: methods, modes, look-aheads, meta optimizers, samplers,
# granularities).
SCHEDULES = ('piecewise', 'constant', 'cosine')
UNITS = ('step', 'epoch')
DTYPES = ('float32', 'bfloat16')
# Fields whose contents are free-form (checked by the code that consumes them).
FREE_FORM = ('model.kwargs', 'meta.model_kwargs')


class ConfigError(ValueError):
  """A config value is not allowed; str() is one line naming the field."""

  def __init__(self, message: str):
    super().__init__(' '.join(str(message).split()))


def _meta_config() -> ml_collections.ConfigDict:
  """`config.meta`: the method, its meta model and optimiser, FaMUS's sampler."""
  m = ml_collections.ConfigDict()
  m.method = 'mwnet'  # ce | mwnet | l2r | mlc | mlc_transition
  m.model_kwargs = ml_collections.ConfigDict()  # meta model fields (mlc: step_size, inner_lr)
  m.mode = 'jvp'  # jvp | reverse (meta-gradient path)
  m.lookahead = 'sgd'  # sgd | optimizer
  m.optimizer = 'adam'  # adam | sgd (meta model optimizer)
  m.lr = 1e-3  # β
  m.weight_decay = 1e-4
  m.momentum = 0.9  # meta.optimizer='sgd' only
  m.nesterov = False  # meta.optimizer='sgd' only
  m.interval = 1  # meta step every `interval` iterations
  m.warmup_epochs = 0.0  # plain cross-entropy for the first epochs (meta methods)
  # The official MLC code's restart after the warm-up (famus_jax/training/warmup.py):
  # the best warm-up network on the clean meta set, momentum zeroed.
  m.warmup_restart = False
  m.warmup_select_every = 100  # iterations between the warm-up's evaluations
  m.sampler = 'all'  # all (exact) | famus | random | block; unused by ce
  m.k = 4  # FaMUS: target number of sampled layers
  m.s = 4  # random: layers drawn per iteration
  m.b = 1  # block: the residual block
  m.lambda1 = 0.0  # weight of L_r
  m.lambda2 = 0.0  # weight of L_g
  m.tau = 5.0  # Gumbel-softmax temperature
  m.delta = 0.1  # sampler learning rate
  m.candidate_layers = 'all'  # all | top:N | comma-separated layer names
  m.granularity = 'module'  # module | tensor
  # Run-time meta scopes (README "FaMUS at run time"): nested scopes cut at block
  # boundaries, 0 = by work (each at most half the next larger one's), 1 = one
  # scope, P = P scopes by layer count.
  m.prune_levels = 0
  m.dispatch = dispatch_lib.DEFAULT  # host | ahead | switch | none: how a scope's program is chosen
  m.gate_grad = 'scope'  # scope | all: where the gates' gradient is formed
  m.rate_cost = 'count'  # count | flops | scope: how L_r prices a layer (README)
  # FaMUS sampler variants (README, "Fidelity to the paper and the official codes"):
  m.sampler_depth = 3  # dense layers of Γ: 3 (official code) | 2 (paper)
  m.sampler_input = 'standardized'  # standardized (official code) | pooled (paper)
  m.gate_surrogate = 'straight'  # straight (ours) | official: ∂L_c/∂r of off layers
  return m


def base_config() -> ml_collections.ConfigDict:
  """The full schema with defaults (the digits quickstart's model and data)."""
  c = ml_collections.ConfigDict()
  # The training algorithm (famus_jax.train.ALGORITHMS): standard (one network,
  # a clean meta set or none) | alg2 (pseudo-clean co-training: configs/*_alg2.py,
  # with the `alg2` section of famus_jax.alg2.config.with_alg2).
  c.algorithm = 'standard'
  c.seed = 0
  c.workdir_hint = ''  # unused; a place to note where runs of this config live

  c.model = ml_collections.ConfigDict()
  c.model.name = 'digits_cnn'
  c.model.num_classes = ml_collections.FieldReference(None, field_type=int)  # None: data's
  c.model.dtype = 'float32'
  c.model.kwargs = ml_collections.ConfigDict()  # model attributes (width, dropout, ...)
  # Start from a weights file (.npz / .safetensors; torchvision ResNet names are
  # converted): famus_jax/models/weights.py. '' = the model's random init.
  c.model.init_from = ''
  c.model.init_exclude = ''  # comma-separated modules kept at their init, e.g. 'head'

  c.data = default_data_config()

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 0.1
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.nesterov = False
  c.optim.schedule = 'piecewise'  # piecewise | constant | cosine
  c.optim.boundaries = ()  # in `unit`s; lr *= decay_factor at each
  c.optim.decay_factor = 0.1
  c.optim.unit = 'step'  # unit of boundaries and of the run length
  # The run length: exactly one of these is > 0, the one named by `unit`
  # (num_steps = num_epochs * steps_per_epoch when unit='epoch').
  c.optim.num_steps = 1000
  c.optim.num_epochs = 0

  c.meta = _meta_config()

  c.train = ml_collections.ConfigDict()
  c.train.log_every = 50
  c.train.eval_every = 1000  # 0: only at the end
  c.train.checkpoint_every = 1000  # 0: only at the end (and on SIGTERM)
  c.train.keep_checkpoints = 3
  c.train.eval_batch_size = c.data.get_ref('eval_batch_size')  # shared field
  c.train.progress = True  # tqdm bar
  c.train.num_devices = 0  # data-parallel devices; 0 = all local devices
  c.train.weight_window = 20000  # recent examples kept for the weight histograms
  c.train.label_ema = 0.98  # per-visit decay of the per-example moving averages (1: mean)
  return c


# ---------------------------------------------------------------------------
# Validation helpers.


def get_field(config, dotted: str):
  """`config.a.b` for 'a.b'."""
  node = config
  for part in dotted.split('.'):
    node = node[part]
  return node


def set_field(config, dotted: str, value) -> None:
  """`config.a.b = value` for 'a.b'."""
  *parents, last = dotted.split('.')
  node = config
  for part in parents:
    node = node[part]
  node[last] = value


def with_fields(config, fields: dict):
  """`config` with `fields` ({'meta.k': 8, ...}) set; returns it."""
  for dotted, value in fields.items():
    set_field(config, dotted, value)
  return config



def _is_number(v, integer=False):
  if isinstance(v, bool) or not isinstance(v, numbers.Real):
    return False
  return not integer or float(v) == int(v)


def number(config, field: str, lo=None, hi=None, *, integer=False,
           lo_open=False, hi_open=False):
  v = get_field(config, field)
  ok = _is_number(v, integer)
  if ok and lo is not None:
    ok = v > lo if lo_open else v >= lo
  if ok and hi is not None:
    ok = v < hi if hi_open else v <= hi
  if not ok:
    lb = '(' if lo_open else '['
    rb = ')' if hi_open else ']'
    rng = f"{lb}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}{rb}"
    kind = 'an integer' if integer else 'a number'
    raise ConfigError(f'config.{field}={v!r}: must be {kind} in {rng}')
  return v


def choice(config, field: str, allowed: Iterable[str]):
  v = get_field(config, field)
  allowed = tuple(allowed)
  if v not in allowed:
    raise ConfigError(f'config.{field}={v!r}: must be one of '
                      f'{", ".join(map(repr, allowed))}')
  return v


def boolean(config, field: str):
  v = get_field(config, field)
  if not isinstance(v, bool):
    raise ConfigError(f'config.{field}={v!r}: must be True or False')
  return v


def _unknown_fields(config, schema, prefix=''):
  """Dotted names present in `config` but not in `schema`."""
  out = []
  for key in config.keys():
    name = f'{prefix}{key}'
    if key not in schema:
      out.append(name)
      continue
    if name in FREE_FORM:
      continue
    sub, ref = config[key], schema[key]
    if isinstance(sub, ml_collections.ConfigDict):
      if not isinstance(ref, ml_collections.ConfigDict):
        out.append(name)
      else:
        out.extend(_unknown_fields(sub, ref, name + '.'))
  return out


_CANDIDATE_RE = re.compile(r'^(all|top:[1-9][0-9]*|[^,\s]+(,[^,\s]+)*)$')


def validate_config(config, *, schema=None,
                    schema_name: str = 'famus_jax.training.config.base_config()',
                    clean_meta_set: bool = True) -> None:
  """Checks names, types, ranges and combinations; raises `ConfigError`.

  `schema` (default `base_config()`): the fields allowed; `clean_meta_set`:
  whether a meta method needs `data.meta_per_class` >= 1 (Algorithm 2 draws
  its meta sets from the training data instead).
  """
  unknown = _unknown_fields(config, base_config() if schema is None else schema)
  if unknown:
    raise ConfigError(f'config.{unknown[0]}: unknown field; the schema is {schema_name}')
  number(config, 'seed', 0, integer=True)  # numpy's seed sequences take no negatives

  # model
  choice(config, 'model.name', sorted(MODELS))
  if config.model.num_classes is not None:
    number(config, 'model.num_classes', 1, integer=True)
  choice(config, 'model.dtype', DTYPES)
  for field in ('model.init_from', 'model.init_exclude'):
    if not isinstance(get_field(config, field), str):
      raise ConfigError(f'config.{field}={get_field(config, field)!r}: must be a string '
                        "(a path, a comma-separated module list, or '')")

  # data (the data module's own validation, re-raised as ConfigError)
  try:
    validate_data_config(config.data)
  except ValueError as e:
    raise ConfigError(str(e)) from None

  _validate_optim(config)
  _validate_meta(config, clean_meta_set)

  # train
  number(config, 'train.log_every', 1, integer=True)
  number(config, 'train.eval_every', 0, integer=True)
  number(config, 'train.checkpoint_every', 0, integer=True)
  number(config, 'train.keep_checkpoints', 1, integer=True)
  number(config, 'train.eval_batch_size', 1, integer=True)
  boolean(config, 'train.progress')
  number(config, 'train.num_devices', 0, integer=True)
  number(config, 'train.weight_window', 0, integer=True)
  number(config, 'train.label_ema', 0, 1)


def _validate_optim(config) -> None:
  """`config.optim`: rates, schedule and the run length in its unit."""
  number(config, 'optim.lr', 0, lo_open=True)
  number(config, 'optim.momentum', 0, 1, hi_open=True)
  number(config, 'optim.weight_decay', 0)
  boolean(config, 'optim.nesterov')
  choice(config, 'optim.schedule', SCHEDULES)
  number(config, 'optim.decay_factor', 0, 1, lo_open=True)
  unit = choice(config, 'optim.unit', UNITS)
  number(config, 'optim.num_steps', 0, integer=True)
  number(config, 'optim.num_epochs', 0)
  length_field = 'num_steps' if unit == 'step' else 'num_epochs'
  other = 'num_epochs' if unit == 'step' else 'num_steps'
  if not config.optim[length_field] > 0:
    raise ConfigError(f'config.optim.{length_field}={config.optim[length_field]!r}: '
                      f"must be > 0 with optim.unit={unit!r}")
  if config.optim[other] != 0:
    raise ConfigError(f'config.optim.{other}={config.optim[other]!r}: must be 0 with '
                      f"optim.unit={unit!r} (the run length is optim.{length_field}; "
                      'set exactly one)')
  bounds = config.optim.boundaries
  if not isinstance(bounds, (list, tuple)) or not all(
      _is_number(b) and b > 0 for b in bounds):
    raise ConfigError(f'config.optim.boundaries={bounds!r}: must be a list of '
                      f'positive numbers (in {unit}s)')
  if list(bounds) != sorted(set(bounds)):
    raise ConfigError(f'config.optim.boundaries={bounds!r}: must be strictly increasing')
  if bounds and bounds[-1] >= config.optim[length_field]:
    raise ConfigError(f'config.optim.boundaries={tuple(bounds)!r}: every boundary must '
                      f'be < optim.{length_field}={config.optim[length_field]}')
  if config.optim.schedule != 'piecewise' and bounds:
    raise ConfigError(f'config.optim.boundaries={tuple(bounds)!r}: only the '
                      "'piecewise' schedule takes boundaries; set () for "
                      f'optim.schedule={config.optim.schedule!r}')


def _validate_meta(config, clean_meta_set: bool = True) -> None:
  """`config.meta`: every choice read from the registry that holds it."""
  method = choice(config, 'meta.method', sorted(strategies.STRATEGIES))
  strategy = strategies.STRATEGIES[method]
  try:
    strategy.meta_model(config.meta)
  except ValueError as e:
    raise ConfigError(f'config.meta.model_kwargs: {e}') from None
  choice(config, 'meta.mode', sorted(meta_gradient.PATHS))
  choice(config, 'meta.lookahead', sorted(train_state.LOOKAHEADS))
  choice(config, 'meta.optimizer', sorted(train_state.META_OPTIMIZERS))
  number(config, 'meta.lr', 0, lo_open=True)
  number(config, 'meta.weight_decay', 0)
  number(config, 'meta.momentum', 0, 1, hi_open=True)
  boolean(config, 'meta.nesterov')
  number(config, 'meta.interval', 1, integer=True)
  number(config, 'meta.warmup_epochs', 0)
  if boolean(config, 'meta.warmup_restart') and not config.meta.warmup_epochs > 0:
    raise ConfigError('config.meta.warmup_restart=True: restarts after the warm-up; '
                      'set meta.warmup_epochs > 0 (or warmup_restart=False)')
  number(config, 'meta.warmup_select_every', 1, integer=True)
  choice(config, 'meta.sampler', sorted(samplers_lib.SAMPLERS))
  number(config, 'meta.k', 1, integer=True)
  number(config, 'meta.s', 1, integer=True)
  number(config, 'meta.b', 1, integer=True)
  number(config, 'meta.lambda1', 0)
  number(config, 'meta.lambda2', 0)
  number(config, 'meta.tau', 0, lo_open=True)
  number(config, 'meta.delta', 0, lo_open=True)
  choice(config, 'meta.granularity', sorted(layers_lib.GRANULARITIES))
  number(config, 'meta.prune_levels', 0, integer=True)
  choice(config, 'meta.dispatch', sorted(dispatch_lib.DISPATCHERS))
  choice(config, 'meta.gate_grad', sorted(samplers_lib.GATE_GRADS))
  choice(config, 'meta.rate_cost', sorted(samplers_lib.RATE_COSTS))
  for field, _, known in samplers_lib.FAMUS_OPTIONS:
    choice(config, f'meta.{field}', list(known))
  cand = config.meta.candidate_layers
  if (not isinstance(cand, str) or not _CANDIDATE_RE.match(cand)
      or (cand.startswith('top:') and not re.match(r'^top:[1-9][0-9]*$', cand))):
    raise ConfigError(f'config.meta.candidate_layers={cand!r}: must be \'all\', '
                      "'top:N' (N >= 1) or comma-separated layer names")
  if clean_meta_set and strategy.uses_meta_set and config.data.meta_per_class == 0:
    raise ConfigError(f"config.data.meta_per_class=0: meta.method={method!r} needs a "
                      'clean meta set (meta_per_class >= 1, or -1 on clothing1m); '
                      'without one use meta.method=ce (plain cross-entropy)')


def uses_meta_set(config) -> bool:
  """Whether `config.meta.method` draws validation batches (has a meta step)."""
  return strategies.get_strategy_class(config.meta.method).uses_meta_set


def validate_against_data(config, splits, num_devices: int, limits: Iterable) -> None:
  """Checks that need the data and the devices; raises `ConfigError`.

  `limits`: the algorithm's `SizeLimit`s (field, value, limit, what, note):
  batch and set sizes that must not exceed the sizes of the data.
  """
  for field, value, limit, what, note in limits:
    if value > limit:
      raise ConfigError(f'config.{field}={value}: larger than {what} ({limit} examples); '
                        f'must be <= {limit}{note}')
  d = config.data
  if config.model.num_classes is not None and config.model.num_classes != splits.num_classes:
    raise ConfigError(f'config.model.num_classes={config.model.num_classes}: the data '
                      f'set {d.name!r} has {splits.num_classes} classes; must be None '
                      f'or {splits.num_classes}')
  sharded = ('batch_size', 'eval_batch_size') + (
      ('meta_batch_size',) if uses_meta_set(config) else ())
  for field in sharded:
    if d[field] % num_devices:
      raise ConfigError(f'config.data.{field}={d[field]}: must be a multiple of the '
                        f'number of devices ({num_devices}) for data parallelism')


def config_to_dict(config) -> dict[str, Any]:
  """Plain JSON-able dict (tuples become lists)."""
  return config.to_dict() if hasattr(config, 'to_dict') else dict(config)


# Fields that may change when a run resumes from its workdir.
RESUMABLE_FIELDS = ('train.', 'workdir_hint', 'data.prefetch', 'data.data_dir',
                    'data.imagenet_val_dir')


def flatten(d: dict, prefix='') -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = list(v) if isinstance(v, tuple) else v
  return out


def resume_conflicts(saved: dict, current: dict) -> list[str]:
  """Dotted fields that differ between two configs and matter for resuming."""
  a, b = flatten(saved), flatten(current)
  keys = sorted(set(a) | set(b))
  return [k for k in keys if a.get(k) != b.get(k)
          and not any(k.startswith(p) for p in RESUMABLE_FIELDS)]



def load_config(path: str, *, relative_to: str | None = None) -> ml_collections.ConfigDict:
  """`get_config()` of a config file (e.g. a sibling: `load_config('cifar10.py',
  relative_to=__file__)`), so configs can build on each other; a file that
  cannot be used raises `ConfigFileError` (one line naming it)."""
  if relative_to is not None:
    path = os.path.join(os.path.dirname(os.path.abspath(relative_to)), path)
  name = 'famus_config_' + os.path.splitext(os.path.basename(path))[0]
  return config_file.load_config_file(path, module_name=name)
