"""Which per-example score finds the wrong labels best: candidates compared on a run.

One training run per method (the standard loop with `--config`, default
configs/digits.py: 40 % symmetric noise, MW-Net + FaMUS) records every visit
of every training example (its trust signal: MW-Net's relative meta-weight or
the corrected-label probability, its training loss and predicted class);
offline, each candidate score is computed from those visits with moving
averages of several decays and compared against the realised noise: ROC-AUC,
average precision, and precision / recall of the examples it flags (score > 0.5).

  python -m experiments.studies.label_issue_scores --quick     # digits, mwnet + ce, ~2 min
  python -m experiments.studies.label_issue_scores             # digits, + l2r and mlc
  python -m experiments.studies.label_issue_scores --config=configs/fashion_mnist.py \\
      --methods=mwnet                                   # Fashion-MNIST, ~5 min
  python -m experiments.studies.label_issue_scores --smoke      # seconds, tiny run
  python -m experiments.studies.label_issue_scores --from-workdir=/tmp/digits_alg2
      # a finished run's own record (any loop, e.g. Alg. 2 with its GMM term)
  python -m experiments.studies.label_issue_scores --cost       # ms the record adds per iteration

Writes experiments/results/label_issue_scores_<data>[_quick].{json,md,png}.
"""

from __future__ import annotations

import argparse
import ast
import logging
import os
import sys
import tempfile
import time

import jax
import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from experiments import common
from famus_jax import train
from famus_jax.analysis import label_issues as issues_lib
from famus_jax.analysis import record as record_lib
from famus_jax.analysis import runs as runs_lib
from famus_jax.training import config as config_lib
from famus_jax.training import sharding as sharding_lib
from famus_jax.training.hooks import Hook

DECAYS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 1.0)  # 0: the last visit only; 1: the mean of all
SMOKE = {'optim.unit': 'step', 'optim.num_epochs': 0, 'optim.num_steps': 12,
         'optim.boundaries': (10,), 'model.name': 'digits_mlp', 'meta.k': 2,
         'train.progress': False, 'train.eval_every': 0, 'train.checkpoint_every': 0}
QUICK = {'train.progress': False}


class Visits(Hook):
  """A trainer hook: every visit of the run (index, label, trust or NaN, loss,
  prediction), the trust by the method's signal as the record computes it."""

  def __init__(self):
    self.rows, self.signal = [], None

  def on_start(self, trainer) -> None:
    self.signal = record_lib.SIGNALS[str(trainer.config.meta.method)]

  def after_iteration(self, trainer, member, step, host, metrics) -> None:
    m = {k: np.asarray(v) for k, v in metrics.items()
         if k in ('weights', 'example_loss', 'prediction', 'val_loss')}
    n = host['index'].shape[0]
    trust = (np.asarray(self.signal.fn(m)) if all(k in m for k in self.signal.requires)
             else np.full((n,), np.nan))
    self.rows.append((np.asarray(host['index']), np.asarray(host['label']), trust,
                      m['example_loss'], m['prediction']))


def moving_averages(visits: Visits, num: int, decay: float) -> dict:
  """The record's averages at `decay`, replayed from the visits (numpy)."""
  rec = {k: np.zeros(num) for k in ('trust', 'confidence', 'disagreement')}
  count = {k: np.zeros(num, int) for k in rec}
  pred = np.full(num, -1)
  ema = lambda k, i, x: rec[k][i] + record_lib.average_rate(count[k][i], decay) * (
      x - rec[k][i])
  for index, label, trust, loss, prediction in visits.rows:
    has = ~np.isnan(trust)
    values = {'trust': trust, 'confidence': np.exp(-loss),
              'disagreement': (prediction != label).astype(float)}
    for k, x in values.items():
      i = index[has] if k == 'trust' else index
      x = x[has] if k == 'trust' else x
      rec[k][i] = ema(k, i, x)
      count[k][i] += 1
    pred[index] = prediction
  rec['trust_count'] = count['trust']
  rec['prediction'] = pred
  return rec


GMM_CANDIDATES = {'gmm': ('gmm',), 'trust+gmm': ('trust', 'gmm'),
                  'trust+disagreement+gmm': ('trust', 'disagreement', 'gmm')}
