"""A small in-process training harness on the digits data for the analysis scripts.

`meta_grad_fidelity`, `layer_selection` and `weights_clean_vs_noisy` need what the
training loop (`famus_jax.train`) does not keep: the state at chosen steps, the
sampler's gates of every step, per-example weights of the whole training set.
This module drives the core's `jit_meta_train_step` directly on in-memory numpy
batches (epochs without replacement, as a loader would), with the paper's
schedule shape (lr α, ÷10 at 90 % and 95 % of the run, as Table 1's 18K/19K of
20K) and the same model and data as `configs/digits.py`.

Not a replacement for `famus_jax.train.train_and_evaluate` (no checkpoints,
sharding, logging): `digits_study` and `pseudo_clean_significance` use that.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jax.experimental.compilation_cache import compilation_cache

import famus_jax as fj
from famus_jax import data as data_lib
from famus_jax import famus, models

# Sampler fields of `config.meta` (famus_jax/training/config.py) with the
# defaults these scripts use: FaMUS K=4 with L_r (λ1 = 0.1), as configs/digits.py.
META_DEFAULTS = dict(sampler='all', k=4, s=4, b=1, tau=5.0, lambda1=0.1, lambda2=0.0,
                     delta=0.1, candidate_layers='all', granularity='module',
                     prune_levels=1)
MODEL = ('digits_cnn', {'width': 8, 'depth': 2})       # configs/digits.py
SMOKE_MODEL = ('digits_cnn', {'width': 4, 'depth': 1})  # 7 layers: fast compiles


def enable_compilation_cache(path: Optional[str] = None) -> Optional[str]:
  """Persistent XLA cache, so repeated runs (seeds, noise rates) compile once.

  `path`: a directory, '' or 'none' to disable; default `$FAMUS_XLA_CACHE` or
  ~/.cache/famus_jax/xla. Harmless for timings (they exclude compilation).
  """
  path = os.environ.get('FAMUS_XLA_CACHE', None) if path is None else path
  if path is None:
    path = os.path.join(os.path.expanduser('~'), '.cache', 'famus_jax', 'xla')
  if not path or path.lower() == 'none':
    return None
  os.makedirs(path, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)
  # JAX decides once per process whether the cache is used (at the first
  # compile); start afresh so that the directory set here takes effect.
  compilation_cache.reset_cache()
  return path


def disable_compilation_cache() -> None:
  """Undoes `enable_compilation_cache` (tests: leave the process as found)."""
  jax.config.update('jax_compilation_cache_dir', None)
  compilation_cache.reset_cache()


@dataclasses.dataclass
class Digits:
  """The digits splits as numpy arrays (train keeps its true labels)."""
  train: dict
  meta: dict
  test: dict
  num_classes: int
  info: dict

  @property
  def is_clean(self) -> np.ndarray:
    return self.train['label'] == self.train['true_label']


def load_digits(noise_type: str = 'symmetric', noise_rate: float = 0.4, seed: int = 0,
                meta_per_class: int = 10) -> Digits:
  """scikit-learn digits with seeded label noise and a clean meta set."""
  cfg = data_lib.default_data_config()
  cfg.name, cfg.noise_type, cfg.noise_rate = 'digits', noise_type, float(noise_rate)
  cfg.meta_per_class = int(meta_per_class)
  splits = data_lib.load_dataset(cfg, int(seed))
  arrays = [data_lib.as_arrays(s) for s in (splits.train, splits.meta, splits.test)]
  return Digits(*arrays, num_classes=splits.num_classes, info=dict(splits.info))


def meta_config(**overrides) -> ml_collections.ConfigDict:
  unknown = set(overrides) - set(META_DEFAULTS)
  if unknown:
    raise ValueError(f'unknown meta fields {sorted(unknown)}; known: {sorted(META_DEFAULTS)}')
  return ml_collections.ConfigDict({**META_DEFAULTS, **overrides})


def lr_schedule(lr: float, steps: int):
  """α, ÷10 at 90 % and 95 % of the run (the paper's 18K/19K of 20K)."""
  return optax.piecewise_constant_schedule(
      lr, {max(1, int(0.9 * steps)): 0.1, max(2, int(0.95 * steps)): 0.1})


@dataclasses.dataclass
class Trainer:
  """One meta re-weighting run, stepped by hand."""
  model: Any
  setup: fj.StepSetup
  state: fj.TrainState
  data: Digits
  batch_size: int
  meta_batch_size: int
  seed: int
  step_fn: Any = None
  sample_images: Any = None
  _rng: Any = None
  _order: Any = None
  _pos: int = 0

  plain: bool = False   # a plain cross-entropy step (method 'ce')

  def __post_init__(self):
    self._rng = np.random.default_rng(self.seed + 1000)
    self.step_fn = (fj.jit_plain_train_step(self.setup) if self.plain
                    else fj.jit_meta_train_step(self.setup))
    self._predict = jax.jit(lambda p, s, x: _apply_eval(self.setup.apply_fn, p, s, x))

  @property
  def sampler(self):
    return self.setup.sampler

  @property
  def layer_names(self) -> list[str]:
    if self.setup.sampler is not None:
      return [layer.name for layer in self.setup.sampler.layers]
    params = self.state.params
    return [layer.name for layer in famus.network_layers(self.model, params,
                                                         self.sample_images)]

  def next_batches(self) -> tuple[dict, dict]:
    """(train batch with 'true_label', clean meta batch), without replacement per epoch."""
    n = len(self.data.train['label'])
    if self._order is None or self._pos + self.batch_size > n:
      self._order, self._pos = self._rng.permutation(n), 0
    idx = self._order[self._pos:self._pos + self.batch_size]
    self._pos += self.batch_size
    m = len(self.data.meta['label'])
    jdx = self._rng.choice(m, min(self.meta_batch_size, m), replace=False)
    train = {k: jnp.asarray(self.data.train[k][idx]) for k in ('image', 'label', 'true_label')}
    val = {k: jnp.asarray(self.data.meta[k][jdx]) for k in ('image', 'label')}
    return train, val

  def random_batches(self, rng: np.random.Generator) -> tuple[dict, dict]:
    """A (train, meta) batch pair drawn with `rng` (probes: the training stream is untouched)."""
    idx = rng.choice(len(self.data.train['label']), self.batch_size, replace=False)
    m = len(self.data.meta['label'])
    jdx = rng.choice(m, min(self.meta_batch_size, m), replace=False)
    return ({k: jnp.asarray(self.data.train[k][idx]) for k in ('image', 'label', 'true_label')},
            {k: jnp.asarray(self.data.meta[k][jdx]) for k in ('image', 'label')})

  def step(self, batches: Optional[tuple] = None) -> dict:
    """One full meta iteration; returns the device metrics."""
    train, val = batches if batches is not None else self.next_batches()
    if self.plain:
      self.state, metrics = self.step_fn(
          self.state, {'image': train['image'], 'label': train['label']})
    else:
      self.state, metrics = self.step_fn(self.state, train, val)
    return metrics

  def logits(self, images: np.ndarray) -> jax.Array:
    return self._predict(self.state.params, self.state.batch_stats, jnp.asarray(images))

  def accuracy(self, split: str = 'test') -> float:
    arrays = getattr(self.data, split)
    pred = np.asarray(jnp.argmax(self.logits(arrays['image']), -1))
    return float(np.mean(pred == arrays['true_label']))

  def train_losses(self) -> np.ndarray:
    """Per-example CE (eval mode, noisy labels) of the whole training split."""
    logits = self.logits(self.data.train['image'])
    labels = jnp.asarray(self.data.train['label'])
    return np.asarray(-jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None],
                                           axis=1)[:, 0])

  def raw_weights(self) -> np.ndarray:
    """MW-Net Ψ(ℓ_i; θ) ∈ (0, 1) for every training example (before normalisation)."""
    meta_model = self.setup.meta_model
    if not hasattr(meta_model, 'raw_weights'):
      raise ValueError(f'{meta_model.name} has no per-example weighting function')
    return np.asarray(meta_model.raw_weights(self.state.meta_params,
                                             jnp.asarray(self.train_losses())))


