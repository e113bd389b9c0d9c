"""Algorithm 2 (supplement): FaMUS with pseudo-clean validation sets, co-trained.

Per epoch e (after `alg2.warmup_epochs` epochs of plain cross-entropy on all
data for both networks):

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
headline number as in DivideMix. The epoch's pieces are in
`famus_jax.alg2.epoch`; the workdir, device mesh, checkpoints, signals and
checks are the harness's (`famus_jax.training.run`).

Files in the workdir: `config.json`, `alg2_epochs.jsonl` (one row per epoch,
see `famus_jax.alg2.analysis`), `gmm_precision_recall.png`, `checkpoints/`
(both networks, every `alg2.checkpoint_every_epochs`; re-running the command
resumes at the last saved epoch), `noisy_labels.npz` / `noise_report.json`
(the data module's), and at the end `summary.json` and `label_issues.csv`
(the training labels ranked by how likely each is wrong, with both networks'
GMM clean probabilities in the score: `famus_jax.analysis`, hooked in through
`CoTrainer.label_tracking`). SIGTERM / Ctrl-C stops
at the next iteration (`Preempted`, exit 143 from main): the epoch in progress
is dropped and the re-run resumes exactly from the last saved epoch.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from famus_jax.alg2 import analysis
from famus_jax.alg2 import config as alg2_config
from famus_jax.alg2.epoch import (NETS, CoTrainer, EpochPlan, Network,  # pylint: disable=unused-import
                                  StopRequested, plan_cotraining, plan_epoch)
from famus_jax.training.run import Preempted, Run

log = logging.getLogger('famus_jax.alg2')
# Fields that may change when a run resumes (evaluation and checkpoint cadence).
RESUMABLE = ('alg2.eval_every_epochs', 'alg2.checkpoint_every_epochs')


def _snapshot(nets: dict) -> dict:
  return {n: {'state': nets[n].state, 'ssl': nets[n].ssl_opt} for n in NETS}


def _restore(run: Run, ct: CoTrainer, nets: dict) -> int:
  """Replaces the fresh networks by the latest checkpoint's; the start epoch."""
  restored, extra, data_state, epoch = run.ckpt.restore_with_extra(
      _snapshot(nets), ct.label_tracking.checkpoint_extra())
  if restored is None:
    return 0
  for name in NETS:
    nets[name] = Network(restored[name]['state'], restored[name]['ssl'])
  ct.label_tracking.restore(extra, epoch)
  ct.train_it.set_state(data_state['train'])
  log.info('resumed Alg. 2 at epoch %d from %s', epoch, run.ckpt.directory)
  return epoch


def _plans(ct: CoTrainer, nets: dict, epoch: int, row: dict):
  """GMM splits of both networks (reported in `row`); the plans, or None while
  warming up."""
  a = ct.config.alg2
  warm = epoch < int(a.warmup_epochs)
  if warm and not a.gmm.during_warmup:
    return None
  pool = ct.pool(epoch)
  splits = {}
  for i, name in enumerate(NETS):
    splits[name], report = ct.split(nets[name], pool, ct.seed * 1000 + 2 * epoch + i)
    ct.label_tracking.set_gmm(name, pool, splits[name].prob)
    row.setdefault(name, {})['gmm'] = report
    if report['warning']:
      log.warning('epoch %d, %s: GMM split degenerate: %s', epoch, name, report['warning'])
  if warm:
    return None
  return plan_cotraining(splits, pool, ct.num_train, min_clean=ct.min_clean,
                         min_noisy=ct.min_noisy)