CANDIDATES = {
    'trust': ('trust',), 'confidence': ('confidence',), 'disagreement': ('disagreement',),
    'trust+disagreement': ('trust', 'disagreement'),
    'trust+confidence': ('trust', 'confidence'),
    'confidence+disagreement': ('confidence', 'disagreement'),
    'trust+confidence+disagreement': ('trust', 'confidence', 'disagreement'),
}


def candidates(rec: dict, method: str) -> dict:
  """Candidate scores (higher: more likely wrong), each in [0, 1]."""
  return {name: issues_lib.label_score(rec, method, parts)
          for name, parts in CANDIDATES.items()}


def evaluate(visits: Visits, given: np.ndarray, true: np.ndarray, method: str) -> dict:
  out = {}
  num = given.size
  for decay in DECAYS:
    rec = moving_averages(visits, num, decay)
    seen = rec['trust_count'] > 0
    noisy = (given != true)[seen]
    for name, score in candidates(rec, method).items():
      m = issues_lib.detection_metrics(score[seen], noisy)
      out.setdefault(name, {})[str(decay)] = {
          k: m.get(k) for k in ('roc_auc', 'average_precision', 'precision_at_k',
                                'recall_at_k', 'k', 'num_noisy', 'num_examples')}
  return out


def update_cost(num_examples: int = 59000, batch: int = 100, repeats: int = 300) -> dict:
  """Median ms of what the loop adds per iteration: the batch's index and
  labels to the devices, and the record's jitted update (synchronised)."""
  mesh = sharding_lib.make_mesh(1)
  rec = record_lib.ExampleRecord(num_examples, 'mwnet', 0.98, mesh)
  rng = np.random.default_rng(0)
  metrics = {'weights': jax.numpy.full((batch,), 1.0 / batch),
             'example_loss': jax.numpy.ones((batch,)),
             'prediction': jax.numpy.zeros((batch,), jax.numpy.int32)}
  times = []
  for i in range(repeats + 20):
    host = {'index': rng.choice(num_examples, batch, replace=False).astype(np.int32),
            'label': rng.integers(0, 10, batch).astype(np.int32)}
    t0 = time.perf_counter()
    b = sharding_lib.global_batch(host, mesh)
    rec.update(b['index'], b['label'], metrics)
    jax.block_until_ready(rec.state)
    if i >= 20:
      times.append((time.perf_counter() - t0) * 1e3)
  return {'num_examples': num_examples, 'batch': batch,
          'median_ms': float(np.median(times)), 'p90_ms': float(np.percentile(times, 90)),
          'load_average': os.getloadavg()}


def evaluate_workdir(workdir: str) -> dict:
  """Every candidate on the final record of a finished run (its own decay)."""
  config = runs_lib.read_config(workdir)
  method = str(config.meta.method)
  record, step = runs_lib.read_record(workdir)
  given, true = runs_lib.saved_labels(workdir)
  record = {k: v[:given.size] for k, v in record.items()}
  seen = record['trust_count'] > 0
  noisy = (given != true)[seen]
  names = {**CANDIDATES, **(GMM_CANDIDATES if 'gmm_clean_net1' in record else {})}
  out = {}
  for name, parts in names.items():
    m = issues_lib.detection_metrics(issues_lib.label_score(record, method, parts)[seen],
                                     noisy)
    out[name] = {str(float(config.train.label_ema)): m}
  return {'workdir': workdir, 'method': method, 'checkpoint': step, 'scores': out}


def run_method(config, method: str, workdir: str) -> dict:
  c = config_lib.load_config(config) if isinstance(config, str) else config
  c = c.copy_and_resolve_references()
  c.meta.method = method
  if method == 'mlc':  # its loss is a batch sum: a per-example rate (as digits_study)
    c.optim.lr = c.optim.lr / c.data.batch_size
  visits = Visits()
  summary = train.train_and_evaluate(c, workdir, hooks=[visits])
  noise = np.load(os.path.join(workdir, 'noisy_labels.npz'))
  return {'final_test_accuracy': summary['final_test_accuracy'],
          'label_issues': summary['label_issues'],
          'scores': evaluate(visits, noise['noisy_labels'], noise['true_labels'], method)}


def apply_overrides(c, overrides: dict) -> None:
  config_lib.with_fields(c, overrides)