def _apply_eval(apply_fn, params, batch_stats, images):
  if jax.tree_util.tree_leaves(batch_stats):
    return apply_fn({'params': params, 'batch_stats': batch_stats}, images, train=False)
  return apply_fn({'params': params}, images, train=False)


def make_trainer(data: Digits, *, method: str = 'mwnet', meta: Optional[dict] = None,
                 model: tuple = MODEL, steps: int = 600, lr: float = 0.05,
                 meta_lr: float = 1e-3, batch_size: int = 64, meta_batch_size: int = 50,
                 seed: int = 0, mode: str = 'jvp') -> Trainer:
  """A `Trainer` for `method` ('ce', 'mwnet', 'l2r', 'mlc') with sampler fields `meta`."""
  name, kwargs = model
  net = models.get_model(name, num_classes=data.num_classes, **dict(kwargs))
  sample_images = jnp.zeros((1,) + data.train['image'].shape[1:], jnp.float32)
  params = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), sample_images,
                                           train=False))['params']
  mcfg = meta_config(**(meta or {}))
  plain = method == 'ce'
  if plain and mcfg.sampler != 'all':
    raise ValueError(f"method 'ce' takes no sampler, got {mcfg.sampler!r}")
  setup = fj.StepSetup(
      apply_fn=net.apply, meta_model=fj.get_meta_model('l2r' if plain else method),
      tx=fj.sgd_with_weight_decay(lr_schedule(lr, steps), momentum=0.9, weight_decay=5e-4),
      meta_tx=fj.make_meta_optimizer('adam', meta_lr, 1e-4),
      lr_schedule=lr_schedule(lr, steps), mode=mode,
      scope=famus.static_scope(mcfg, net, params, sample_images),
      sampler=famus.build_sampler(mcfg, net, params, sample_images))
  state = fj.create_train_state(jax.random.PRNGKey(seed), net, sample_images,
                                data.num_classes, setup)
  return Trainer(net, setup, state, data, batch_size, meta_batch_size, seed,
                 sample_images=sample_images, plain=plain)


