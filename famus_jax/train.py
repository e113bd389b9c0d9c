"""The training loop: `train_and_evaluate(config, workdir)`.

One iteration is one jit-compiled call chosen by the method's strategy
(`famus_jax.training.strategies`): the core's `meta_train_step` (Virtual-Train,
Meta-Train with the configured layer sampler, Actual-Train) on meta iterations
(every `meta.interval`-th), the weighted step with the current meta model on
the others, the plain cross-entropy step for `meta.method=ce` and during
`meta.warmup_epochs`. The train state is donated and replicated over a 1-D
device mesh, batches are sharded along it. Metrics stay on device until the
next log step; every compiled function must compile once (checked at every
log step: `RecompilationError` otherwise).

The workdir holds `config.json`, `checkpoints/` (orbax: train state, data
iterator states and the per-example record, the last `train.keep_checkpoints`),
`metrics.jsonl`, `eval.jsonl`, `tensorboard/`, and at the end `summary.json`,
`learning_curves.png` and `label_issues.csv` (the training labels ranked by
how likely each is wrong; `famus_jax.analysis`, hooked in through
`Trainer.label_tracking`: built in `__init__`, updated in `iterate`, saved and
restored with the checkpoints, reported in `_summarize`). Re-running the same command resumes from the latest
checkpoint and ends exactly where an uninterrupted run ends; SIGTERM (or
Ctrl-C) saves a checkpoint before exiting; a non-finite loss stops the run
naming the step and keeps the last good checkpoint. The workdir, checkpoints,
writers, signals and checks are the harness's (`famus_jax.training.run`).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from famus_jax import core
from famus_jax import data as data_lib
from famus_jax.analysis import tracking as tracking_lib
from famus_jax import losses as losses_lib
from famus_jax.core import forward as forward_lib
from famus_jax.training import config as config_lib
from famus_jax.training import metrics as metrics_lib
from famus_jax.training import plots as plots_lib
from famus_jax.training import schedules
from famus_jax.training import sharding as sharding_lib
from famus_jax.training.build import (build_model, build_sampler_and_scope,  # pylint: disable=unused-import
                                      build_setup, build_strategy, initial_weights,
                                      with_initial_weights)
from famus_jax.training.run import (ChanceWatch, NonFiniteLossError,  # pylint: disable=unused-import
                                    Preempted, RecompilationError, Run, means)
from famus_jax.training.warmup import WarmupRestart

log = logging.getLogger('famus_jax.train')


def eval_step(params, batch_stats, batch, *, apply_fn):
  """Sums over a padded batch: loss, top-1 and top-5 hits, valid examples."""
  logits, _ = forward_lib.apply_model(apply_fn, params, batch_stats, batch['image'],
                                      train=False)
  mask = batch['mask'].astype(jnp.float32)
  labels = batch['label']
  top = jnp.argsort(-logits, axis=-1)[:, :5]
  hit1 = (top[:, 0] == labels).astype(jnp.float32)
  hit5 = jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)
  return {'loss': jnp.sum(losses_lib.cross_entropy(logits, labels) * mask),
          'correct': jnp.sum(hit1 * mask), 'correct5': jnp.sum(hit5 * mask),
          'count': jnp.sum(mask)}


def jit_eval_step(apply_fn, mesh):
  repl, data = sharding_lib.replicated(mesh), sharding_lib.batch_sharding(mesh)
  return jax.jit(functools.partial(eval_step, apply_fn=apply_fn),
                 in_shardings=(repl, repl, data), out_shardings=repl)


class Trainer:
  """What one `train_and_evaluate` call builds and steps (the harness aside)."""

  def __init__(self, run: Run):
    config = self.config = run.config
    self.run = run
    self.splits = splits = run.load_dataset()
    config_lib.validate_against_data(config, splits, run.mesh.devices.size,
                                     jax.process_count())
    self.num_classes = int(config.model.num_classes or splits.num_classes)
    model = build_model(config, self.num_classes)
    sample = jnp.zeros((1,) + tuple(splits.image_shape), jnp.float32)
    sampler, scope = build_sampler_and_scope(config, model, sample)
    loaders = data_lib.make_split_loaders(splits, config.data, int(config.seed),
                                          test=False)
    self.train_it = run.closing(loaders['train'])
    self.meta_it = run.closing(loaders['meta'])
    self.steps_per_epoch = int(self.train_it.batches_per_epoch)
    self.num_steps = schedules.num_train_steps(config.optim, self.steps_per_epoch)
    lr_schedule = schedules.make_lr_schedule(config.optim, self.steps_per_epoch)
    setup = build_setup(config, model, lr_schedule, sampler, scope)
    init_weights = initial_weights(config, model, sample)  # checked before writing
    run.write_config()
    warmup_steps = int(config.meta.warmup_epochs * self.steps_per_epoch)
    self.strategy = build_strategy(config, setup, run.mesh, warmup_steps)
    self.restart = WarmupRestart.from_config(config, run.workdir, warmup_steps, run.is_main)
    self.label_tracking = tracking_lib.LabelTracking(run, splits.train, config)
    self.programs = {**self.strategy.programs, **self.label_tracking.programs,
                     'eval': jit_eval_step(setup.apply_fn, run.mesh)}
    init_fn = jax.jit(lambda rng: core.create_train_state(rng, model, sample,
                                                          self.num_classes, setup),
                      out_shardings=sharding_lib.replicated(run.mesh))
    self.state = run.replicate(with_initial_weights(
        config, init_fn(jax.random.PRNGKey(int(config.seed))), init_weights))
    self.mets = metrics_lib.StepMetrics(
        int(config.data.batch_size),
        [layer.name for layer in sampler.layers] if sampler is not None else None,
        int(config.train.weight_window))
    self.chance = ChanceWatch(self.num_classes)
    self.first_step_s = self.last_eval = None

  # -- resume ----------------------------------------------------------------------

  def data_state(self) -> dict:
    return {'train': self.train_it.get_state(),
            'meta': self.meta_it.get_state() if self.meta_it is not None else None,
            'metrics': self.mets.get_state()}

  def save(self, step: int) -> None:
    self.run.ckpt.save(step, self.state, self.data_state(),
                       extra=self.label_tracking.checkpoint_extra())

  def restore(self) -> int:
    """Replaces the fresh state by the latest checkpoint's; the start step."""
    restored, extra, data_state, step = self.run.ckpt.restore_with_extra(
        self.state, self.label_tracking.checkpoint_extra())
    if restored is None:
      return 0
    self.state = restored
    self.label_tracking.restore(extra, step)
    self.train_it.set_state(data_state['train'])
    if self.meta_it is not None and data_state.get('meta') is not None:
      self.meta_it.set_state(data_state['meta'])
    self.mets.set_state(data_state.get('metrics', {}))
    log.info('resumed from step %d in %s', step, self.run.ckpt.directory)
    return step

  # -- one iteration, checks, evaluation ------------------------------------------

  def iterate(self, step: int) -> None:
    if self.restart is not None:  # MLC: the best warm-up network, new momentum
      self.state = self.restart.restart(step, self.state, self.run.replicate)
    host = next(self.train_it)
    batch = self.run.device_batch(host, ('image', 'label', 'true_label'))
    val = None
    if self.strategy.needs_validation(step):
      val = self.run.device_batch(next(self.meta_it), ('image', 'label'))
    t0 = time.perf_counter()
    self.state, m = self.strategy.run_iteration(step, self.state, batch, val)
    if self.first_step_s is None:  # compile + run of the first iteration
      jax.block_until_ready(m['loss'])
      self.first_step_s = time.perf_counter() - t0
    self.label_tracking.after_iteration(host, m)
    self.mets.add(step + 1, m, host['label'], host['true_label'])
    self.run.check_iteration(step + 1, m['finite'])
    if self.restart is not None:
      self.restart.consider(step + 1, self.state,
                            lambda: self.evaluate(self.splits.meta)['correct'])

  def drain(self) -> None:
    """Moves pending metrics to the host; `NonFiniteLossError` on NaN/Inf."""
    bad = self.mets.drain()
    if bad is not None:
      raise self.run.non_finite(bad)

  def evaluate(self, source) -> dict:
    totals = self.run.evaluate(self.programs['eval'],
                               (self.state.params, self.state.batch_stats), source,
                               int(self.config.train.eval_batch_size))
    return means(totals)

  def eval_row(self, step: int) -> dict:
    res = self.evaluate(self.splits.test)
    row = {'step': step, 'test_accuracy': res['correct'], 'test_loss': res['loss']}
    if self.num_classes > 5:
      row['test_top5'] = res['correct5']
    for name, source in (self.splits.extra_test or {}).items():
      extra = self.evaluate(source)
      row[f'{name}_accuracy'], row[f'{name}_top5'] = extra['correct'], extra['correct5']
    if self.splits.meta is not None:  # clean held-out labels: for model selection
      meta = self.evaluate(self.splits.meta)
      row['meta_accuracy'], row['meta_loss'] = meta['correct'], meta['loss']
    row.update(self.mets.window.eval_stats())
    self.last_eval = row
    return row


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains and evaluates as `config` says, in `workdir`; returns the summary.

  Raises:
    ConfigError: a bad config value (one line naming the field), before any
      compile.
    famus_jax.data.DatasetMissingError: the data set is not where the config
      says (one-line how-to).
    NonFiniteLossError: the loss became NaN/Inf (the step is named; the last
      good checkpoint is kept).
    Preempted: SIGTERM/SIGINT; a checkpoint was saved.
  """
  config_lib.validate_config(config)
  c = config.train
  with Run(config, workdir) as run:
    t = Trainer(run)
    start = step = t.restore()
    writer = run.writer(lambda: metrics_lib.MetricWriter(run.workdir, start or None))
    pbar = run.progress(t.num_steps, start, t.strategy.describe(config.meta))
    due = lambda every, done: every and done % every == 0 and done != t.num_steps
    for step in range(start, t.num_steps):
      if run.stop_requested is not None:
        t.drain()
        t.save(step)
        raise Preempted(step, run.stop_requested)
      t.iterate(step)
      done = step + 1
      if pbar is not None:
        if step == start:
          pbar.unpause()  # rate and ETA without the first iteration's compilation
        pbar.update(1)
      if done % int(c.log_every) == 0 or done == t.num_steps:
        _log_row(run, t, writer, pbar, done)
      if due(int(c.eval_every), done):
        t.drain()
        _write_eval(writer, t.eval_row(done), t.mets.window)
        t.chance.end_period(done)
      if due(int(c.checkpoint_every), done):
        t.drain()
        t.save(done)
    t.drain()
    final = _final_eval(run, t, writer, start)
    t.chance.end_period(t.num_steps)
    t.save(t.num_steps)
  return _summarize(run, t, final, start)


def progress_postfix(row: dict, last_eval) -> dict:
  """The progress bar's labelled numbers: the weighted training loss (what the
  update minimises; plain cross-entropy for `ce`), the meta steps' validation
  loss on the clean meta set, and the last evaluation's test accuracy."""
  out = {'weighted_train_loss' if 'weighted_loss' in row else 'train_loss':
         f"{row.get('weighted_loss', row['loss']):.3f}"}
  if 'val_loss' in row:
    out['meta_val_loss'] = f"{row['val_loss']:.3f}"
  if last_eval is not None:
    out[f"test_acc@{last_eval['step']}"] = f"{last_eval['test_accuracy']:.3f}"
  return out


