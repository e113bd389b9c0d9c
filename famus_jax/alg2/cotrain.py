"""Algorithm 2 (supplement): FaMUS with pseudo-clean validation sets, co-trained.

Per epoch e (after `alg2.warmup_epochs` epochs of plain cross-entropy on all
data for both networks):

1. each network k in {net1, net2} scores every training example (eval mode,
   observed labels), and its GMM splits the training set into a pseudo-clean
   set D_k^clean (clean probability > threshold) and a pseudo-noisy D_k^noisy
   (`famus_jax.alg2.gmm`);
2. net1 trains one epoch with Alg. 1 (the core's `meta_train_step`: MW-Net +
   FaMUS, or the configured meta method / sampler) on batches of the whole
   training set, its validation batches drawn from D_2^clean with the labels as
   given; with the SSL term on, every iteration is followed by the
   semi-supervised step on a batch of D_2^clean (labels refined with net2's
   clean probability) and one of D_2^noisy (labels co-guessed by net1 and net2)
   (`famus_jax.alg2.steps`);
3. net2 likewise with D_1^clean / D_1^noisy (co-guessing with the updated net1).

The pseudo-clean sets change every epoch; the batches drawn from them have
fixed shapes (`famus_jax.alg2.sampling`), so nothing recompiles. Test accuracy
is reported for each network and for their ensemble (mean softmax), the
headline number as in DivideMix.

Files in the workdir: `config.json`, `alg2_epochs.jsonl` (one row per epoch,
see `famus_jax.alg2.analysis`), `gmm_precision_recall.png`, `checkpoints/`
(both networks, every `alg2.checkpoint_every_epochs`; re-running the command
resumes at the last saved epoch), `noisy_labels.npz` / `noise_report.json`
(the data module's), and at the end `summary.json`. SIGTERM / Ctrl-C stops
at the next iteration (`famus_jax.train.Preempted`, exit 143 from main): the
epoch in progress is dropped and the re-run resumes exactly from the last
saved epoch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from famus_jax import core
from famus_jax import data as data_lib
from famus_jax import train as train_lib
from famus_jax.alg2 import analysis
from famus_jax.alg2 import config as alg2_config
from famus_jax.alg2 import gmm as gmm_lib
from famus_jax.alg2 import sampling
from famus_jax.alg2 import ssl as ssl_lib
from famus_jax.alg2 import steps as steps_lib
from famus_jax.training import checkpoint as checkpoint_lib
from famus_jax.training import config as config_lib
from famus_jax.training import metrics as metrics_lib
from famus_jax.training import schedules
from famus_jax.training.config import ConfigError
from famus_jax.training import signals as stop_signals

log = logging.getLogger('famus_jax.alg2')
NETS = ('net1', 'net2')
OTHER = {'net1': 'net2', 'net2': 'net1'}
# Seed streams (with config.seed) of the per-epoch draws.
_STREAM_VAL, _STREAM_LAB, _STREAM_UNL, _STREAM_POOL = 0xA1, 0xA2, 0xA3, 0xA4


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


# ---------------------------------------------------------------------------
# The run.


class _StopRequested(Exception):
  """SIGTERM/SIGINT arrived; the partial epoch is dropped."""




class _Run:
  """Everything one `train_and_evaluate` call holds."""

  def __init__(self, config, workdir: str):
    self.config, self.workdir = config, workdir
    self.seed = int(config.seed)
    a = config.alg2
    self.splits = data_lib.load_dataset(config.data, self.seed, workdir)
    self.train_source = self.splits.train
    self.num_train = len(self.train_source)
    self._check_sizes()
    self.num_classes = int(config.model.num_classes or self.splits.num_classes)
    self.model = train_lib.build_model(config, self.num_classes)
    self.sample = jnp.zeros((1,) + tuple(self.splits.image_shape), jnp.float32)
    sampler, scope = train_lib.build_sampler_and_scope(config, self.model, self.sample)
    self.sampler = sampler
    d = config.data
    self.train_it = data_lib.make_loader(
        self.splits.train, batch_size=int(d.batch_size), seed=self.seed,
        augment=d.augment, sampler=self.splits.train_sampler,
        num_workers=int(d.num_workers), prefetch=int(d.prefetch))
    self.steps_per_epoch = int(self.train_it.batches_per_epoch)
    self.num_epochs = int(config.optim.num_epochs)
    lr = schedules.make_lr_schedule(config.optim, self.steps_per_epoch)
    self.setup = train_lib.build_setup(config, self.model, lr, sampler, scope)
    self.method = config.meta.method
    self.ssl_on = bool(a.ssl.enabled)
    self.ssl_setup = steps_lib.SslSetup(
        num_classes=self.num_classes, temperature=float(a.ssl.temperature),
        alpha=float(a.ssl.alpha), mixup=bool(a.ssl.mixup), co_guess=bool(a.ssl.co_guess),
        label_refine=bool(a.ssl.label_refine), labeled_weight=float(a.ssl.labeled_weight),
        prior_weight=float(a.ssl.prior_weight), momentum=float(config.optim.momentum))
    self.ssl_batch = int(a.ssl.batch_size) or int(d.batch_size)
    self.meta_batch = int(d.meta_batch_size)
    self.min_clean = int(a.min_set_size) or max(self.ssl_batch if self.ssl_on else 1,
                                                self.meta_batch if self.method != 'ce' else 1)
    self.min_noisy = int(a.min_set_size) or self.ssl_batch
    self.ssl_augment = d.augment if a.ssl.augment == 'data' else a.ssl.augment
    self.jit = steps_lib.jit_steps(self.setup, self.ssl_setup)
    if self.method == 'ce':
      self.jit['plain'] = core.jit_plain_train_step(self.setup)
    else:
      self.jit['meta'] = core.jit_meta_train_step(self.setup)
      self.jit['plain'] = core.jit_plain_train_step(self.setup)  # warm-up
    self.ckpt = None
    self.signals = None  # a StopFlag while the loop runs
    self.labels = np.asarray(self.train_source.labels)
    self.true_labels = np.asarray(self.train_source.true_labels)

  def _check_sizes(self):
    d, a = self.config.data, self.config.alg2
    n = self.num_train
    for field, value in (('data.batch_size', d.batch_size),
                         ('data.meta_batch_size', d.meta_batch_size),
                         ('alg2.ssl.batch_size', a.ssl.batch_size or d.batch_size)):
      if value > n:
        raise ConfigError(f'config.{field}={value}: larger than the training split '
                          f'({n} examples); must be <= {n}')
    if a.gmm.pool and a.gmm.pool > n:
      raise ConfigError(f'config.alg2.gmm.pool={a.gmm.pool}: larger than the training '
                        f'split ({n} examples); must be <= {n} (0 = all)')
    if self.config.model.num_classes not in (None, self.splits.num_classes):
      raise ConfigError(f'config.model.num_classes={self.config.model.num_classes}: the '
                        f'data set has {self.splits.num_classes} classes')

  # -- networks -------------------------------------------------------------

  def init_networks(self) -> dict:
    key = jax.random.PRNGKey(self.seed)
    nets = {}
    for i, name in enumerate(NETS):
      state = core.create_train_state(jax.random.fold_in(key, i), self.model, self.sample,
                                      self.num_classes, self.setup)
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
    d = self.config.data
    bs = int(d.eval_batch_size)
    source = (self.train_source if pool.size == self.num_train
              else self.train_source.subset(pool))
    loader = data_lib.make_loader(source, batch_size=bs, seed=0, shuffle=False,
                                  num_epochs=1, drop_remainder=False,
                                  num_workers=int(d.num_workers), prefetch=int(d.prefetch))
    out = np.zeros((len(source),), np.float32)
    pending = []
    try:
      for b in loader:
        n = b['label'].shape[0]
        images, labels = b['image'], b['label']
        if n < bs:
          images = np.concatenate([images, np.zeros((bs - n,) + images.shape[1:],
                                                    images.dtype)])
          labels = np.concatenate([labels, np.zeros((bs - n,), labels.dtype)])
        pending.append((b['index'], n, self.jit['losses'](
            net.state.params, net.state.batch_stats, images, labels)))
    finally:
      loader.close()
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

  # -- one epoch of one network ----------------------------------------------

  def train_epoch(self, nets: dict, name: str, epoch: int, plan: Optional[EpochPlan],
                  global_step: int) -> dict:
    """Trains `nets[name]` for one epoch; returns the epoch's mean metrics."""
    net, other = nets[name], nets[OTHER[name]]
    a = self.config.alg2
    i = NETS.index(name)
    val_pf = lab_pf = unl_pf = None
    if plan is not None and self.method != 'ce':
      val_pf = self._stream(plan.meta, self.meta_batch, _STREAM_VAL, epoch, i, 1)
    if plan is not None and self.ssl_on:
      lab_pf = self._stream(plan.labeled, self.ssl_batch, _STREAM_LAB, epoch, i, 2,
                            extra=plan.prob)
      unl_pf = self._stream(plan.unlabeled, self.ssl_batch, _STREAM_UNL, epoch, i, 2)
    collected = []
    try:
      for it in range(self.steps_per_epoch):
        if self.signals is not None and self.signals.signum is not None:
          raise _StopRequested()
        host = next(self.train_it)
        batch = {k: host[k] for k in ('image', 'label', 'true_label')}
        if plan is None or self.method == 'ce':
          net.state, m = self.jit['plain'](net.state, {'image': batch['image'],
                                                       'label': batch['label']})
        else:
          val = next(val_pf)
          net.state, m = run_meta_step(self.jit['meta'], net.state, batch, val, name)
        if lab_pf is not None:
          lab, unl = next(lab_pf), next(unl_pf)
          frac = epoch + it / self.steps_per_epoch
          lam = float(a.ssl.lambda_u) * ssl_lib.linear_rampup(
              frac, float(a.warmup_epochs), float(a.ssl.rampup_epochs))
          net.state, net.ssl_opt, sm = self.jit['ssl'](
              net.state, net.ssl_opt, other.state.params, other.state.batch_stats,
              {k: lab[k] for k in ('image', 'image2', 'label', 'prob')},
              {k: unl[k] for k in ('image', 'image2', 'true_label')},
              jnp.float32(lam))
          m = {**m, **sm}
        collected.append(m)
    finally:
      for pf in (val_pf, lab_pf, unl_pf):
        if pf is not None:
          pf.close()
    return self._reduce(collected, global_step)

  def _reduce(self, collected: list, global_step: int) -> dict:
    fetched = jax.device_get(collected)
    out: dict[str, Any] = {}
    for k in sorted({k for m in fetched for k in m}):
      vals = [m[k] for m in fetched if k in m]
      if k == 'weights':
        continue
      if k == 'gates':
        out['layer_frequency'] = np.mean(np.asarray(vals), 0).round(4).tolist()
        continue
      arr = np.asarray(vals, np.float64)
      if not np.all(np.isfinite(arr)) and k in ('loss', 'ssl_loss', 'val_loss'):
        bad = global_step + int(np.argmin(np.isfinite(arr))) + 1
        raise train_lib.NonFiniteLossError(bad, self.ckpt.latest_step(),
                                           self.ckpt.directory)
      out[k] = float(arr[-1]) if k == 'lr' else float(arr.mean())
    if self.sampler is not None and 'layer_frequency' in out:
      out['layers'] = [layer.name for layer in self.sampler.layers]
    return out

  # -- evaluation ------------------------------------------------------------

  def evaluate(self, nets: dict, source) -> dict:
    d = self.config.data
    bs = int(d.eval_batch_size)
    loader = data_lib.make_loader(source, batch_size=bs, seed=0, shuffle=False,
                                  num_epochs=1, drop_remainder=False,
                                  num_workers=int(d.num_workers), prefetch=int(d.prefetch))
    totals = None
    s1, s2 = nets['net1'].state, nets['net2'].state
    try:
      for b in loader:
        n = b['label'].shape[0]
        host = {'image': b['image'], 'label': b['label'], 'mask': np.ones((n,), np.bool_)}
        if n < bs:
          host = {k: np.concatenate([v, np.zeros((bs - n,) + v.shape[1:], v.dtype)])
                  for k, v in host.items()}
        out = self.jit['eval'](s1.params, s1.batch_stats, s2.params, s2.batch_stats, host)
        totals = out if totals is None else jax.tree_util.tree_map(jnp.add, totals, out)
    finally:
      loader.close()
    t = {k: float(v) for k, v in jax.device_get(totals).items()}
    c = max(t['count'], 1.0)
    return {'accuracy': t['correct'] / c, 'net1': t['correct1'] / c,
            'net2': t['correct2'] / c, 'top5': t['correct5'] / c, 'loss': t['loss'] / c}

  def eval_row(self, nets: dict) -> dict:
    res = self.evaluate(nets, self.splits.test)
    row = {'test_accuracy': res['accuracy'], 'test_accuracy_net1': res['net1'],
           'test_accuracy_net2': res['net2'], 'test_loss': res['loss']}
    if self.num_classes > 5:
      row['test_top5'] = res['top5']
    for name, source in (self.splits.extra_test or {}).items():
      extra = self.evaluate(nets, source)
      row[f'{name}_accuracy'] = extra['accuracy']
      row[f'{name}_top5'] = extra['top5']
    return row

  def compiled(self) -> dict:
    out = {}
    for name, fn in self.jit.items():
      size = getattr(fn, '_cache_size', None)
      if size is not None:
        out[name] = int(size())
    return out

  def check_compiled_once(self) -> dict:
    counts = self.compiled()
    bad = {k: v for k, v in counts.items() if v > 1}
    if bad:
      raise train_lib.RecompilationError(
          f'Alg. 2 functions compiled more than once: {bad} (a batch shape or dtype '
          'changed between iterations)')
    return counts