def markdown(payload: dict) -> str:
  lines = [f"# Label-issue scores: {payload['config']} ({payload['mode']})", '',
           'ROC-AUC / average precision / precision@k, recall@k (k = flagged, score > 0.5)'
           ' of each candidate against the realised noise, per moving-average decay.', '']
  for method, res in payload['methods'].items():
    lines += [f"## {method} (final test accuracy {res['final_test_accuracy']:.4f})", '',
              '| score | ' + ' | '.join(f'decay {d}' for d in DECAYS) + ' |',
              '|---|' + '---|' * len(DECAYS)]
    for name, by_decay in res['scores'].items():
      cells = [f"{m['roc_auc']:.4f} / {m['average_precision']:.3f} / "
               f"{m['precision_at_k']:.3f}, {m['recall_at_k']:.3f}"
               for m in (by_decay[str(d)] for d in DECAYS)]
      lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    lines.append('')
  return '\n'.join(lines)


def plot(payload: dict, path: str) -> str:
  """ROC-AUC of each candidate against the decay, one panel per method."""
  matplotlib.use('Agg')
  methods = payload['methods']
  fig, axes = plt.subplots(1, len(methods), figsize=(5.5 * len(methods), 3.8), squeeze=False)
  for ax, (method, res) in zip(axes[0], methods.items()):
    for name, by_decay in res['scores'].items():
      ax.plot(DECAYS, [by_decay[str(d)]['roc_auc'] for d in DECAYS], marker='o',
              label=name, lw=2.5 if name == 'trust+disagreement' else 1)
    ax.set_xlabel('moving-average decay per visit (0: last visit, 1: mean)')
    ax.set_ylabel('ROC-AUC against the realised noise')
    ax.set_title(f"{payload['config']}: {method}", fontsize=9)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def main(argv=None):
  """The study (see the module docstring); famus_jax's info lines quiet meanwhile."""
  with common.quiet_logs(('famus_jax',), logging.WARNING):
    return _main(argv)


def _main(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--config', default=os.path.join('configs', 'digits.py'))
  p.add_argument('--methods', default=None,
                 help='default: mwnet,ce,l2r,mlc (quick: mwnet,ce; smoke: mwnet)')
  p.add_argument('--quick', action='store_true')
  p.add_argument('--smoke', action='store_true')
  p.add_argument('--set', nargs='*', default=[], help='config overrides FIELD=VALUE')
  p.add_argument('--from-workdir', default=None,
                 help='evaluate the candidates on this finished run instead of training')
  p.add_argument('--results-dir', default=common.RESULTS_DIR)
  p.add_argument('--cost', action='store_true', help='time the record update only')
  args = p.parse_args(argv)
  if args.cost:
    res = update_cost()
    print(res)
    return res
  if args.from_workdir:
    res = evaluate_workdir(args.from_workdir)
    for name, by_decay in res['scores'].items():
      (decay, m), = by_decay.items()
      print(f"{name:32s} decay {decay}: ROC-AUC {m['roc_auc']:.4f}, AP "
            f"{m['average_precision']:.4f}, precision@k {m['precision_at_k']:.3f}, "
            f"recall@k {m['recall_at_k']:.3f} (k {m['k']})")
    return res
  c = config_lib.load_config(args.config)
  mode = 'smoke' if args.smoke else 'quick' if args.quick else 'full'
  apply_overrides(c, SMOKE if args.smoke else QUICK if args.quick else {})
  apply_overrides(c, {k: ast.literal_eval(v) for k, v in (s.split('=', 1) for s in args.set)})
  payload = {'config': args.config, 'mode': mode, 'machine': common.machine(),
             'decays': DECAYS, 'overrides': args.set, 'methods': {}}
  methods = args.methods or {'smoke': 'mwnet', 'quick': 'mwnet,ce'}.get(
      mode, 'mwnet,ce,l2r,mlc')
  for method in methods.split(','):
    with tempfile.TemporaryDirectory() as workdir:
      payload['methods'][method] = run_method(c, method, workdir)
    print(markdown(payload), file=sys.stderr)
  name = f"label_issue_scores_{c.data.name}{'' if mode == 'full' else '_' + mode}"
  path = common.write_json(name + '.json', payload, args.results_dir)
  with open(os.path.join(args.results_dir, name + '.md'), 'w') as f:
    f.write(markdown(payload) + '\n')
  plot(payload, os.path.join(args.results_dir, name + '.png'))
  print(path)
  return payload


if __name__ == '__main__':
  main()
