"""The training loop: `train_and_evaluate(config, workdir)`.

One iteration is one jit-compiled call: the core's `meta_train_step`
(Virtual-Train, Meta-Train with the configured layer sampler, Actual-Train) on
meta iterations (every `meta.interval`-th), a weighted step with the current
meta model on the others, `plain_train_step` for `meta.method='ce'`. The train
state is donated and replicated over a 1-D device mesh, batches are sharded
along it (data parallelism, `famus_jax.training.sharding`). Metrics stay on
device until the next log step; every compiled function must compile once
(checked at every log step: `RecompilationError` otherwise).

The workdir holds `config.json`, `checkpoints/` (orbax: train state and data
iterator states, the last `train.keep_checkpoints`), `metrics.jsonl`,
`eval.jsonl`, `tensorboard/`, and at the end `summary.json` and
`learning_curves.png`. Re-running the same command resumes from the latest
checkpoint and ends exactly where an uninterrupted run ends; SIGTERM (or
Ctrl-C) saves a checkpoint before exiting; a non-finite loss stops the run
naming the step and keeps the last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import signal
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from famus_jax import core
from famus_jax import data as data_lib
from famus_jax import losses as losses_lib
from famus_jax import meta_models
from famus_jax import models as models_lib
from famus_jax.core import actual as actual_lib
from famus_jax.core import forward as forward_lib
from famus_jax.core import train_step as train_step_lib
from famus_jax.training import checkpoint as checkpoint_lib
from famus_jax.training import config as config_lib
from famus_jax.training import metrics as metrics_lib
from famus_jax.training import plots as plots_lib
from famus_jax.training import schedules
from famus_jax.training import sharding as sharding_lib
from famus_jax.training.config import ConfigError
from famus_jax.training import signals

PyTree = Any
log = logging.getLogger('famus_jax.train')


class NonFiniteLossError(RuntimeError):
  """The loss (or the parameters) became NaN/Inf; the run stopped."""

  def __init__(self, step: int, checkpoint_step: Optional[int], directory: str):
    self.step, self.checkpoint_step = step, checkpoint_step
    kept = (f'the last good checkpoint is step {checkpoint_step} in {directory}'
            if checkpoint_step is not None else 'no checkpoint was saved before it')
    super().__init__(f'non-finite loss or parameters at step {step}; stopped, {kept}')


class Preempted(RuntimeError):
  """SIGTERM / SIGINT: a checkpoint was saved; re-run the command to continue."""

  def __init__(self, step: int, signum: int):
    self.step, self.signum = step, signum
    super().__init__(f'stopped by signal {signal.Signals(signum).name} at step {step}; '
                     'checkpoint saved, re-run the same command to continue')


class RecompilationError(RuntimeError):
  """A train-loop function compiled more than once."""


# ---------------------------------------------------------------------------
# Pure step functions (jit-compiled in `build_steps`).


def _finite(tree: PyTree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def meta_step(state, batch, val_batch, *, setup: core.StepSetup):
  """The core's full meta iteration, plus a finiteness flag."""
  new_state, metrics = core.meta_train_step(state, batch, val_batch, setup=setup)
  metrics['finite'] = _finite(new_state.params) & jnp.isfinite(metrics['loss'])
  return new_state, metrics