def run_epoch(ct: CoTrainer, nets: dict, epoch: int) -> dict:
  """One epoch of both networks; its row for `alg2_epochs.jsonl` (no eval)."""
  warm = epoch < int(ct.config.alg2.warmup_epochs)
  row: dict[str, Any] = {'epoch': epoch, 'phase': 'warmup' if warm else 'cotrain'}
  plans = _plans(ct, nets, epoch, row)
  for name in NETS:
    plan = None if plans is None else plans[name]
    entry = row.setdefault(name, {})
    entry['train'] = ct.train_epoch(nets, name, epoch, plan)
    if plan is not None:
      entry['trained_on'] = {
          'meta_set_from': plan.source, 'meta_set_size': int(plan.meta.size),
          'unlabeled_size': int(plan.unlabeled.size), 'fallback': plan.fallback}
  row['iterations'] = int(nets['net1'].state.step)
  return row


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs Algorithm 2 as `config` says, in `workdir`; returns the summary.

  Raises:
    ConfigError: a bad config value (one line naming the field).
    famus_jax.data.DatasetMissingError: the data set is not where the config says.
    NonFiniteLossError: the loss or the parameters became NaN/Inf.
    Preempted: SIGTERM/SIGINT; the last finished epoch's checkpoint is kept.
  """
  alg2_config.validate(config)
  a = config.alg2
  with Run(config, workdir, resumable=RESUMABLE) as run:
    ct = CoTrainer(run)
    run.write_config()
    nets = ct.init_networks()
    start = saved = _restore(run, ct, nets)
    epoch_log = run.writer(lambda: analysis.EpochLog(run.workdir, start or None))
    pbar = run.progress(ct.num_epochs, start, 'alg2')
    title = (f'{config.data.name}: Alg. 2 ('
             + ct.strategy.describe(config.meta).replace('+', ' + ')
             + (', SSL' if ct.ssl_on else '') + ')')
    first_epoch_s = last_eval = None
    due = lambda every, done: every and done % every == 0
    try:
      for epoch in range(start, ct.num_epochs):
        t0 = time.perf_counter()
        row = run_epoch(ct, nets, epoch)
        first_epoch_s = first_epoch_s or (time.perf_counter() - t0)
        done, last = epoch + 1, epoch + 1 == ct.num_epochs
        if last or due(int(a.eval_every_epochs), done):
          last_eval = ct.eval_row(nets)
          row.update(last_eval)
        row['epoch_time_s'] = time.perf_counter() - t0
        row['compiled'] = run.check_compiled_once(ct.programs)
        _write_row(run, epoch_log, row, title)
        if last or due(int(a.checkpoint_every_epochs), done) or run.stop_requested:
          run.ckpt.save(done, _snapshot(nets), {'train': ct.train_it.get_state(),
                                                'epoch': done},
                        extra=ct.label_tracking.checkpoint_extra())
          saved = done
        if pbar is not None:
          _progress(pbar, row)
        if run.stop_requested is not None and not last:
          raise StopRequested()
    except StopRequested:  # the epoch in progress is dropped; re-run redoes it
      raise Preempted(saved * ct.steps_per_epoch, run.stop_requested) from None
  return _summarize(run, ct, nets, start, last_eval, first_epoch_s)



def _write_row(run: Run, epoch_log, row: dict, title: str) -> None:
  """The epoch's row and the precision/recall plot (process 0)."""
  if epoch_log is not None:
    epoch_log.write(row)
    analysis.plot_precision_recall(os.path.join(run.workdir, analysis.PLOT_FILE),
                                   epoch_log.rows, title)


def _progress(pbar, row: dict) -> None:
  post = {k: f'{v:.3f}' for k, v in (
      ('acc', row.get('test_accuracy')),
      ('prec', (row.get('net1') or {}).get('gmm', {}).get('precision')))
          if isinstance(v, float)}
  pbar.set_postfix(post, refresh=False)
  pbar.update(1)


def _summarize(run: Run, ct: CoTrainer, nets: dict, start: int, last_eval, first_epoch_s
               ) -> dict:
  config = ct.config
  rows = analysis.EpochLog.read(run.workdir)
  if last_eval is None:  # a re-run of a finished run
    last_eval = next((r for r in reversed(rows) if 'test_accuracy' in r), {})
  accs = [r['test_accuracy'] for r in rows if 'test_accuracy' in r]
  summary = {
      'status': 'completed', 'algorithm': 'alg2', 'method': config.meta.method,
      'sampler': config.meta.sampler if ct.strategy.uses_meta_set else None,
      'ssl': ct.ssl_on, 'epochs': ct.num_epochs,
      'warmup_epochs': int(config.alg2.warmup_epochs),
      'steps_per_epoch': ct.steps_per_epoch, 'step': int(nets['net1'].state.step),
      'num_steps': ct.num_epochs * ct.steps_per_epoch,
      'final': last_eval, 'final_test_accuracy': last_eval.get('test_accuracy'),
      'best_test_accuracy': max(accs) if accs else last_eval.get('test_accuracy'),
      'gmm': [{'epoch': h['epoch'],
               **{n: {k: h[n].get(k) for k in ('precision', 'recall', 'num_selected',
                                              'clean_fraction', 'auc')}
                  for n in NETS if n in h}} for h in analysis.gmm_history(rows)],
      'resumed_from': start or None, 'first_epoch_s': first_epoch_s,
      'compiled': run.check_compiled_once(ct.programs),
      'label_issues': ct.label_tracking.report(run.workdir),
      **run.common_summary(ct.splits.info),
  }
  run.write_summary(summary)
  return summary
