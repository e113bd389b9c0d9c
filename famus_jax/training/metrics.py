"""Metric files of a run: JSONL rows and TensorBoard event files.

`workdir/metrics.jsonl`: one row per log step (`step`, losses, `lr`,
meta-weight statistics, selected layers, step time); `workdir/eval.jsonl`: one
row per evaluation; `workdir/tensorboard/`: the same scalars (tensorboardX).
On resume from step s the JSONL rows after s are dropped and TensorBoard is
told to purge events after s, so an interrupted and resumed run leaves the
same rows as an uninterrupted one. A write the file system refuses (a full
disk, a read-only mount) raises `WriteError` naming the file, also when it
happens in TensorBoard's writer thread (reported at the next write).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from typing import Any, Iterable, Optional

from etils import epy
import jax
import numpy as np

from famus_jax.core.train_step import PER_EXAMPLE_METRICS
from famus_jax.training import logfile
from famus_jax.training.writes import WriteError, writing

with epy.lazy_imports():  # imported when a run writes TensorBoard events
  import tensorboardX


def jsonable(v: Any) -> Any:
  """`v` with numpy scalars/arrays as Python values; NaN/Inf as strings."""
  if isinstance(v, dict):
    return {k: jsonable(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [jsonable(x) for x in v]
  if isinstance(v, np.ndarray):
    return jsonable(v.tolist())
  if isinstance(v, (np.floating, float)):
    f = float(v)
    return f if math.isfinite(f) else str(f)  # 'nan' / 'inf' stay valid JSON
  if isinstance(v, (np.integer,)):
    return int(v)
  if isinstance(v, np.bool_):
    return bool(v)
  return v


def write_json(path: str, payload: dict) -> None:
  """Writes `payload` as indented JSON, atomically (temporary file, rename)."""
  tmp = path + '.tmp'
  with writing(path):
    with open(tmp, 'w') as f:
      json.dump(jsonable(payload), f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def first_non_finite(rows: Iterable[dict], keys: Iterable[str] = ('loss',)
                     ) -> Optional[int]:
  """Index of the first host metrics row whose 'finite' flag is False or whose
  `keys` hold NaN/Inf; None when all are finite."""
  keys = tuple(keys)
  for i, m in enumerate(rows):
    if not bool(m.get('finite', True)):
      return i
    if any(k in m and not np.all(np.isfinite(np.asarray(m[k], np.float64)))
           for k in keys):
      return i
  return None


def read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by kill -9
          break
  return rows


class JsonlWriter:
  """Appends one JSON object per line (flushed each time)."""

  def __init__(self, path: str, resume_step: Optional[int] = None):
    self.path = path
    with writing(path):
      if resume_step is None:
        open(path, 'w').close()
      else:  # keep the rows up to the restored step, atomically
        rows = [r for r in read_jsonl(path) if r.get('step', 0) <= resume_step]
        tmp = path + '.tmp'
        with open(tmp, 'w') as f:
          for r in rows:
            f.write(json.dumps(r) + '\n')
        os.replace(tmp, path)
      self._f = open(path, 'a')

  def write(self, row: dict) -> None:
    with writing(self.path):
      self._f.write(json.dumps(jsonable(row)) + '\n')
      self._f.flush()

  def close(self) -> None:
    try:
      self._f.close()
    except OSError:  # every row was flushed: only a row whose write already failed
      pass


class MetricWriter:
  """JSONL files plus TensorBoard scalars and histograms.

  TensorBoard's events are written by its own thread: an `OSError` there is
  kept off the terminal (the log file has it) and raised as `WriteError` by
  the next write; its queue is unbounded, so a dead thread never blocks one.
  """

  def __init__(self, workdir: str, resume_step: Optional[int] = None,
               tensorboard: bool = True):
    self.train = JsonlWriter(os.path.join(workdir, 'metrics.jsonl'), resume_step)
    self.eval = JsonlWriter(os.path.join(workdir, 'eval.jsonl'), resume_step)
    self._tb = self._thread_error = None
    self._tb_dir = os.path.join(workdir, 'tensorboard')
    if tensorboard:
      with writing(self._tb_dir):
        self._tb = tensorboardX.SummaryWriter(self._tb_dir, purge_step=resume_step, flush_secs=30,
                                 max_queue=1 << 30)
      self._previous_hook, threading.excepthook = threading.excepthook, self._thread_failed

  def _thread_failed(self, args) -> None:
    """`threading.excepthook` while open: TensorBoard's writer thread's OSError."""
    if (type(args.thread).__module__.startswith('tensorboardX')
        and isinstance(args.exc_value, OSError)):
      self._thread_error = args.exc_value
      logfile.FILE_ONLY.debug('TensorBoard writer thread failed', exc_info=(
          args.exc_type, args.exc_value, args.exc_traceback))
    else:
      self._previous_hook(args)

  def _tensorboard(self):
    """The SummaryWriter (None without one); `WriteError` if its thread failed."""
    if self._thread_error is not None:
      raise WriteError(self._tb_dir, self._thread_error)
    return self._tb

  def _write(self, jsonl: JsonlWriter, prefix: str, row: dict) -> None:
    """The row in its JSONL file and as TensorBoard scalars (after a check that
    TensorBoard's thread has not failed: then nothing is written)."""
    tb = self._tensorboard()
    jsonl.write(row)
    for k, v in row.items():
      if tb is None or k == 'step' or isinstance(v, (list, dict, str, bool)) or v is None:
        continue
      tb.add_scalar(f'{prefix}/{k}', float(v), row['step'])

  def write_train(self, row: dict) -> None:
    self._write(self.train, 'train', row)

  def write_eval(self, row: dict) -> None:
    self._write(self.eval, 'eval', row)

  def write_histograms(self, step: int, hists: dict[str, Iterable[float]]) -> None:
    if self._tensorboard() is None:
      return
    for name, values in hists.items():
      values = np.asarray(values)
      if values.size:
        self._tb.add_histogram(name, values, step)

  def close(self) -> None:
    self.train.close()
    self.eval.close()
    if self._tb is not None:
      threading.excepthook = self._previous_hook
      try:
        self._tb.close()
      except OSError:  # its last flush; a failed write was (or will be) reported
        logfile.FILE_ONLY.debug('closing TensorBoard failed', exc_info=True)


class WeightWindow:
  """The most recent per-example meta-weights, split by clean / noisy label.

  Weights are relative (`n × V_i`, mean 1 in a batch), so batches of any size
  and every method are on one scale. Examples with an unknown true label
  (true label -1) are left out.
  """

  def __init__(self, capacity: int):
    self.capacity = int(capacity)
    self.clean: list[np.ndarray] = []
    self.noisy: list[np.ndarray] = []
    self.since_eval = {'clean': [], 'noisy': []}

  def add(self, weights: np.ndarray, labels: np.ndarray, true_labels: np.ndarray):
    weights = np.asarray(weights, np.float64) * weights.shape[0]
    known = true_labels >= 0
    clean = weights[known & (labels == true_labels)]
    noisy = weights[known & (labels != true_labels)]
    for store, new in ((self.clean, clean), (self.noisy, noisy)):
      store.append(new)
    self.since_eval['clean'].append(clean)
    self.since_eval['noisy'].append(noisy)
    self._trim()

  def _trim(self):
    for store in (self.clean, self.noisy):
      while store and sum(a.size for a in store) - store[0].size >= self.capacity:
        store.pop(0)

  def arrays(self) -> tuple[np.ndarray, np.ndarray]:
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros((0,))
    return cat(self.clean)[-self.capacity:], cat(self.noisy)[-self.capacity:]

  def eval_stats(self) -> dict:
    """Mean weight of clean / noisy examples since the last call, and the AUC of
    the weights as a clean-vs-noisy detector (1 = every clean example weighs
    more than every noisy one; 0.5 = chance)."""
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros((0,))
    clean, noisy = cat(self.since_eval['clean']), cat(self.since_eval['noisy'])
    self.since_eval = {'clean': [], 'noisy': []}
    out = {}
    if clean.size:
      out['train_weight_clean'] = float(clean.mean())
    if noisy.size:
      out['train_weight_noisy'] = float(noisy.mean())
    if clean.size and noisy.size:
      out['train_weight_auc'] = auc(clean, noisy)
    return out

  def get_state(self) -> dict:
    """JSON-able contents (checkpointed with the data iterators)."""
    flat = lambda xs: np.concatenate(xs).tolist() if xs else []
    clean, noisy = self.arrays()  # the window itself, not the chunks trimmed so far
    return {'clean': clean.tolist(), 'noisy': noisy.tolist(),
            'since_eval_clean': flat(self.since_eval['clean']),
            'since_eval_noisy': flat(self.since_eval['noisy'])}

  def set_state(self, state: dict) -> None:
    arr = lambda k: [np.asarray(state.get(k, []), np.float64)]
    self.clean, self.noisy = arr('clean'), arr('noisy')
    self.since_eval = {'clean': arr('since_eval_clean'),
                       'noisy': arr('since_eval_noisy')}


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
  """P(a positive scores above a negative), ties count 1/2 (Mann-Whitney U)."""
  scores = np.concatenate([positive, negative])
  order = scores.argsort(kind='mergesort')
  ranks = np.empty(scores.size)
  sorted_scores = scores[order]
  # average ranks for ties
  _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
  avg = first + (counts - 1) / 2.0 + 1.0
  ranks[order] = np.repeat(avg, counts)
  n_pos, n_neg = positive.size, negative.size
  u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))