def weighted_step(state, batch, *, setup: core.StepSetup):
  """A non-meta iteration (meta.interval > 1): Actual-Train with the current θ.

  MW-Net: `V = Ψ(ℓ; θ)` normalised; MLC: uniform weights with the current
  transition matrix in the loss; L2R (no persistent θ): uniform weights.
  """
  rng, fwd_rng = jax.random.split(state.rng)
  labels = batch['label']
  n = labels.shape[0]
  meta_model = setup.meta_model
  fwd = forward_lib.train_forward(setup.apply_fn, state.params, state.batch_stats,
                                  batch['image'], fwd_rng)
  theta = meta_model.lookahead_params(state.meta_params, n)
  losses = jax.lax.stop_gradient(meta_model.loss(theta, fwd.logits, labels))
  if meta_model.persistent:
    weights = meta_model.weights(theta, losses)
  else:
    weights = jnp.full((n,), 1.0 / n, losses.dtype)
  actual = actual_lib.actual_from_forward(
      fwd, state.params, state.opt_state, weights, labels, meta_model=meta_model,
      tx=setup.tx, theta=theta)
  new_state = state.replace(step=state.step + 1, params=actual.params,
                            batch_stats=actual.batch_stats, opt_state=actual.opt_state,
                            rng=rng)
  metrics = {'loss': jnp.mean(losses_lib.cross_entropy(fwd.logits, labels)),
             'weighted_loss': actual.loss, 'lr': setup.lr_schedule(state.step),
             'weights': weights, **train_step_lib.weight_metrics(weights, batch)}
  metrics['finite'] = _finite(new_state.params) & jnp.isfinite(metrics['loss'])
  return new_state, metrics


def plain_step(state, batch, *, setup: core.StepSetup):
  """Cross-entropy baseline (`meta.method='ce'`), plus a finiteness flag."""
  new_state, metrics = core.plain_train_step(state, batch, setup=setup)
  metrics['finite'] = _finite(new_state.params) & jnp.isfinite(metrics['loss'])
  return new_state, metrics


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


# ---------------------------------------------------------------------------
# Building blocks.


def build_model(config, num_classes: int):
  try:
    return models_lib.get_model(config.model.name, num_classes=num_classes,
                                dtype=config.model.dtype, **config.model.kwargs.to_dict())
  except (TypeError, ValueError) as e:
    raise ConfigError(f'config.model (name={config.model.name!r}, '
                      f'kwargs={config.model.kwargs.to_dict()}): {e}') from None


def _field_error(e: Exception) -> ConfigError:
  msg = str(e)
  return ConfigError(msg if msg.startswith('config.') else
                     ('config.' + msg if msg.startswith('meta.') else msg))


def build_sampler_and_scope(config, model, sample_images):
  """FaMUS sampler (or None) and static meta scope (or None), validated."""
  if config.meta.method == 'ce':
    return None, None
  from famus_jax import famus  # pylint: disable=g-import-not-at-top
  init = lambda: model.init({'params': jax.random.PRNGKey(0),
                             'dropout': jax.random.PRNGKey(0)}, sample_images, train=False)
  params = jax.eval_shape(init)['params']  # abstract: nothing runs or compiles
  try:
    scope = famus.static_scope(config.meta, model, params, sample_images)
    sampler = famus.build_sampler(config.meta, model, params, sample_images)
  except ValueError as e:
    raise _field_error(e) from None
  return sampler, scope


def build_setup(config, model, lr_schedule, sampler=None, scope=None) -> core.StepSetup:
  o, m = config.optim, config.meta
  tx = core.sgd_with_weight_decay(lr_schedule, momentum=o.momentum,
                                  weight_decay=o.weight_decay, nesterov=o.nesterov)
  if m.method == 'ce':
    meta_model = meta_models.get_meta_model('l2r')  # no meta parameters
  else:
    meta_model = meta_models.get_meta_model(m.method)
  meta_tx = core.make_meta_optimizer(m.optimizer, m.lr, m.weight_decay, m.momentum)
  kwargs = {} if sampler is None else {'sampler': sampler}
  return core.StepSetup(apply_fn=model.apply, meta_model=meta_model, tx=tx,
                        meta_tx=meta_tx, lr_schedule=lr_schedule, mode=m.mode,
                        lookahead=m.lookahead, scope=scope, **kwargs)


