"""Algorithm 2 (supplement) as the trainer's algorithm `config.algorithm='alg2'`:
FaMUS with pseudo-clean validation sets, two networks co-trained.

Per epoch e (one block of the trainer; after `alg2.warmup_epochs` epochs of
plain cross-entropy on all data for both networks):

1. each network k in {net1, net2} scores every training example (eval mode,
   observed labels), and its GMM splits the training set into a pseudo-clean
   set D_k^clean (clean probability > threshold) and a pseudo-noisy D_k^noisy
   (`famus_jax.alg2.gmm`);
2. net1 trains one epoch with Alg. 1 (the method strategy's iteration: MW-Net +
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

Files in the workdir besides the trainer's: `alg2_epochs.jsonl` (one row per
epoch, see `famus_jax.alg2.analysis`) and `gmm_precision_recall.png`;
checkpoints every `alg2.checkpoint_every_epochs` epochs hold both networks and
their SSL momentum. SIGTERM / Ctrl-C stops at the next iteration: the epoch in
progress is dropped and the re-run resumes exactly from the last saved epoch.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from famus_jax.alg2 import analysis
from famus_jax.alg2 import config as alg2_config
from famus_jax.alg2 import epoch as epoch_lib
from famus_jax.alg2 import ssl as ssl_lib
from famus_jax.alg2 import steps as steps_lib
from famus_jax.alg2.epoch import NETS
from famus_jax.training.algorithm import Algorithm, Cadence, SizeLimit
from famus_jax.training.checks import check_compiled_once

log = logging.getLogger('famus_jax.alg2')
# Per-network training-row fields left out of the epoch rows (timing is per epoch).
_TIMING = ('step', 'step_time_s', 'steps_per_s', 'compiled', 'net')


class CoTraining(Algorithm):
  """Algorithm 2: two networks, each trained against the other's GMM split."""

  members = NETS
  # Fields that may change when a run resumes (evaluation and checkpoint cadence).
  resumable = ('alg2.eval_every_epochs', 'alg2.checkpoint_every_epochs')
  clean_probabilities = True

  validate = staticmethod(alg2_config.validate)

  def size_limits(self, splits) -> list[SizeLimit]:
    d, a, n = self.config.data, self.config.alg2, len(splits.train)
    train = 'the training split'
    return [SizeLimit('data.batch_size', d.batch_size, n, train),
            SizeLimit('data.meta_batch_size', d.meta_batch_size, n, train),
            SizeLimit('alg2.ssl.batch_size', a.ssl.batch_size or d.batch_size, n, train),
            SizeLimit('alg2.gmm.pool', a.gmm.pool, n, train, ' (0 = all)')]

  def warmup_steps(self, steps_per_epoch: int) -> int:
    return int(self.config.alg2.warmup_epochs) * steps_per_epoch

  def cadence(self, trainer) -> Cadence:
    a, epoch = self.config.alg2, trainer.steps_per_epoch
    return Cadence(block=epoch, log=epoch, eval=int(a.eval_every_epochs) * epoch,
                   checkpoint=int(a.checkpoint_every_epochs) * epoch)

  # -- set-up ------------------------------------------------------------------------

  def attach(self, trainer) -> list:
    a, d = self.config.alg2, self.config.data
    self.source = trainer.splits.train
    self.labels = np.asarray(self.source.labels)
    self.true_labels = np.asarray(self.source.true_labels)
    self.ssl = epoch_lib.ssl_setup(self.config, trainer.num_classes)
    ssl_batch = int(a.ssl.batch_size) or int(d.batch_size)
    self.ssl_batch = ssl_batch if a.ssl.enabled else None
    self.meta_batch = int(d.meta_batch_size) if trainer.parts.uses_meta_set else None
    self.min_clean = int(a.min_set_size) or max(self.ssl_batch or 1, self.meta_batch or 1)
    self.min_noisy = int(a.min_set_size) or ssl_batch
    self.ssl_augment = d.augment if a.ssl.augment == 'data' else a.ssl.augment
    self._programs = steps_lib.jit_steps(trainer.parts.setup, self.ssl)
    self.plans = self.streams = self.epoch_log = None
    return []

  @property
  def programs(self) -> dict:
    return self._programs

  def init_states(self, trainer) -> dict:
    key = jax.random.PRNGKey(int(self.config.seed))
    states = {name: trainer.run.replicate(trainer.parts.init_state(jax.random.fold_in(key, i)))
              for i, name in enumerate(NETS)}
    self.ssl_opt = {name: self.ssl.optimizer().init(states[name].params) for name in NETS}
    return states

  def extra_state(self) -> dict:
    return {'ssl': self.ssl_opt}

  def load_extra_state(self, tree: dict) -> None:
    self.ssl_opt = dict(tree['ssl'])

  def on_start(self, trainer) -> None:
    start_epoch = trainer.start // trainer.steps_per_epoch
    self.epoch_log = trainer.run.out.writer(
        lambda: analysis.EpochLog(trainer.run.workdir, start_epoch or None))

  # -- an epoch ------------------------------------------------------------------------

  def begin_block(self, trainer, step: int) -> None:
    """The epoch's GMM splits (reported in its row) and plans (None while
    warming up)."""
    epoch = step // trainer.steps_per_epoch
    warm = epoch < int(self.config.alg2.warmup_epochs)
    self.t0 = time.perf_counter()
    self.row: dict[str, Any] = {'epoch': epoch, 'phase': 'warmup' if warm else 'cotrain'}
    self.plans = None
    if warm and not self.config.alg2.gmm.during_warmup:
      return
    pool = epoch_lib.pool(int(self.config.seed), epoch, int(self.config.alg2.gmm.pool),
                          len(self.source))
    splits = {name: self._split(trainer, name, pool, epoch, i)
              for i, name in enumerate(NETS)}
    if not warm:
      self.plans = epoch_lib.plan_cotraining(splits, pool, len(self.source),
                                             min_clean=self.min_clean,
                                             min_noisy=self.min_noisy)

  def _split(self, trainer, name: str, pool: np.ndarray, epoch: int, i: int):
    source = self.source if pool.size == len(self.source) else self.source.subset(pool)
    losses = epoch_lib.example_losses(self._programs['losses'], trainer.states[name],
                                      source, int(self.config.data.eval_batch_size),
                                      self.config.data)
    split, report = epoch_lib.split_report(
        losses, self.labels[pool], self.true_labels[pool], self.config.alg2.gmm,
        int(self.config.seed) * 1000 + 2 * epoch + i)
    for hook in trainer.hooks:
      hook.on_clean_probability(name, pool, split.prob)
    self.row.setdefault(name, {})['gmm'] = report
    if report['warning']:
      log.warning('epoch %d, %s: GMM split degenerate: %s', epoch, name, report['warning'])
    return split

  @contextlib.contextmanager
  def sources(self, trainer, member: str, step: int):
    """`member`'s epoch: validation batches from its plan (the other network's
    pseudo-clean set), and the SSL batches for `after_iteration`."""
    plan = None if self.plans is None else self.plans[member]
    if plan is not None:
      self.row.setdefault(member, {})['trained_on'] = {
          'meta_set_from': plan.source, 'meta_set_size': int(plan.meta.size),
          'unlabeled_size': int(plan.unlabeled.size), 'fallback': plan.fallback}
    self.streams = epoch_lib.EpochStreams(
        self.source, self.config.data, seed=int(self.config.seed),
        epoch=step // trainer.steps_per_epoch, net_index=NETS.index(member),
        ssl_augment=self.ssl_augment).open(plan, meta_batch=self.meta_batch,
                                           ssl_batch=self.ssl_batch)
    try:
      yield self.streams.validation_batches()
    finally:
      self.streams.close()
      self.streams = None

  def after_iteration(self, trainer, member: str, step: int, host: dict,
                      metrics: dict) -> Optional[dict]:
    """The semi-supervised step after the supervised one (co-training epochs)."""
    if self.streams is None or self.streams.labeled is None:
      return None
    lab, unl = next(self.streams.labeled), next(self.streams.unlabeled)
    a, steps = self.config.alg2, trainer.steps_per_epoch
    epoch_fraction = step // steps + (step % steps) / steps
    lam = float(a.ssl.lambda_u) * ssl_lib.linear_rampup(
        epoch_fraction, float(a.warmup_epochs), float(a.ssl.rampup_epochs))
    other = trainer.states[epoch_lib.OTHER[member]]
    trainer.states[member], self.ssl_opt[member], out = self._programs['ssl'](
        trainer.states[member], self.ssl_opt[member], other.params, other.batch_stats,
        {k: lab[k] for k in ('image', 'image2', 'label', 'prob')},
        {k: unl[k] for k in ('image', 'image2', 'true_label')}, jnp.float32(lam))
    return out

  def end_block(self, trainer, done: int, rows: Optional[dict],
                evaluation: Optional[dict]) -> None:
    """The epoch's row in `alg2_epochs.jsonl` and the precision/recall plot."""
    row = self.row
    for name in NETS:
      row.setdefault(name, {})['train'] = {k: v for k, v in (rows or {})[name].items()
                                           if k not in _TIMING}
    row['iterations'] = int(trainer.states[NETS[0]].step)
    row.update(evaluation or {})
    row['epoch_time_s'] = time.perf_counter() - self.t0
    row['compiled'] = check_compiled_once(trainer.programs)
    if self.epoch_log is not None:
      self.epoch_log.write(row)
      analysis.plot_precision_recall(trainer.run.dir.file(analysis.PLOT_FILE),
                                     self.epoch_log.rows, self.describe(trainer))

  # -- evaluation, summary -------------------------------------------------------------

  def eval_args(self, trainer) -> tuple:
    s1, s2 = (trainer.states[n] for n in NETS)
    return s1.params, s1.batch_stats, s2.params, s2.batch_stats

  def summary(self, trainer) -> dict:
    rows = analysis.EpochLog.read(trainer.run.workdir)
    a = self.config.alg2
    return {
        'ssl': bool(a.ssl.enabled), 'epochs': int(self.config.optim.num_epochs),
        'warmup_epochs': int(a.warmup_epochs),
        'gmm': [{'epoch': h['epoch'],
                 **{n: {k: h[n].get(k) for k in ('precision', 'recall', 'num_selected',
                                                'clean_fraction', 'auc')}
                    for n in NETS if n in h}} for h in analysis.gmm_history(rows)]}

  def describe(self, trainer) -> str:
    return (f'{self.config.data.name}: Alg. 2 ('
            + trainer.strategy.describe(self.config.meta).replace('+', ' + ')
            + (', SSL' if self.config.alg2.ssl.enabled else '') + ')')
