"""Per-epoch analysis files of an Alg. 2 run.

`workdir/alg2_epochs.jsonl`: one row per epoch (phase, per-network training
metrics, GMM split quality against the true labels, test accuracy);
`workdir/gmm_precision_recall.png`: precision and recall of each network's
pseudo-clean set over the epochs, with the share of correct labels (the
precision of a random choice) and the test accuracy for reference.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from famus_jax.training import metrics as metrics_lib
from famus_jax.training import plots as plots_lib
from famus_jax.training.writes import writing

EPOCHS_FILE = 'alg2_epochs.jsonl'
PLOT_FILE = 'gmm_precision_recall.png'


class EpochLog:
  """Appends epoch rows; on resume keeps only the rows before `resume_epoch`."""

  def __init__(self, workdir: str, resume_epoch: Optional[int] = None):
    self.path = os.path.join(workdir, EPOCHS_FILE)
    rows = (metrics_lib.read_jsonl(self.path) if resume_epoch is not None else [])
    rows = [r for r in rows if r.get('epoch', 0) < (resume_epoch or 0)]
    tmp = self.path + '.tmp'
    with writing(self.path):
      with open(tmp, 'w') as f:
        for r in rows:
          f.write(json.dumps(r) + '\n')
      os.replace(tmp, self.path)
    self.rows = rows

  def write(self, row: dict) -> None:
    row = metrics_lib.jsonable(row)
    with writing(self.path), open(self.path, 'a') as f:
      f.write(json.dumps(row) + '\n')
    self.rows.append(row)

  def close(self) -> None:
    """Nothing to release (every row is written and closed at once)."""

  @staticmethod
  def read(workdir: str) -> list[dict]:
    """The rows of `workdir/alg2_epochs.jsonl` ([] when there is none)."""
    return metrics_lib.read_jsonl(os.path.join(workdir, EPOCHS_FILE))


def gmm_history(rows: list[dict]) -> list[dict]:
  """[{'epoch', 'net1': {precision, recall, ...}, 'net2': {...}}] of epochs with a split."""
  out = []
  for r in rows:
    g = {k: r[k]['gmm'] for k in ('net1', 'net2') if isinstance(r.get(k), dict)
         and r[k].get('gmm')}
    if g:
      out.append({'epoch': r['epoch'], **g})
  return out


def plot_precision_recall(path: str, rows: list[dict], title: str = '') -> Optional[str]:
  """The PNG of `gmm_precision_recall.png`; None when nothing to plot yet."""
  hist = gmm_history(rows)
  tests = [(r['epoch'] + 1, r['test_accuracy']) for r in rows
           if isinstance(r.get('test_accuracy'), (int, float))]
  if not hist and not tests:
    return None
  fig, ax = plots_lib.subplots(figsize=(7, 4.5))
  styles = {'net1': '-', 'net2': '--'}
  for net in ('net1', 'net2'):
    for key, color in (('precision', 'tab:blue'), ('recall', 'tab:orange')):
      pts = [(h['epoch'], h[net][key]) for h in hist
             if net in h and isinstance(h[net].get(key), (int, float))]
      if pts:
        e, v = zip(*pts)
        ax.plot(e, v, styles[net], color=color, marker='o', ms=3,
                label=f'{net} GMM {key}')
  base = [(h['epoch'], h[n]['clean_fraction']) for h in hist for n in ('net1',)
          if n in h and isinstance(h[n].get('clean_fraction'), (int, float))]
  if base:
    e, v = zip(*base)
    ax.plot(e, v, ':', color='gray', label='correct-label share (random choice)')
  cotrain = [r['epoch'] for r in rows if r.get('phase') == 'cotrain']
  if cotrain and cotrain[0] > 0:
    ax.axvline(cotrain[0] - 0.5, color='k', lw=0.8, alpha=0.5)
    ax.text(cotrain[0] - 0.4, 0.03, 'co-training from here', fontsize=8)
  if tests:
    e, v = zip(*tests)
    ax.plot(e, v, '-', color='tab:green', alpha=0.6, label='test accuracy (ensemble, after epoch)')
  ax.set_xlabel('epoch (split fitted at the start of the epoch)')
  ax.set_ylim(0, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc='lower right')
  ax.set_title(title or 'Pseudo-clean set vs true clean labels')
  return plots_lib.save(fig, path)


write_json = metrics_lib.write_json