@dataclasses.dataclass
class Steps:
  """The compiled functions of a run (each must compile exactly once)."""
  meta: Optional[Callable]
  weighted: Optional[Callable]
  plain: Optional[Callable]
  eval: Callable

  def compiled(self) -> dict[str, int]:
    out = {}
    for name in ('meta', 'weighted', 'plain', 'eval'):
      fn = getattr(self, name)
      size = getattr(fn, '_cache_size', None) if fn is not None else None
      if size is not None:
        out[name] = int(size())
    return out

  def check_compiled_once(self) -> dict[str, int]:
    counts = self.compiled()
    bad = {k: v for k, v in counts.items() if v > 1}
    if bad:
      raise RecompilationError(
          f'train-loop functions compiled more than once: {bad} (an input shape, '
          'dtype or sharding changed between iterations)')
    return counts


def build_steps(setup: core.StepSetup, method: str, mesh) -> Steps:
  repl = sharding_lib.replicated(mesh)
  data = sharding_lib.batch_sharding(mesh)
  jit = functools.partial(jax.jit, donate_argnums=(0,), out_shardings=(repl, repl))
  meta = weighted = plain = None
  if method == 'ce':
    plain = jit(functools.partial(plain_step, setup=setup), in_shardings=(repl, data))
  else:
    meta = jit(functools.partial(meta_step, setup=setup),
               in_shardings=(repl, data, data))
    weighted = jit(functools.partial(weighted_step, setup=setup),
                   in_shardings=(repl, data))
  ev = jax.jit(functools.partial(eval_step, apply_fn=setup.apply_fn),
               in_shardings=(repl, repl, data), out_shardings=repl)
  return Steps(meta, weighted, plain, ev)


def evaluate(steps: Steps, state, source, batch_size: int, mesh,
             data_config) -> dict:
  """Accuracy (top-1, top-5) and mean loss over a whole split, one compile."""
  loader = data_lib.make_loader(source, batch_size=batch_size, seed=0, shuffle=False,
                                num_epochs=1, drop_remainder=False,
                                num_workers=int(data_config.num_workers),
                                prefetch=int(data_config.prefetch))
  totals = None
  try:
    for b in loader:
      n = b['label'].shape[0]
      pad = batch_size - n
      host = {'image': b['image'], 'label': b['label'],
              'mask': np.ones((n,), np.bool_)}
      if pad:
        host = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
                for k, v in host.items()}
      out = steps.eval(state.params, state.batch_stats,
                       sharding_lib.global_batch(host, mesh))
      totals = out if totals is None else jax.tree_util.tree_map(jnp.add, totals, out)
  finally:
    loader.close()
  totals = jax.device_get(totals)
  count = max(float(totals['count']), 1.0)
  return {'accuracy': float(totals['correct']) / count,
          'top5': float(totals['correct5']) / count,
          'loss': float(totals['loss']) / count, 'count': int(totals['count'])}




# ---------------------------------------------------------------------------
# Host-side metric bookkeeping.

SCALAR_SKIP = ('weights', 'gates', 'finite')
RELATIVE = ('weight_mean', 'weight_std', 'weight_clean', 'weight_noisy')