def _log_row(run: Run, t: Trainer, writer, pbar, done: int) -> None:
  """The log row of iteration `done`: written, watched, shown on the bar."""
  t.drain()
  row = dict(t.mets.row(done), compiled=run.check_compiled_once(t.programs))
  t.chance.add(row)
  if writer is not None:
    writer.write_train(row)
  if pbar is not None:
    pbar.set_postfix(progress_postfix(row, t.last_eval), refresh=False)


def selected_by_meta_set(eval_rows: list[dict]) -> Optional[dict]:
  """The evaluation with the best clean meta-set accuracy (the latest of ties):
  model selection without the test set."""
  rows = [r for r in eval_rows if 'meta_accuracy' in r and 'test_accuracy' in r]
  if not rows:
    return None
  best = max(rows, key=lambda r: (r['meta_accuracy'], r['step']))
  return {k: best[k] for k in ('step', 'meta_accuracy', 'test_accuracy')}


def _write_eval(writer, row: dict, window) -> dict:
  if writer is not None:
    writer.write_eval(row)
    clean, noisy = window.arrays()
    writer.write_histograms(row['step'], {'weights/clean': clean, 'weights/noisy': noisy})
  return row


def _final_eval(run: Run, t: Trainer, writer, start: int) -> dict:
  """The last evaluation (read back when re-running a finished run)."""
  done = [r for r in metrics_lib.read_jsonl(os.path.join(run.workdir, 'eval.jsonl'))
          if r.get('step') == t.num_steps]
  if start == t.num_steps and done:
    return done[-1]
  return _write_eval(writer, t.eval_row(t.num_steps), t.mets.window)