# per-example or per-layer values, flags
SCALAR_SKIP = PER_EXAMPLE_METRICS + ('gates', 'finite')
RELATIVE = ('weight_mean', 'weight_std', 'weight_clean', 'weight_noisy')
# Losses checked for NaN/Inf besides the 'finite' flag: the training loss, the
# meta step's validation loss and Algorithm 2's semi-supervised loss.
LOSS_KEYS = ('loss', 'val_loss', 'ssl_loss')


class StepMetrics:
  """Per-step device metrics -> checked host rows, averaged into log rows.

  Weight statistics are reported relative to uniform (× batch size); the
  recent weights go to `window` (a `WeightWindow`, which several networks
  may share) for the clean-vs-noisy histograms.
  """

  def __init__(self, batch_size: int, layer_names: Optional[list[str]],
               window: WeightWindow):
    self.pending: list[tuple] = []  # (step, device metrics, labels, true labels)
    self.rows: list[dict] = []  # host scalars of the steps since the last row
    self.batch_size = batch_size
    self.layer_names = layer_names
    self.window = window
    self.row_start = time.perf_counter()

  def add(self, step: int, metrics: dict, labels, true_labels):
    self.pending.append((step, metrics, labels, true_labels))

  def drain(self) -> Optional[int]:
    """Moves pending metrics to the host; returns the first non-finite step."""
    if not self.pending:
      return None
    fetched = jax.device_get([m for _, m, _, _ in self.pending])
    bad = first_non_finite(fetched, LOSS_KEYS)
    for (step, _, labels, true_labels), m in zip(self.pending[:bad], fetched[:bad]):
      if 'weights' in m:
        self.window.add(np.asarray(m['weights']), labels, true_labels)
      row = {'step': step}
      for k, v in m.items():
        if k not in SCALAR_SKIP:
          row[k] = float(v) * self.batch_size if k in RELATIVE else float(v)
      if 'gates' in m:
        row['gates'] = np.asarray(m['gates'], np.float64).tolist()
      self.rows.append(row)
    bad_step = None if bad is None else self.pending[bad][0]
    self.pending = []
    return bad_step

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

  def get_state(self) -> list[dict]:
    """The host rows since the last log row (checkpointed; the window apart)."""
    return self.rows

  def set_state(self, rows: list[dict]) -> None:
    self.rows = list(rows)