class _Metrics:
  """Per-step device metrics → checked host rows (every log step)."""

  def __init__(self, batch_size: int, layer_names: Optional[list[str]],
               weight_window: int):
    self.pending: list[tuple] = []  # (step, device metrics, labels, true labels)
    self.rows: list[dict] = []  # host scalars of the steps since the last row
    self.batch_size = batch_size
    self.layer_names = layer_names
    self.window = metrics_lib.WeightWindow(weight_window)
    self.row_start = time.perf_counter()

  def add(self, step: int, metrics: dict, labels, true_labels):
    self.pending.append((step, metrics, labels, true_labels))

  def drain(self) -> Optional[int]:
    """Moves pending metrics to the host; returns the first non-finite step."""
    if not self.pending:
      return None
    fetched = jax.device_get([m for _, m, _, _ in self.pending])
    bad = None
    for (step, _, labels, true_labels), m in zip(self.pending, fetched):
      if not bool(m.get('finite', True)) or not np.isfinite(m['loss']):
        bad = step
        break
      if 'weights' in m:
        self.window.add(np.asarray(m['weights']), labels, true_labels)
      row = {'step': step}
      for k, v in m.items():
        if k in SCALAR_SKIP:
          continue
        v = float(v)
        row[k] = v * self.batch_size if k in RELATIVE else v
      if 'gates' in m:
        row['gates'] = np.asarray(m['gates'], np.float64).tolist()
      self.rows.append(row)
    self.pending = []
    return bad

  def row(self, step: int) -> dict:
    """The log row of `step`: means over the steps since the last row."""
    now = time.perf_counter()
    rows, self.rows = self.rows, []
    out: dict[str, Any] = {'step': step}
    keys = sorted({k for r in rows for k in r if k not in ('step', 'gates')})
    for k in keys:
      vals = [r[k] for r in rows if k in r]
      out[k] = rows[-1][k] if k == 'lr' else float(np.mean(vals))
    gates = [r['gates'] for r in rows if 'gates' in r]
    if gates:
      last = gates[-1]
      out['layer_frequency'] = np.mean(np.asarray(gates), axis=0).round(4).tolist()
      out['selected_layers'] = [
          (self.layer_names[i] if self.layer_names else i)
          for i, g in enumerate(last) if g > 0.5]
    out['meta_steps'] = sum(1 for r in rows if 'val_loss' in r)
    n = max(len(rows), 1)
    out['step_time_s'] = (now - self.row_start) / n
    out['steps_per_s'] = n / max(now - self.row_start, 1e-9)
    self.row_start = now
    return out

  def get_state(self) -> dict:
    return {'rows': self.rows, 'window': self.window.get_state()}

  def set_state(self, state: dict) -> None:
    self.rows = list(state.get('rows', []))
    self.window.set_state(state.get('window', {}))


def _device_summary(mesh) -> dict:
  devs = list(mesh.devices.flat)
  return {'num_devices': len(devs), 'platform': devs[0].platform,
          'device_kind': devs[0].device_kind, 'process_count': jax.process_count()}


def _write_json(path: str, payload: dict) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(metrics_lib._jsonable(payload), f, indent=2, sort_keys=True)  # pylint: disable=protected-access
  os.replace(tmp, path)


