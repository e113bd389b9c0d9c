"""Capture hooks on the trainer, and the digits settings, for the analysis scripts.

`meta_grad_fidelity`, `layer_selection`, `weights_clean_vs_noisy` and
`synthetic_cifar_run` need what a run's files do not keep: the network at
chosen iterations, the sampler's gates of every iteration, per-example weights
of the whole training set, the time of each iteration. They run the training
loop itself (`famus_jax.train.train_and_evaluate`, the same `Trainer` as every
run) with `configs/digits.py`, overridden per script (`digits_config`: run
length in iterations, the paper's schedule shape lr α ÷10 at 90 % and 95 % of
the run, as Table 1's 18K/19K of 20K), in a temporary workdir, and read those
through a `Capture` hook:

    def probe(lab, done):          # before the first iteration and after each
      if done % 100 == 0:
        points.append(lab.raw_weights())
    capture = Capture(probe, keys=('gates',))
    summary = run(digits_config(steps=600, meta={'sampler': 'famus'}), capture)
    capture.metrics['gates']       # (600, L) on the host
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable, Iterable, Optional

import jax
from jax.experimental.compilation_cache import compilation_cache
import jax.numpy as jnp
import ml_collections
import numpy as np

from famus_jax import data as data_lib
from famus_jax import famus
from famus_jax import train
from famus_jax.core import forward as forward_lib
from famus_jax.training import config as config_lib
from famus_jax.training.hooks import Hook

DIGITS_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             'configs', 'digits.py')
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


def digits_config(*, steps: int, method: str = 'mwnet', meta: Optional[dict] = None,
                  model: Optional[tuple] = None, seed: int = 0,
                  data: Optional[dict] = None, optim: Optional[dict] = None
                  ) -> ml_collections.ConfigDict:
  """`configs/digits.py` for a run of `steps` iterations (lr ÷10 at 90 % and
  95 % of them), `meta.method=method`, the fields of `meta`, `data` and `optim`
  overridden, `model` = (name, kwargs) replacing the config's network; no
  evaluation before the end, no checkpoint, no progress bar."""
  c = config_lib.load_config(DIGITS_CONFIG)
  c.seed = int(seed)
  c.optim.unit, c.optim.num_steps, c.optim.num_epochs = 'step', int(steps), 0
  c.optim.boundaries = tuple(sorted({max(1, int(0.9 * steps)), max(2, int(0.95 * steps))}
                                    - {0}))
  c.meta.method = method
  for section, fields in (('meta', meta), ('data', data), ('optim', optim)):
    for key, value in (fields or {}).items():
      c[section][key] = value
  if model is not None:
    c.model.name, c.model.kwargs = model[0], ml_collections.ConfigDict(dict(model[1]))
  c.train.log_every, c.train.eval_every, c.train.checkpoint_every = int(steps), 0, 0
  c.train.progress = False
  return c


def run(config, *hooks: Hook, splits=None) -> dict:
  """`train_and_evaluate(config)` with `hooks`, in a temporary workdir; the
  summary."""
  with tempfile.TemporaryDirectory(prefix='famus_lab_') as workdir:
    return train.train_and_evaluate(config, workdir, hooks=hooks, splits=splits)


def _apply_eval(apply_fn, params, batch_stats, images):
  return forward_lib.apply_model(apply_fn, params, batch_stats, images, train=False)[0]


class Capture(Hook):
  """The trainer's network as a run goes, with the analyses the scripts need.

  `probe(self, done)` is called before the first iteration (done = 0) and
  after each (done = iterations so far); `metrics[key]` collects `keys` of
  every iteration's metrics (host arrays after the run: `np.asarray`).
  """

  def __init__(self, probe: Optional[Callable[['Capture', int], None]] = None,
               keys: Iterable[str] = ()):
    self.probe, self.keys = probe, tuple(keys)
    self.metrics = {k: [] for k in self.keys}
    self.trainer = self.data = self._predict = None

  def on_start(self, trainer) -> None:
    self.trainer = trainer
    splits = trainer.splits
    self.data = {name: data_lib.as_arrays(source) for name, source in
                 (('train', splits.train), ('meta', splits.meta), ('test', splits.test))
                 if source is not None}
    apply_fn = trainer.parts.setup.apply_fn
    self._predict = jax.jit(lambda p, s, x: _apply_eval(apply_fn, p, s, x))
    if self.probe is not None:
      self.probe(self, trainer.start)

  def after_iteration(self, trainer, member, step, host, metrics) -> None:
    for k in self.keys:
      self.metrics[k].append(metrics[k])
    if self.probe is not None:
      self.probe(self, step + 1)

  # -- the network now -----------------------------------------------------------

  @property
  def state(self):
    return self.trainer.states['net']

  @property
  def setup(self):
    return self.trainer.parts.setup

  @property
  def sampler(self):
    return self.trainer.parts.sampler

  @property
  def layer_names(self) -> list[str]:
    parts = self.trainer.parts
    if parts.layer_names is not None:
      return parts.layer_names
    return [layer.name for layer in famus.network_layers(
        parts.model, self.state.params, parts.sample_images)]

  @property
  def is_clean(self) -> np.ndarray:
    return self.data['train']['label'] == self.data['train']['true_label']

  def random_batches(self, rng: np.random.Generator) -> tuple[dict, dict]:
    """A (train, meta) batch pair drawn with `rng` (the run's own batches are
    untouched)."""
    c = self.trainer.config.data
    train_, meta = self.data['train'], self.data['meta']
    idx = rng.choice(len(train_['label']), int(c.batch_size), replace=False)
    jdx = rng.choice(len(meta['label']), min(int(c.meta_batch_size), len(meta['label'])),
                     replace=False)
    return ({k: jnp.asarray(train_[k][idx]) for k in ('image', 'label', 'true_label')},
            {k: jnp.asarray(meta[k][jdx]) for k in ('image', 'label')})

  def logits(self, images: np.ndarray) -> jax.Array:
    return self._predict(self.state.params, self.state.batch_stats, jnp.asarray(images))

  def accuracy(self, split: str = 'test') -> float:
    arrays = self.data[split]
    pred = np.asarray(jnp.argmax(self.logits(arrays['image']), -1))
    return float(np.mean(pred == arrays['true_label']))

  def train_losses(self) -> np.ndarray:
    """Per-example CE (eval mode, noisy labels) of the whole training split."""
    logits = self.logits(self.data['train']['image'])
    labels = jnp.asarray(self.data['train']['label'])
    return np.asarray(-jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None],
                                           axis=1)[:, 0])

  def raw_weights(self) -> np.ndarray:
    """MW-Net Ψ(ℓ_i; θ) ∈ (0, 1) for every training example (before normalisation)."""
    meta_model = self.setup.meta_model
    if not hasattr(meta_model, 'raw_weights'):
      raise ValueError(f'{meta_model.name} has no per-example weighting function')
    return np.asarray(meta_model.raw_weights(self.state.meta_params,
                                             jnp.asarray(self.train_losses())))


def flatten(tree) -> jax.Array:
  return jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


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
