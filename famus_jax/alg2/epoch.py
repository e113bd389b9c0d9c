"""What Algorithm 2 does in one epoch: the GMM split of each network, the plan
built from the other network's split, and one epoch of training of one network
(the method strategy's iteration on batches of the whole training set, its
validation batches from the plan's pseudo-clean set, then the SSL step).

`CoTrainer` holds the pieces of a run built once (data, model, strategy, SSL
step, compiled programs); the harness (`famus_jax.training.run.Run`) holds the
workdir, mesh, checkpoints and checks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from famus_jax import core
from famus_jax import data as data_lib
from famus_jax.alg2 import gmm as gmm_lib
from famus_jax.alg2 import sampling
from famus_jax.alg2 import ssl as ssl_lib
from famus_jax.alg2 import steps as steps_lib
from famus_jax.analysis import tracking as tracking_lib
from famus_jax.training import metrics as metrics_lib
from famus_jax.training import schedules
from famus_jax.training.build import (build_model, build_sampler_and_scope, build_setup,
                                      build_strategy, initial_weights,
                                      with_initial_weights)
from famus_jax.training.config import ConfigError
from famus_jax.training.run import Run, means, padded_batches

NETS = ('net1', 'net2')
OTHER = {'net1': 'net2', 'net2': 'net1'}
# Seed streams (with config.seed) of the per-epoch draws.
_STREAM_VAL, _STREAM_LAB, _STREAM_UNL, _STREAM_POOL = 0xA1, 0xA2, 0xA3, 0xA4
LOSS_KEYS = ('loss', 'ssl_loss', 'val_loss')  # NaN/Inf-checked at each epoch's end


class StopRequested(Exception):
  """SIGTERM/SIGINT arrived during an epoch; the partial epoch is dropped."""


@dataclasses.dataclass
class Network:
  """One co-trained network: its core train state and SSL momentum state."""
  state: core.TrainState
  ssl_opt: Any


@dataclasses.dataclass
class EpochPlan:
  """What one network trains on in an epoch (indices into the training split),
  all from the *other* network's GMM split.

  Attributes:
    meta: meta validation set (the other's pseudo-clean set).
    labeled: SSL labelled set (the same pseudo-clean set).
    unlabeled: SSL unlabelled set (the other's pseudo-noisy set).
    prob: (N,) the other network's clean probability per training example
      (0 outside the pool).
    source: the network whose split this is.
    fallback: which sets were too small and were filled by rank.
  """
  meta: np.ndarray
  labeled: np.ndarray
  unlabeled: np.ndarray
  prob: np.ndarray
  source: str
  fallback: dict


def plan_epoch(split: gmm_lib.GmmSplit, pool: np.ndarray, num_train: int, *,
               source: str, min_clean: int, min_noisy: int) -> EpochPlan:
  """The epoch plan of the network trained against `split` (the other's GMM).

  Sets smaller than `min_clean` / `min_noisy` (degenerate splits) are replaced
  by the examples of highest / lowest clean probability.
  """
  clean, fb_clean = sampling.ensure_min_size(split.clean_indices, split.prob, min_clean)
  noisy, fb_noisy = sampling.ensure_min_size(split.noisy_indices, -split.prob, min_noisy)
  prob = np.zeros((num_train,), np.float32)
  prob[pool] = split.prob
  return EpochPlan(meta=pool[clean], labeled=pool[clean], unlabeled=pool[noisy],
                   prob=prob, source=source,
                   fallback={'clean': bool(fb_clean), 'noisy': bool(fb_noisy)})


def plan_cotraining(splits: dict, pool: np.ndarray, num_train: int, *,
                    min_clean: int, min_noisy: int) -> dict:
  """{'net1': plan from net2's split, 'net2': plan from net1's split}."""
  return {net: plan_epoch(splits[OTHER[net]], pool, num_train, source=OTHER[net],
                          min_clean=min_clean, min_noisy=min_noisy) for net in NETS}


def validation_batch(val: dict) -> dict:
  """The meta step's validation batch: a pseudo-clean batch with its labels as
  given (the true labels and indices stay on the host)."""
  return {'image': val['image'], 'label': val['label']}


def check_sizes(config, num_train: int, num_classes: int) -> None:
  """Batch and pool sizes against the training split; `ConfigError` otherwise."""
  d, a = config.data, config.alg2
  for field, value in (('data.batch_size', d.batch_size),
                       ('data.meta_batch_size', d.meta_batch_size),
                       ('alg2.ssl.batch_size', a.ssl.batch_size or d.batch_size)):
    if value > num_train:
      raise ConfigError(f'config.{field}={value}: larger than the training split '
                        f'({num_train} examples); must be <= {num_train}')
  if a.gmm.pool and a.gmm.pool > num_train:
    raise ConfigError(f'config.alg2.gmm.pool={a.gmm.pool}: larger than the training '
                      f'split ({num_train} examples); must be <= {num_train} (0 = all)')
  if config.model.num_classes not in (None, num_classes):
    raise ConfigError(f'config.model.num_classes={config.model.num_classes}: the '
                      f'data set has {num_classes} classes')


def check_shards(config, num_devices: int) -> None:
  """Sharded batch sizes must split evenly over the devices of the mesh."""
  for field in ('batch_size', 'meta_batch_size', 'eval_batch_size'):
    if config.data[field] % num_devices:
      raise ConfigError(f'config.data.{field}={config.data[field]}: must be a multiple '
                        f'of the number of devices ({num_devices}) for data parallelism')


def ssl_setup(config, num_classes: int) -> steps_lib.SslSetup:
  s = config.alg2.ssl
  return steps_lib.SslSetup(
      num_classes=num_classes, temperature=float(s.temperature), alpha=float(s.alpha),
      mixup=bool(s.mixup), co_guess=bool(s.co_guess), label_refine=bool(s.label_refine),
      labeled_weight=float(s.labeled_weight), prior_weight=float(s.prior_weight),
      momentum=float(config.optim.momentum))


class CoTrainer:
  """The parts of an Alg. 2 run built once, and one epoch of one network."""

  def __init__(self, run: Run):
    config = self.config = run.config
    self.run, self.seed = run, int(config.seed)
    self.splits = run.load_dataset()
    self.train_source = self.splits.train
    self.num_train = len(self.train_source)
    self.num_classes = int(config.model.num_classes or self.splits.num_classes)
    check_sizes(config, self.num_train, self.splits.num_classes)
    check_shards(config, run.mesh.devices.size)
    self.model = build_model(config, self.num_classes)
    self.sample = jnp.zeros((1,) + tuple(self.splits.image_shape), jnp.float32)
    self.sampler, scope = build_sampler_and_scope(config, self.model, self.sample)
    self.train_it = run.closing(data_lib.make_split_loaders(
        self.splits, config.data, self.seed, test=False)['train'])
    self.steps_per_epoch = int(self.train_it.batches_per_epoch)
    self.num_epochs = int(config.optim.num_epochs)
    lr = schedules.make_lr_schedule(config.optim, self.steps_per_epoch)
    self.setup = build_setup(config, self.model, lr, self.sampler, scope)
    self.init_weights = initial_weights(config, self.model, self.sample)
    a, d = config.alg2, config.data
    self.strategy = build_strategy(config, self.setup, run.mesh,
                                   int(a.warmup_epochs) * self.steps_per_epoch)
    self.ssl_on = bool(a.ssl.enabled)
    self.ssl_setup = ssl_setup(config, self.num_classes)
    self.ssl_batch = int(a.ssl.batch_size) or int(d.batch_size)
    self.meta_batch = int(d.meta_batch_size)
    self.min_clean = int(a.min_set_size) or max(
        self.ssl_batch if self.ssl_on else 1,
        self.meta_batch if self.strategy.uses_meta_set else 1)
    self.min_noisy = int(a.min_set_size) or self.ssl_batch
    self.ssl_augment = d.augment if a.ssl.augment == 'data' else a.ssl.augment
    self.label_tracking = tracking_lib.LabelTracking(run, self.train_source, config,
                                                     gmm=True)
    self.programs = {**steps_lib.jit_steps(self.setup, self.ssl_setup),
                     **self.strategy.programs, **self.label_tracking.programs}
    self.labels = np.asarray(self.train_source.labels)
    self.true_labels = np.asarray(self.train_source.true_labels)

  def init_networks(self) -> dict:
    key = jax.random.PRNGKey(self.seed)
    nets = {}
    for i, name in enumerate(NETS):
      state = core.create_train_state(jax.random.fold_in(key, i), self.model, self.sample,
                                      self.num_classes, self.setup)
      state = self.run.replicate(with_initial_weights(self.config, state, self.init_weights))
      nets[name] = Network(state, self.ssl_setup.optimizer().init(state.params))
    return nets

  # -- the GMM split -----------------------------------------------------------

  def pool(self, epoch: int) -> np.ndarray:
    size = int(self.config.alg2.gmm.pool)
    if not size or size >= self.num_train:
      return np.arange(self.num_train)
    rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, _STREAM_POOL]))
    return np.sort(rng.choice(self.num_train, size=size, replace=False))

  def losses(self, net: Network, pool: np.ndarray) -> np.ndarray:
    """(len(pool),) eval-mode CE of the observed labels, one compiled shape."""
    source = (self.train_source if pool.size == self.num_train
              else self.train_source.subset(pool))
    out = np.zeros((len(source),), np.float32)
    pending = []
    for b, n in padded_batches(source, int(self.config.data.eval_batch_size),
                               self.config.data):
      pending.append((b['index'][:n], n, self.programs['losses'](
          net.state.params, net.state.batch_stats, b['image'], b['label'])))
    for index, n, values in pending:
      out[index] = np.asarray(values)[:n]
    return out

  def split(self, net: Network, pool: np.ndarray, seed: int) -> tuple:
    g = self.config.alg2.gmm
    losses = self.losses(net, pool)
    split = gmm_lib.split_by_loss(losses, threshold=float(g.threshold),
                                  max_iter=int(g.max_iter), tol=float(g.tol),
                                  reg_covar=float(g.reg_covar), seed=seed)
    labels, true = self.labels[pool], self.true_labels[pool]
    report = gmm_lib.precision_recall(split.clean, labels, true)
    known = true >= 0
    is_clean = (labels == true)[known]
    if is_clean.any() and (~is_clean).any():
      report['auc'] = metrics_lib.auc(split.prob[known][is_clean],
                                      split.prob[known][~is_clean])
    report.update(threshold=float(g.threshold), pool=int(pool.size),
                  mean_loss=float(np.mean(losses)),
                  means=None if split.means is None else split.means.tolist(),
                  mix_weights=None if split.weights is None else split.weights.tolist(),
                  warning=split.warning)
    return split, report

  # -- batches ---------------------------------------------------------------

  def _stream(self, indices, batch_size, stream, epoch, net_index, views, extra=None):
    seed = int(np.random.SeedSequence([self.seed, stream, epoch, net_index])
               .generate_state(1)[0])
    idx_stream = sampling.IndexStream(indices, batch_size, seed)
    fetch = sampling.BatchFetcher(self.train_source,
                                  self.config.data.augment if views == 1 else self.ssl_augment,
                                  seed)

    def make(k):
      b = fetch(next(idx_stream), k, views)
      if extra is not None:
        b['prob'] = extra[b['index']]
      return b
    return sampling.Prefetcher(make, depth=int(self.config.data.prefetch))

  def _streams(self, plan: Optional[EpochPlan], epoch: int, i: int) -> tuple:
    """(validation, SSL labelled, SSL unlabelled) prefetchers of a plan (or None)."""
    val_pf = lab_pf = unl_pf = None
    if plan is not None and self.strategy.uses_meta_set:
      val_pf = self._stream(plan.meta, self.meta_batch, _STREAM_VAL, epoch, i, 1)
    if plan is not None and self.ssl_on:
      lab_pf = self._stream(plan.labeled, self.ssl_batch, _STREAM_LAB, epoch, i, 2,
                            extra=plan.prob)
      unl_pf = self._stream(plan.unlabeled, self.ssl_batch, _STREAM_UNL, epoch, i, 2)
    return val_pf, lab_pf, unl_pf

  # -- one epoch of one network ----------------------------------------------

  def train_epoch(self, nets: dict, name: str, epoch: int,
                  plan: Optional[EpochPlan]) -> dict:
    """Trains `nets[name]` for one epoch; returns the epoch's mean metrics."""
    net, other = nets[name], nets[OTHER[name]]
    streams = self._streams(plan, epoch, NETS.index(name))
    val_pf, lab_pf, unl_pf = streams
    first_step = epoch * self.steps_per_epoch
    collected = []
    try:
      for it in range(self.steps_per_epoch):
        if self.run.stop_requested is not None:
          raise StopRequested()
        step = first_step + it
        host = next(self.train_it)
        batch = self.run.device_batch(host, ('image', 'label', 'true_label'))
        val = None
        if self.strategy.needs_validation(step):
          val = self.run.device_batch(validation_batch(next(val_pf)), ('image', 'label'))
        net.state, m = self.strategy.run_iteration(step, net.state, batch, val)
        self.label_tracking.after_iteration(host, m)
        self.run.check_iteration(step + 1, m['finite'])  # at most one iteration late
        if lab_pf is not None:
          m = {**m, **self._ssl_step(net, other, next(lab_pf), next(unl_pf),
                                     epoch + it / self.steps_per_epoch)}
        collected.append(m)
    finally:
      for pf in streams:
        if pf is not None:
          pf.close()
    return self._reduce(collected, first_step + 1)

  def _ssl_step(self, net: Network, other: Network, lab: dict, unl: dict,
                epoch_fraction: float) -> dict:
    a = self.config.alg2
    lam = float(a.ssl.lambda_u) * ssl_lib.linear_rampup(
        epoch_fraction, float(a.warmup_epochs), float(a.ssl.rampup_epochs))
    net.state, net.ssl_opt, metrics = self.programs['ssl'](
        net.state, net.ssl_opt, other.state.params, other.state.batch_stats,
        {k: lab[k] for k in ('image', 'image2', 'label', 'prob')},
        {k: unl[k] for k in ('image', 'image2', 'true_label')}, jnp.float32(lam))
    return metrics

  def _reduce(self, collected: list, first_step: int) -> dict:
    """Host means of an epoch's metrics; `NonFiniteLossError` on NaN/Inf."""
    fetched = jax.device_get(collected)
    self.run.check_finite(fetched, first_step, LOSS_KEYS)
    out: dict[str, Any] = {}
    skip = set(metrics_lib.SCALAR_SKIP) - {'gates'}  # per-example values, flags
    for k in sorted({k for m in fetched for k in m} - skip):
      vals = [m[k] for m in fetched if k in m]
      if k == 'gates':
        out['layer_frequency'] = np.mean(np.asarray(vals), 0).round(4).tolist()
        continue
      arr = np.asarray(vals, np.float64)
      out[k] = float(arr[-1]) if k == 'lr' else float(arr.mean())
    if self.sampler is not None and 'layer_frequency' in out:
      out['layers'] = [layer.name for layer in self.sampler.layers]
    return out

  # -- evaluation ------------------------------------------------------------

  def evaluate(self, nets: dict, source) -> dict:
    s1, s2 = nets['net1'].state, nets['net2'].state
    return means(self.run.evaluate(
        self.programs['eval'], (s1.params, s1.batch_stats, s2.params, s2.batch_stats),
        source, int(self.config.data.eval_batch_size)))

  def eval_row(self, nets: dict) -> dict:
    res = self.evaluate(nets, self.splits.test)
    row = {'test_accuracy': res['correct'], 'test_accuracy_net1': res['correct1'],
           'test_accuracy_net2': res['correct2'], 'test_loss': res['loss']}
    if self.num_classes > 5:
      row['test_top5'] = res['correct5']
    for name, source in (self.splits.extra_test or {}).items():
      extra = self.evaluate(nets, source)
      row[f'{name}_accuracy'], row[f'{name}_top5'] = extra['correct'], extra['correct5']
    return row