# ---------------------------------------------------------------------------
# The loop.


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
  start_time = time.perf_counter()
  config_lib.validate_config(config)
  workdir = os.path.abspath(workdir)
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)

  # Resume guard: the same workdir must hold the same experiment.
  config_dict = config_lib.config_to_dict(config)
  config_path = os.path.join(workdir, 'config.json')
  if os.path.exists(config_path):
    with open(config_path) as f:
      saved = json.load(f)
    conflicts = config_lib.resume_conflicts(saved, json.loads(json.dumps(
        metrics_lib._jsonable(config_dict))))  # pylint: disable=protected-access
    if conflicts:
      raise ConfigError(
          f'--workdir={workdir} holds a run with a different config (config.'
          f'{conflicts[0]}{" and others" if len(conflicts) > 1 else ""}); use a new '
          'workdir, or the same config to resume')

  # Data (a missing data set raises DatasetMissingError here).
  splits = data_lib.load_dataset(config.data, config.seed, workdir if is_main else None)
  mesh = sharding_lib.make_mesh(int(config.train.num_devices))
  config_lib.validate_against_data(config, splits, mesh.devices.size,
                                   jax.process_count())
  num_classes = int(config.model.num_classes or splits.num_classes)
  model = build_model(config, num_classes)
  sample_images = jnp.zeros((1,) + tuple(splits.image_shape), jnp.float32)
  sampler, scope = build_sampler_and_scope(config, model, sample_images)

  loaders = data_lib.make_split_loaders(splits, config.data, int(config.seed))
  loaders['test'].close()
  train_it, meta_it = loaders['train'], loaders['meta']
  steps_per_epoch = int(train_it.batches_per_epoch)
  num_steps = schedules.num_train_steps(config.optim, steps_per_epoch)
  lr_schedule = schedules.make_lr_schedule(config.optim, steps_per_epoch)
  method = config.meta.method
  setup = build_setup(config, model, lr_schedule, sampler, scope)
  if is_main:
    _write_json(config_path, config_dict)

  # State: fresh, then replaced by the latest checkpoint if there is one.
  # One compiled initialisation (eager `init` would compile every op on its own).
  init_fn = jax.jit(lambda rng: core.create_train_state(rng, model, sample_images,
                                                        num_classes, setup),
                    out_shardings=sharding_lib.replicated(mesh))
  state = init_fn(jax.random.PRNGKey(int(config.seed)))
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                     keep=int(config.train.keep_checkpoints))
  layer_names = [layer.name for layer in sampler.layers] if sampler is not None else None
  mets = _Metrics(int(config.data.batch_size), layer_names,
                  int(config.train.weight_window))
  restored, data_state, start_step = ckpt.restore(state)
  if restored is not None:
    state = restored
    train_it.set_state(data_state['train'])
    if meta_it is not None and data_state.get('meta') is not None:
      meta_it.set_state(data_state['meta'])
    mets.set_state(data_state.get('metrics', {}))
    log.info('resumed from step %d in %s', start_step, ckpt.directory)
  else:
    start_step = 0
  writer = metrics_lib.MetricWriter(workdir, start_step if restored is not None else None) \
      if is_main else None

  steps = build_steps(setup, method, mesh)
  eval_bs = int(config.train.eval_batch_size)
  interval = int(config.meta.interval)
  log_every = int(config.train.log_every)
  eval_every = int(config.train.eval_every)
  ckpt_every = int(config.train.checkpoint_every)
  last_acc = None

  def data_state_now():
    return {'train': train_it.get_state(),
            'meta': meta_it.get_state() if meta_it is not None else None,
            'metrics': mets.get_state()}

  def drain_or_raise():
    bad = mets.drain()
    if bad is not None:
      raise NonFiniteLossError(bad, ckpt.latest_step(), ckpt.directory)

  def run_eval(step: int) -> dict:
    res = evaluate(steps, state, splits.test, eval_bs, mesh, config.data)
    row = {'step': step, 'test_accuracy': res['accuracy'], 'test_loss': res['loss']}
    if num_classes > 5:
      row['test_top5'] = res['top5']
    for name, source in (splits.extra_test or {}).items():
      extra = evaluate(steps, state, source, eval_bs, mesh, config.data)
      row[f'{name}_accuracy'] = extra['accuracy']
      row[f'{name}_top5'] = extra['top5']
    row.update(mets.window.eval_stats())
    if writer is not None:
      writer.write_eval(row)
      clean, noisy = mets.window.arrays()
      writer.write_histograms(step, {'weights/clean': clean, 'weights/noisy': noisy})
    return row

  compile_s = None
  step = start_step
  pbar = None
  if is_main and config.train.progress:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    pbar = tqdm(total=num_steps, initial=start_step, dynamic_ncols=True,
                desc=f'{method}' + (f'+{config.meta.sampler}' if method != 'ce' else ''))
  try:
    with signals.StopFlag() as stop:
      for step in range(start_step, num_steps):
        if stop.signum is not None:
          drain_or_raise()
          ckpt.save(step, state, data_state_now())
          raise Preempted(step, stop.signum)
        host = next(train_it)
        batch = sharding_lib.global_batch(
            {k: host[k] for k in ('image', 'label', 'true_label')}, mesh)
        t0 = time.perf_counter() if compile_s is None else None
        if method == 'ce':
          state, m = steps.plain(state, {'image': batch['image'], 'label': batch['label']})
        elif step % interval == 0:
          val_host = next(meta_it)
          val = sharding_lib.global_batch(
              {k: val_host[k] for k in ('image', 'label')}, mesh)
          state, m = steps.meta(state, batch, val)
        else:
          state, m = steps.weighted(state, batch)
        if t0 is not None:
          jax.block_until_ready(m['loss'])
          compile_s = time.perf_counter() - t0
        done = step + 1
        mets.add(done, m, host['label'], host['true_label'])
        if pbar is not None:
          pbar.update(1)
        if done % log_every == 0 or done == num_steps:
          drain_or_raise()
          row = mets.row(done)
          row['compiled'] = steps.check_compiled_once()
          if writer is not None:
            writer.write_train(row)
          if pbar is not None:
            post = {'loss': f"{row['loss']:.3f}"}
            if last_acc is not None:
              post['acc'] = f'{last_acc:.3f}'
            pbar.set_postfix(post, refresh=False)
        if eval_every and done % eval_every == 0 and done != num_steps:
          drain_or_raise()
          last_acc = run_eval(done)['test_accuracy']
        if ckpt_every and done % ckpt_every == 0 and done != num_steps:
          drain_or_raise()
          ckpt.save(done, state, data_state_now())

      # End: final evaluation and checkpoint.
      drain_or_raise()
      done_rows = [r for r in metrics_lib.read_jsonl(os.path.join(workdir, 'eval.jsonl'))
                   if r.get('step') == num_steps]
      if start_step == num_steps and done_rows:  # re-run of a finished run
        final = done_rows[-1]
      else:
        final = run_eval(num_steps)
      ckpt.save(num_steps, state, data_state_now())
  except NonFiniteLossError as e:
    summarize_failure(workdir, 'non_finite', e.step, str(e))
    raise
  finally:
    if pbar is not None:
      pbar.close()
    train_it.close()
    if meta_it is not None:
      meta_it.close()
    if writer is not None:
      writer.close()
    ckpt.close()

  compiled = steps.check_compiled_once()
  summary = _summarize(workdir, final, num_steps, steps_per_epoch, start_step,
                       restored is not None, compile_s,
                       time.perf_counter() - start_time, compiled, mesh, config,
                       splits.info, mets)
  return summary