def _summarize(run: Run, t: Trainer, final: dict, start: int) -> dict:
  config = t.config
  train_rows = metrics_lib.read_jsonl(os.path.join(run.workdir, 'metrics.jsonl'))
  eval_rows = metrics_lib.read_jsonl(os.path.join(run.workdir, 'eval.jsonl'))
  accs = [r['test_accuracy'] for r in eval_rows if 'test_accuracy' in r]
  rates = [r['steps_per_s'] for r in train_rows[1:] if 'steps_per_s' in r]
  described = t.strategy.describe(config.meta)
  summary = {
      'status': 'completed', 'step': t.num_steps, 'num_steps': t.num_steps,
      'steps_per_epoch': t.steps_per_epoch, 'method': config.meta.method,
      'sampler': config.meta.sampler if t.strategy.uses_meta_set else None,
      'final': final, 'final_test_accuracy': final['test_accuracy'],
      # the highest test accuracy of all evaluations: a test-set oracle
      'best_test_accuracy': max(accs) if accs else final['test_accuracy'],
      'selected_by_meta_set': selected_by_meta_set(eval_rows),
      'last_train_row': train_rows[-1] if train_rows else None,
      'resumed_from': start or None, 'first_step_s': t.first_step_s,
      'steps_per_s': float(np.median(rates)) if rates else None,
      'compiled': run.check_compiled_once(t.programs),
      # meta iterations per program in this process (host dispatch: per scope)
      'program_counts': t.strategy.program_counts,
      'label_issues': t.label_tracking.report(run.workdir),
      **run.common_summary(t.splits.info),
  }
  run.write_summary(summary)
  if run.is_main:
    clean, noisy = t.mets.window.arrays()
    title = (f"{config.data.name}: {described.replace('+', ' + ')}, "
             f"final test accuracy {final['test_accuracy']:.4f}")
    plots_lib.plot_run(os.path.join(run.workdir, 'learning_curves.png'), train_rows,
                       eval_rows, clean, noisy, title)
  return summary
