"""The training loop: one `Trainer` for every training algorithm.

    with Run(config, workdir, resumable=algorithm.resumable) as run:
      summary = Trainer(run, algorithm, hooks=[...]).fit()

Set-up (once): the data (checked against the algorithm's size limits), the
loaders, the `Parts` of the config (`famus_jax.training.build`), the method's
strategy, the algorithm's programs and the hooks (the label-issue record
always; the algorithm's own, e.g. the warm-up restart; the caller's). Then,
from the latest checkpoint on, blocks of `cadence.block` iterations: the
algorithm's `begin_block`, and for each member network the block's
iterations, each

    hooks.before_iteration -> training batch -> validation batch when the
    strategy's program needs one -> the strategy's jitted step ->
    hooks.after_iteration (their extra metrics join the step's) -> metrics
    -> NaN/Inf check (at most one iteration late)

and at the block's end, when due, the log rows (one per member:
`metrics.jsonl`, TensorBoard), the evaluation (`eval.jsonl`), the algorithm's
`end_block` and the checkpoint. SIGTERM/SIGINT before a block saves there and
stops (`Preempted`); inside a block the block is dropped and the re-run starts
it again. The run ends with the final evaluation, a checkpoint, `summary.json`
and `learning_curves.png`. Every compiled program must compile once
(`RecompilationError` otherwise, checked at each log row).
"""

from __future__ import annotations

import logging
import time
from typing import Optional, Sequence

import jax
import numpy as np

from famus_jax import data as data_lib
from famus_jax.analysis.tracking import LabelTracking
from famus_jax.training import build as build_lib
from famus_jax.training import config as config_lib
from famus_jax.training import metrics as metrics_lib
from famus_jax.training import plots as plots_lib
from famus_jax.training import schedules
from famus_jax.training.algorithm import Algorithm
from famus_jax.training.checks import ChanceWatch, check_compiled_once
from famus_jax.training.hooks import Hook
from famus_jax.training.run import Run, means
from famus_jax.training.signals import Preempted

log = logging.getLogger('famus_jax.train')


def _due(every: int, done: int) -> bool:
  return bool(every) and done % every == 0