def run_meta_step(meta_fn, state, batch: dict, val: dict, name: str):
  """The core meta iteration of network `name` with a validation batch drawn
  from the other network's pseudo-clean set (labels as given)."""
  del name  # (kept for tests that record which network drew which set)
  return meta_fn(state, batch, {'image': val['image'], 'label': val['label']})


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs Algorithm 2 as `config` says, in `workdir`; returns the summary.

  Raises:
    ConfigError: a bad config value (one line naming the field).
    famus_jax.data.DatasetMissingError: the data set is not where the config says.
    famus_jax.train.NonFiniteLossError: the loss became NaN/Inf.
  """
  start_time = time.perf_counter()
  alg2_config.validate(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  config_dict = config_lib.config_to_dict(config)
  config_path = os.path.join(workdir, 'config.json')
  if os.path.exists(config_path):
    with open(config_path) as f:
      saved = json.load(f)
    conflicts = config_lib.resume_conflicts(saved, json.loads(json.dumps(
        metrics_lib._jsonable(config_dict))))  # pylint: disable=protected-access
    conflicts = [k for k in conflicts if not k.startswith(
        ('alg2.eval_every_epochs', 'alg2.checkpoint_every_epochs'))]
    if conflicts:
      raise ConfigError(
          f'--workdir={workdir} holds a run with a different config (config.'
          f'{conflicts[0]}{" and others" if len(conflicts) > 1 else ""}); use a new '
          'workdir, or the same config to resume')

  run = _Run(config, workdir)
  analysis.write_json(config_path, config_dict)
  nets = run.init_networks()
  a = config.alg2
  run.ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                         keep=int(config.train.keep_checkpoints))
  like = {name: {'state': nets[name].state, 'ssl': nets[name].ssl_opt} for name in NETS}
  restored, data_state, start_epoch = run.ckpt.restore(like)
  if restored is not None:
    for name in NETS:
      nets[name] = Network(restored[name]['state'], restored[name]['ssl'])
    run.train_it.set_state(data_state['train'])
    log.info('resumed Alg. 2 at epoch %d from %s', start_epoch, run.ckpt.directory)
  else:
    start_epoch = 0
  epoch_log = analysis.EpochLog(workdir, start_epoch if restored is not None else None)
  title = (f'{config.data.name}: Alg. 2 ({config.meta.method}'
           + (f' + {config.meta.sampler}' if config.meta.method != 'ce' else '')
           + (', SSL' if run.ssl_on else '') + ')')
  eval_every = int(a.eval_every_epochs)
  ckpt_every = int(a.checkpoint_every_epochs)
  pbar = None
  if config.train.progress:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    pbar = tqdm(total=run.num_epochs, initial=start_epoch, desc='alg2', dynamic_ncols=True)
  first_step_s = None
  last_eval = None
  saved = {'epoch': start_epoch}

  def save(epochs_done: int):
    run.ckpt.save(epochs_done, {n: {'state': nets[n].state, 'ssl': nets[n].ssl_opt}
                                for n in NETS},
                  {'train': run.train_it.get_state(), 'epoch': epochs_done})
    saved['epoch'] = epochs_done

  signals = run.signals = stop_signals.StopFlag().__enter__()
  try:
    for epoch in range(start_epoch, run.num_epochs):
      t0 = time.perf_counter()
      warm = epoch < int(a.warmup_epochs)
      row: dict[str, Any] = {'epoch': epoch, 'phase': 'warmup' if warm else 'cotrain'}
      plans = None
      if not warm or a.gmm.during_warmup:
        pool = run.pool(epoch)
        splits = {}
        for i, name in enumerate(NETS):
          splits[name], report = run.split(nets[name], pool, run.seed * 1000 + 2 * epoch + i)
          row.setdefault(name, {})['gmm'] = report
          if report['warning']:
            log.warning('epoch %d, %s: GMM split degenerate: %s', epoch, name,
                        report['warning'])
        if not warm:
          plans = plan_cotraining(splits, pool, run.num_train,
                                  min_clean=run.min_clean, min_noisy=run.min_noisy)
      for name in NETS:
        plan = None if plans is None else plans[name]
        step0 = int(nets[name].state.step)
        tt = time.perf_counter()
        metrics = run.train_epoch(nets, name, epoch, plan, step0)
        if first_step_s is None:
          first_step_s = time.perf_counter() - tt
        entry = row.setdefault(name, {})
        entry['train'] = metrics
        if plan is not None:
          entry['trained_on'] = {
              'meta_set_from': plan.source, 'meta_set_size': int(plan.meta.size),
              'unlabeled_size': int(plan.unlabeled.size), 'fallback': plan.fallback}
      row['iterations'] = int(nets['net1'].state.step)
      last = epoch + 1 == run.num_epochs
      if last or (eval_every and (epoch + 1) % eval_every == 0):
        last_eval = run.eval_row(nets)
        row.update(last_eval)
      row['epoch_time_s'] = time.perf_counter() - t0
      row['compiled'] = run.check_compiled_once()
      epoch_log.write(row)
      analysis.plot_precision_recall(os.path.join(workdir, analysis.PLOT_FILE),
                                     epoch_log.rows, title)
      if (last or (ckpt_every and (epoch + 1) % ckpt_every == 0)
          or signals.signum is not None):
        save(epoch + 1)
      if pbar is not None:
        post = {k: f'{v:.3f}' for k, v in (
            ('acc', row.get('test_accuracy')),
            ('prec', (row.get('net1') or {}).get('gmm', {}).get('precision')))
                if isinstance(v, float)}
        pbar.set_postfix(post, refresh=False)
        pbar.update(1)
      if signals.signum is not None and not last:
        raise _StopRequested()
  except _StopRequested:
    # The epoch in progress (if any) is dropped: the re-run redoes it from the
    # last saved epoch, exactly.
    raise train_lib.Preempted(saved['epoch'] * run.steps_per_epoch,
                              signals.signum) from None
  except train_lib.NonFiniteLossError as e:
    train_lib.summarize_failure(workdir, 'non_finite', e.step, str(e))
    raise
  finally:
    signals.__exit__(None, None, None)
    run.signals = None
    if pbar is not None:
      pbar.close()
    run.train_it.close()
    run.ckpt.close()

  rows = epoch_log.rows
  if last_eval is None:  # a re-run of a finished run
    last_eval = next((r for r in reversed(rows) if 'test_accuracy' in r), {})
  accs = [r['test_accuracy'] for r in rows if 'test_accuracy' in r]
  hist = analysis.gmm_history(rows)
  summary = {
      'status': 'completed', 'algorithm': 'alg2',
      'method': config.meta.method,
      'sampler': config.meta.sampler if config.meta.method != 'ce' else None,
      'ssl': run.ssl_on, 'epochs': run.num_epochs,
      'warmup_epochs': int(a.warmup_epochs),
      'steps_per_epoch': run.steps_per_epoch,
      'step': int(nets['net1'].state.step), 'num_steps': run.num_epochs * run.steps_per_epoch,
      'final': last_eval, 'final_test_accuracy': last_eval.get('test_accuracy'),
      'best_test_accuracy': max(accs) if accs else last_eval.get('test_accuracy'),
      'gmm': [{'epoch': h['epoch'],
               **{n: {k: h[n].get(k) for k in ('precision', 'recall', 'num_selected',
                                              'clean_fraction', 'auc')}
                  for n in NETS if n in h}} for h in hist],
      'resumed_from': start_epoch if restored is not None else None,
      'wall_time_s': time.perf_counter() - start_time,
      'first_epoch_s': first_step_s,
      'compiled': run.check_compiled_once(),
      'data': {k: run.splits.info.get(k) for k in (
          'name', 'num_train', 'num_meta', 'num_test', 'realised_noise_rate', 'noise_type')
               if k in run.splits.info},
  }
  analysis.write_json(os.path.join(workdir, 'summary.json'), summary)
  return summary
