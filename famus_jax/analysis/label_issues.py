"""Which labels are wrong: a score per training example from its record
(`famus_jax.analysis.record`), the ranked table, and how well the score finds
the realised noise.

The score of an example is in [0, 1], higher when its given label is more
likely wrong: the mean of

- the method's trust as a probability that the label is wrong, 0.5 at the
  neutral point: 1 / (1 + w̄) for MW-Net's and L2R's average relative
  meta-weight w̄ (the uniform weight 1 gives 0.5, weight 0 gives 1); 1 − p̄ for
  MLC's average corrected-label probability and plain cross-entropy's average
  probability p̄ of the given label;
- the average disagreement d̄: how often the network predicted another class
  than the given label at the example's visits;
- with Algorithm 2, 1 − the mean of both networks' last GMM clean probabilities.

A label is flagged when its score is above 0.5 (MW-Net: 1 / (1 + w̄) + d̄ > 1;
e.g. a weight below uniform and a disagreement at over half the visits). The
averages are exponential over the visits (`train.label_ema`, 0.98 by default).
Why this score: experiments/studies/label_issue_scores.py compares the candidates
(README, "Which labels are wrong").
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Optional

import numpy as np
from sklearn import metrics as sk_metrics

from famus_jax.analysis import record as record_lib
from famus_jax.training.writes import writing

CSV_FILE = 'label_issues.csv'
CSV_COLUMNS = ('rank', 'index', 'given_label', 'predicted_label', 'score')


@dataclasses.dataclass(frozen=True)
class LabelIssueTable:
  """Training examples ranked by how likely their given label is wrong.

  Row r (rank r + 1) of every array is the r-th most suspicious example; only
  examples the run visited are ranked.

  Attributes:
    index: position in the training split (the batches' 'index').
    given_label: the label the example was trained with.
    predicted_label: the class the network predicted at its last visit.
    score: in [0, 1], higher = more likely wrong; > 0.5 flags the label.
    rank: 1 = most suspicious.
    true_label: the true label where known (synthetic noise), else -1; None
      when no true label is known.
    metrics: with known true labels, how well `score` finds the examples whose
      given label differs from the true one (`detection_metrics`), else None.
    num_unvisited: training examples never visited, not ranked.
    score_definition: the score's formula in words.
  """
  index: np.ndarray
  given_label: np.ndarray
  predicted_label: np.ndarray
  score: np.ndarray
  rank: np.ndarray
  true_label: Optional[np.ndarray]
  metrics: Optional[dict]
  num_unvisited: int
  score_definition: str

  def __len__(self) -> int:
    return int(self.index.size)

  @property
  def flagged(self) -> np.ndarray:
    """Whether each row's label is flagged as wrong (score > 0.5)."""
    return self.score > 0.5


# The method's average trust as a probability that the label is wrong, 0.5 at
# the neutral point, by the signal's scale (`record.Signal.scale`): 1 / (1 + w̄)
# for a relative meta-weight (the uniform weight 1 gives 0.5, weight 0 gives 1),
# 1 − p̄ for a probability.
TRUST_TO_SCORE = {
    'weight': lambda trust: 1.0 / (1.0 + np.maximum(trust, 0.0)),
    'probability': lambda trust: 1.0 - trust,
}
assert set(TRUST_TO_SCORE) == set(record_lib.SCALES)


def trust_score(trust: np.ndarray, scale: str) -> np.ndarray:
  return TRUST_TO_SCORE[scale](trust)


def gmm_score(record: dict) -> Optional[np.ndarray]:
  """Algorithm 2: 1 − the mean of the networks' last GMM clean probabilities
  (None without them; examples outside every pool get 0.5)."""
  probs = [record[k] for k in record_lib.GMM_FIELDS.values() if k in record]
  if not probs:
    return None
  probs = np.stack(probs)
  valid = probs >= 0
  count = valid.sum(0)
  mean = np.where(count > 0, np.where(valid, probs, 0).sum(0) / np.maximum(count, 1), 0.5)
  return 1.0 - mean


# The score's components, each in [0, 1] (higher: more likely wrong); a
# component that returns None (no GMM fields) is left out.
COMPONENTS = {
    'trust': lambda record, signal: trust_score(record['trust'], signal.scale),
    'disagreement': lambda record, signal: record['disagreement'],
    'confidence': lambda record, signal: 1.0 - record['confidence'],
    'gmm': lambda record, signal: gmm_score(record),
}
SCORE = ('trust', 'disagreement', 'gmm')  # averaged (those the record has)


def score_definition(method: str, record: dict, components=SCORE) -> str:
  """The score's formula for `method`'s record, in words (for summary.json)."""
  signal = record_lib.SIGNALS[method]
  words = {
      'trust': (f'1/(1 + w), w the average relative {signal.name}'
                if signal.scale == 'weight' else f'1 - p, p the average {signal.name}'),
      'disagreement': 'the average disagreement of predicted and given label',
      'confidence': '1 - the average probability of the given label',
      'gmm': '1 - the mean GMM clean probability of the two networks',
  }
  used = [n for n in components if n != 'gmm' or gmm_score(record) is not None]
  return 'mean of: ' + '; '.join(words[n] for n in used)


def label_score(record: dict, method: str, components=SCORE) -> np.ndarray:
  """The mean of the `components` the record has (see `COMPONENTS`)."""
  signal = record_lib.SIGNALS[method]
  parts = [COMPONENTS[name](record, signal) for name in components]
  parts = [np.asarray(p, np.float64) for p in parts if p is not None]
  return np.mean(parts, axis=0)


def detection_metrics(score: np.ndarray, noisy: np.ndarray) -> dict:
  """How well `score` finds the wrong labels (`noisy`, boolean).

  k: the number of flagged labels (score > 0.5); precision_at_k, recall_at_k:
  of the k highest scores; roc_auc; average_precision; num_noisy.
  """
  noisy = np.asarray(noisy, bool)
  order = np.argsort(-score, kind='stable')
  k = int(np.sum(score > 0.5))
  top = np.zeros_like(noisy)
  top[order[:k]] = True
  out = {'num_examples': int(noisy.size), 'num_noisy': int(noisy.sum()), 'k': k,
         'precision_at_k': float(sk_metrics.precision_score(noisy, top, zero_division=0)),
         'recall_at_k': float(sk_metrics.recall_score(noisy, top, zero_division=0))}
  if 0 < noisy.sum() < noisy.size:
    out['roc_auc'] = float(sk_metrics.roc_auc_score(noisy, score))
    out['average_precision'] = float(sk_metrics.average_precision_score(noisy, score))
  return out


def rank_label_issues(record: dict, given: np.ndarray,
                      true: Optional[np.ndarray] = None, *, method: str = 'mwnet'
                      ) -> LabelIssueTable:
  """The table of a host record (`famus_jax.analysis.record`) of a training
  split with `given` labels and, where known (>= 0), `true` labels."""
  given = np.asarray(given)
  visited = np.flatnonzero(record['trust_count'] > 0)
  score = label_score({k: v[visited] for k, v in record.items()}, method)
  order = np.argsort(-score, kind='stable')
  index = visited[order]
  true_rows = None if true is None else np.asarray(true)[index]
  known = None if true_rows is None else true_rows >= 0
  metrics = None
  if known is not None and known.any():
    metrics = detection_metrics(score[order][known], (given[index] != true_rows)[known])
  elif known is not None:
    true_rows = None
  return LabelIssueTable(
      index=index, given_label=given[index], predicted_label=record['prediction'][index],
      score=score[order], rank=np.arange(1, index.size + 1), true_label=true_rows,
      metrics=metrics, num_unvisited=int(given.size - visited.size),
      score_definition=score_definition(method, record))


def write_csv(path: str, table: LabelIssueTable) -> None:
  """The table as CSV, one row per ranked example (with `true_label` when known),
  written atomically."""
  columns = CSV_COLUMNS + (('true_label',) if table.true_label is not None else ())
  tmp = path + '.tmp'
  with writing(path), open(tmp, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(columns)
    for r in range(len(table)):
      row = [int(table.rank[r]), int(table.index[r]), int(table.given_label[r]),
             int(table.predicted_label[r]), f'{table.score[r]:.6f}']
      if table.true_label is not None:
        row.append(int(table.true_label[r]))
      w.writerow(row)
  with writing(path):
    os.replace(tmp, path)


def summary_entry(table: LabelIssueTable) -> dict:
  """The summary.json entry: counts and, with known true labels, the metrics."""
  return {'file': CSV_FILE, 'score': table.score_definition, 'num_ranked': len(table),
          'num_flagged': int(table.flagged.sum()), 'num_unvisited': table.num_unvisited,
          **({'metrics': table.metrics} if table.metrics else {})}


def describe(entry: dict) -> str:
  """One line: what was flagged and, with known true labels, how well."""
  text = (f"label issues: {entry['num_flagged']:,} of {entry['num_ranked']:,} training "
          "labels flagged (score > 0.5)")
  m = entry.get('metrics')
  if m and 'roc_auc' in m:
    text += (f"; against the realised noise ({m['num_noisy']:,} wrong labels): ROC-AUC "
             f"{m['roc_auc']:.4f}, average precision {m['average_precision']:.4f}, "
             f"precision@k {m['precision_at_k']:.4f} and recall@k {m['recall_at_k']:.4f} "
             f"(k = {m['k']:,}, the flagged)")
  return text


def top_lines(table: LabelIssueTable, top: int, name=str) -> list[str]:
  """The first `top` rows as aligned text lines."""
  lines = []
  for r in range(min(int(top), len(table))):
    line = (f"  #{table.rank[r]:<5d} index {table.index[r]:<7d} score {table.score[r]:.3f}"
            f"  given {name(int(table.given_label[r]))} → predicted "
            f"{name(int(table.predicted_label[r]))}")
    if table.true_label is not None and table.true_label[r] >= 0:
      line += f"  (true {name(int(table.true_label[r]))})"
    lines.append(line)
  return lines