class Trainer:
  """A run of `algorithm` on the harness `run` (see the module docstring).

  Attributes:
    splits, parts, strategy: the data, the built pieces, the method strategy.
    members: the names of the trained networks; `states[member]` their
      `TrainState`s.
    programs: every compiled program (checked for compile-once).
    hooks: the plug-ins, in call order.
  """

  def __init__(self, run: Run, algorithm: Algorithm, *, splits=None,
               hooks: Sequence[Hook] = ()):
    config = self.config = run.config
    self.run, self.algorithm = run, algorithm
    self.splits = splits if splits is not None else run.load_dataset()
    config_lib.validate_against_data(config, self.splits, run.mesh.devices.size,
                                     algorithm.size_limits(self.splits))
    self.num_classes = int(config.model.num_classes or self.splits.num_classes)
    loaders = data_lib.make_split_loaders(self.splits, config.data, int(config.seed),
                                          test=False)
    self.train_it, self.meta_it = map(run.closing, (loaders['train'], loaders['meta']))
    self.steps_per_epoch = int(self.train_it.batches_per_epoch)
    self.num_steps = schedules.num_train_steps(config.optim, self.steps_per_epoch)
    self.parts = build_lib.build(config, num_classes=self.num_classes,
                                 image_shape=self.splits.image_shape,
                                 steps_per_epoch=self.steps_per_epoch)
    self.strategy = self.parts.strategy(run.mesh,
                                        algorithm.warmup_steps(self.steps_per_epoch))
    self.members, self.cadence = algorithm.members, algorithm.cadence(self)
    tracking = LabelTracking(run, self.splits.train, config,
                             gmm=algorithm.clean_probabilities)
    self.hooks = [tracking, algorithm, *algorithm.attach(self), *hooks]
    self.programs = dict(self.strategy.programs)
    for hook in self.hooks:
      self.programs.update(hook.programs)
    run.dir.write_config()
    self.states = algorithm.init_states(self)
    self.window = metrics_lib.WeightWindow(int(config.train.weight_window))
    self.mets = {m: metrics_lib.StepMetrics(int(config.data.batch_size),
                                            self.parts.layer_names, self.window)
                 for m in self.members}
    self.chance = ChanceWatch(self.num_classes)
    self.first_step_s = self.last_eval = self.final = self.start = None
    self.writer = self.pbar = None

  # -- checkpoints -----------------------------------------------------------------

  def _extras(self) -> dict:
    extras = {}
    for hook in self.hooks:
      extras.update(hook.checkpoint_extra())
    return extras

  def data_state(self) -> dict:
    return {'train': self.train_it.get_state(),
            'meta': self.meta_it.get_state() if self.meta_it is not None else None,
            'metrics': {m: mets.get_state() for m, mets in self.mets.items()},
            'window': self.window.get_state()}

  def save(self, step: int) -> None:
    self.run.ckpt.save(step, {**self.states, **self.algorithm.extra_state()},
                       self.data_state(), extra=self._extras())

  def restore(self) -> int:
    """Replaces the fresh states by the latest checkpoint's; the start step."""
    like = {**self.states, **self.algorithm.extra_state()}
    restored, extra, data, step = self.run.ckpt.restore_with_extra(like, self._extras())
    if restored is None:
      return 0
    self.states = {m: restored[m] for m in self.members}
    self.algorithm.load_extra_state({k: v for k, v in restored.items()
                                     if k not in self.members})
    for hook in self.hooks:
      hook.restore(extra, step)
    self.train_it.set_state(data['train'])
    if self.meta_it is not None and data.get('meta') is not None:
      self.meta_it.set_state(data['meta'])
    for m, rows in data['metrics'].items():
      self.mets[m].set_state(rows)
    self.window.set_state(data['window'])
    log.info('resumed from step %d in %s', step, self.run.ckpt.directory)
    return step

  # -- one iteration -----------------------------------------------------------------

  def iterate(self, member: str, step: int, validation) -> None:
    """Iteration `step` of network `member`; `validation` the block's source of
    validation batches."""
    for hook in self.hooks:
      hook.before_iteration(self, member, step)
    host = next(self.train_it)
    batch = self.run.device_batch(host, ('image', 'label', 'true_label'))
    val = None
    if self.strategy.needs_validation(step):
      val = self.run.device_batch(next(validation), ('image', 'label'))
    t0 = time.perf_counter()
    self.states[member], m = self.strategy.run_iteration(step, self.states[member], batch,
                                                         val)
    if self.first_step_s is None:  # compile + run of the first iteration
      jax.block_until_ready(m['loss'])
      self.first_step_s = time.perf_counter() - t0
    for hook in self.hooks:
      m = {**m, **(hook.after_iteration(self, member, step, host, m) or {})}
    self.mets[member].add(step + 1, m, host['label'], host['true_label'])
    self.run.guard.check_iteration(step + 1, m['finite'])

  def _stop(self, step: int, started: bool) -> None:
    """SIGTERM/SIGINT: saves at `step` and stops, or (`started`: inside a
    block) stops at the last checkpoint."""
    signum = self.run.stop_requested
    if signum is None:
      return
    if not started:
      self.drain()
      self.save(step)
      raise Preempted(step, signum)
    raise Preempted(self.run.ckpt.latest_step() or 0, signum)

  def train_block(self, first: int, last: int) -> None:
    """Iterations [first, last) of every member."""
    self._stop(first, started=False)
    self.algorithm.begin_block(self, first)
    for i, member in enumerate(self.members):
      with self.algorithm.sources(self, member, first) as validation:
        for step in range(first, last):
          self._stop(first, started=i > 0 or step > first)
          self.iterate(member, step, validation)

  def drain(self) -> None:
    """Moves pending metrics to the host; `NonFiniteLossError` on NaN/Inf."""
    for mets in self.mets.values():
      self.run.guard.check_step(mets.drain())

  # -- evaluation ----------------------------------------------------------------------

  def evaluate(self, source) -> dict:
    """Means over `source` of the algorithm's 'eval' program."""
    return means(self.run.evaluate(self.programs['eval'], self.algorithm.eval_args(self),
                                   source, int(self.config.train.eval_batch_size)))

  def eval_row(self, step: int) -> dict:
    res = self.evaluate(self.splits.test)
    row = {'step': step, 'test_accuracy': res['correct'], 'test_loss': res['loss']}
    for m in self.members:  # each network of an ensemble
      if f'correct_{m}' in res:
        row[f'test_accuracy_{m}'] = res[f'correct_{m}']
    if self.num_classes > 5:
      row['test_top5'] = res['correct5']
    for name, source in (self.splits.extra_test or {}).items():
      extra = self.evaluate(source)
      row[f'{name}_accuracy'], row[f'{name}_top5'] = extra['correct'], extra['correct5']
    if self.splits.meta is not None:  # clean held-out labels: for model selection
      meta = self.evaluate(self.splits.meta)
      row['meta_accuracy'], row['meta_loss'] = meta['correct'], meta['loss']
    row.update(self.window.eval_stats())
    self.last_eval = row
    return row

  # -- the run ---------------------------------------------------------------------------

  def fit(self) -> dict:
    """Trains to the end (from the latest checkpoint); the summary."""
    start = self.start = self.restore()
    out = self.run.out
    self.writer = out.writer(lambda: metrics_lib.MetricWriter(self.run.workdir,
                                                              start or None))
    self.pbar = out.progress(self.num_steps, start, self.algorithm.describe(self))
    for hook in self.hooks:
      hook.on_start(self)
    for first in range(start, self.num_steps, self.cadence.block):
      last = min(first + self.cadence.block, self.num_steps)
      self.train_block(first, last)
      self.end_block(last, started=first == start)
    self.drain()
    return self.summarize(self.final or self._read_final(), start)

  def end_block(self, done: int, started: bool) -> None:
    """Rows, evaluation, the algorithm's output and the checkpoint due at `done`."""
    last, c = done == self.num_steps, self.cadence
    if self.pbar is not None:
      if started:
        self.pbar.unpause()  # rate and ETA without the first block's compilation
      self.pbar.update(done - self.pbar.n)
    rows = self._log_rows(done) if _due(c.log, done) or last else None
    evaluation = None
    if last or _due(c.eval, done):
      self.drain()
      evaluation = self._write_eval(self.eval_row(done))
      self.chance.end_period(done)
    if last:
      self.final = evaluation
    self.algorithm.end_block(self, done, rows, evaluation)
    if last or _due(c.checkpoint, done):
      self.drain()
      self.save(done)

  def _log_rows(self, done: int) -> dict:
    """The log rows of iteration `done` (one per member): written, watched,
    shown on the bar."""
    self.drain()
    compiled = check_compiled_once(self.programs)
    rows = {}
    for member, mets in self.mets.items():
      row = dict(mets.row(done), compiled=compiled)
      if len(self.members) > 1:
        row['net'] = member
      self.chance.add(row)
      if self.writer is not None:
        self.writer.write_train(row)
      rows[member] = row
    if self.pbar is not None:
      self.pbar.set_postfix(progress_postfix(rows[self.members[0]], self.last_eval),
                            refresh=False)
    return rows

  def _write_eval(self, row: dict) -> dict:
    if self.writer is not None:
      self.writer.write_eval(row)
      clean, noisy = self.window.arrays()
      self.writer.write_histograms(row['step'], {'weights/clean': clean,
                                                 'weights/noisy': noisy})
    return row

  def _read_final(self) -> dict:
    """The last evaluation of a finished run that is run again."""
    rows = metrics_lib.read_jsonl(self.run.dir.file('eval.jsonl'))
    done = [r for r in rows if r.get('step') == self.num_steps]
    return done[-1] if done else self._write_eval(self.eval_row(self.num_steps))

  def summarize(self, final: dict, start: int) -> dict:
    """`summary.json` and `learning_curves.png`; the summary."""
    train_rows = metrics_lib.read_jsonl(self.run.dir.file('metrics.jsonl'))
    eval_rows = metrics_lib.read_jsonl(self.run.dir.file('eval.jsonl'))
    accs = [r['test_accuracy'] for r in eval_rows if 'test_accuracy' in r]
    rates = [r['steps_per_s'] for r in train_rows[1:] if 'steps_per_s' in r]
    summary = {
        'status': 'completed', 'algorithm': self.config.algorithm,
        'step': self.num_steps, 'num_steps': self.num_steps,
        'steps_per_epoch': self.steps_per_epoch, 'method': self.config.meta.method,
        'sampler': self.config.meta.sampler if self.strategy.uses_meta_set else None,
        'final': final, 'final_test_accuracy': final['test_accuracy'],
        # the highest test accuracy of all evaluations: a test-set oracle
        'best_test_accuracy': max(accs) if accs else final['test_accuracy'],
        'selected_by_meta_set': selected_by_meta_set(eval_rows),
        'last_train_row': train_rows[-1] if train_rows else None,
        'resumed_from': start or None, 'first_step_s': self.first_step_s,
        'steps_per_s': float(np.median(rates)) if rates else None,
        'compiled': check_compiled_once(self.programs),
        # meta iterations per program in this process (per scope program)
        'program_counts': self.strategy.program_counts,
    }
    for hook in self.hooks:
      summary.update(hook.summary(self))
    summary.update(self.run.common_summary(self.splits.info))
    self.run.out.write_summary(summary)
    if self.run.is_main:
      self._plot(train_rows, eval_rows, final)
    return summary

  def _plot(self, train_rows: list[dict], eval_rows: list[dict], final: dict) -> None:
    first = [r for r in train_rows if r.get('net', self.members[0]) == self.members[0]]
    clean, noisy = self.window.arrays()
    title = (f'{self.config.data.name}: '
             f"{self.algorithm.describe(self).replace('+', ' + ')}, "
             f"final test accuracy {final['test_accuracy']:.4f}")
    plots_lib.plot_run(self.run.dir.file('learning_curves.png'), first, eval_rows, clean,
                       noisy, title)


def progress_postfix(row: dict, last_eval: Optional[dict]) -> dict:
  """The progress bar's labelled numbers: the weighted training loss (what the
  update minimises; plain cross-entropy for `ce`), the meta steps' validation
  loss, and the last evaluation's test accuracy."""
  out = {'weighted_train_loss' if 'weighted_loss' in row else 'train_loss':
         f"{row.get('weighted_loss', row['loss']):.3f}"}
  if 'val_loss' in row:
    out['meta_val_loss'] = f"{row['val_loss']:.3f}"
  if last_eval is not None:
    out[f"test_acc@{last_eval['step']}"] = f"{last_eval['test_accuracy']:.3f}"
  return out


def selected_by_meta_set(eval_rows: list[dict]) -> Optional[dict]:
  """The evaluation with the best clean meta-set accuracy (the latest of ties):
  model selection without the test set."""
  rows = [r for r in eval_rows if 'meta_accuracy' in r and 'test_accuracy' in r]
  if not rows:
    return None
  best = max(rows, key=lambda r: (r['meta_accuracy'], r['step']))
  return {k: best[k] for k in ('step', 'meta_accuracy', 'test_accuracy')}