def _summarize(workdir, final, num_steps, steps_per_epoch, start_step, resumed,
               compile_s, wall_s, compiled, mesh, config, data_info, mets) -> dict:
  train_rows = metrics_lib.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  eval_rows = metrics_lib.read_jsonl(os.path.join(workdir, 'eval.jsonl'))
  accs = [r['test_accuracy'] for r in eval_rows if 'test_accuracy' in r]
  rates = [r['steps_per_s'] for r in train_rows[1:] if 'steps_per_s' in r]
  summary = {
      'status': 'completed', 'step': num_steps, 'num_steps': num_steps,
      'steps_per_epoch': steps_per_epoch,
      'method': config.meta.method,
      'sampler': config.meta.sampler if config.meta.method != 'ce' else None,
      'final': final,
      'final_test_accuracy': final['test_accuracy'],
      'best_test_accuracy': max(accs) if accs else final['test_accuracy'],
      'last_train_row': train_rows[-1] if train_rows else None,
      'resumed_from': start_step if resumed else None,
      'wall_time_s': wall_s,
      'first_step_s': compile_s,
      'steps_per_s': float(np.median(rates)) if rates else None,
      'compiled': compiled,
      'devices': _device_summary(mesh),
      'data': {k: data_info.get(k) for k in ('name', 'num_train', 'num_meta', 'num_test',
                                             'realised_noise_rate', 'noise_type')
               if k in data_info},
  }
  if jax.process_index() == 0:
    _write_json(os.path.join(workdir, 'summary.json'), summary)
    clean, noisy = mets.window.arrays()
    title = (f"{config.data.name}: {config.meta.method}"
             + (f" + {config.meta.sampler}" if config.meta.method != 'ce' else '')
             + f", final test accuracy {final['test_accuracy']:.4f}")
    plots_lib.plot_run(os.path.join(workdir, 'learning_curves.png'), train_rows,
                       eval_rows, clean, noisy, title)
  return summary


def summarize_failure(workdir: str, status: str, step: int, message: str) -> None:
  """Writes `summary.json` for a run that stopped (non-finite loss)."""
  if jax.process_index() == 0:
    _write_json(os.path.join(workdir, 'summary.json'),
                {'status': status, 'step': step, 'message': message})