def flatten(tree) -> jax.Array:
  return jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


def smoke_settings(args) -> None:
  """The tiniest settings (tests): small model, few steps."""
  args.model = SMOKE_MODEL


def add_common_flags(parser, *, steps: int, quick_steps: int, smoke_steps: int):
  parser.add_argument('--quick', action='store_true', help='CPU-sized run (minutes)')
  parser.add_argument('--smoke', action='store_true',
                      help='tiniest settings (seconds; for the tests)')
  parser.add_argument('--steps', type=int, default=None,
                      help=f'training iterations (full {steps}, quick {quick_steps}, '
                      f'smoke {smoke_steps})')
  parser.add_argument('--results-dir', default=None,
                      help='where the JSON and PNG go (default experiments/results)')
  parser.add_argument('--xla-cache', default=None,
                      help="persistent compilation cache dir ('none' disables)")
  parser.add_argument('--tag', default='', help='appended to the result file names')
  parser.set_defaults(_steps=(steps, quick_steps, smoke_steps))


def resolve_steps(args) -> int:
  full, quick, smoke = args._steps  # pylint: disable=protected-access
  if args.steps is not None:
    return args.steps
  return smoke if args.smoke else quick if args.quick else full


def suffix(args) -> str:
  tag = f"_{args.tag}" if getattr(args, 'tag', '') else ''
  return ('_smoke' if args.smoke else '_quick' if args.quick else '') + tag
