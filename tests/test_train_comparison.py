"""MW-Net + FaMUS, the quickstart config as shipped (configs/digits.py: the
paper's CIFAR recipe in digits epochs, not tuned per method), beats plain
cross-entropy with the same budget on digits with 40 % symmetric noise, on
seed 0; its meta-weights separate clean from noisy labels, and both runs'
label-issue scores find the realised noise (ROC-AUC >= 0.9). On every one of
the five seeds of the table below MW-Net + FaMUS is at least 0.13 above CE
(0.17 on the same seed), so one seed with a 0.10 margin tests the claim.
Exact MW-Net (at about 3x a plain iteration) is left to the study, and its
meta gradient to tests/test_core.py.

The full table for seeds 0–4 (experiments/results/digits_comparison.json) is
CE 0.734, MW-Net 0.940, MW-Net + FaMUS 0.930 mean final clean test accuracy;
`python -m experiments.paper.digits_study --methods=ce,mwnet,mwnet_famus
--settings=sym40 --seeds=0,1,2,3,4` runs the same rows.
"""

import json
import os
import re

import pytest

from famus_jax import train
from famus_jax.training import config as config_lib
from test_train_support import DIGITS

SEED = 0


def _final_accuracy(tmp_path, method, sampler, seed):
  c = config_lib.load_config(DIGITS)
  c.seed = seed
  c.meta.method, c.meta.sampler = method, sampler
  c.train.progress = False
  c.train.eval_every = 0
  c.train.checkpoint_every = 0
  c.train.log_every = 380
  summary = train.train_and_evaluate(c, str(tmp_path / f'{method}_{sampler}_{seed}'))
  return (summary['final_test_accuracy'], summary['final'].get('train_weight_auc'),
          summary['label_issues']['metrics']['roc_auc'])


def test_docstring_quotes_the_committed_table():
  """The numbers above are the committed JSON's means (rounded to 3 digits)."""
  path = os.path.join(os.path.dirname(__file__), '..', 'experiments', 'results',
                      'digits_comparison.json')
  with open(path) as f:
    table = json.load(f)['table']
  quoted = re.search(r'CE ([0-9.]+), MW-Net\s+([0-9.]+), MW-Net \+ FaMUS ([0-9.]+)', __doc__)
  assert quoted, __doc__
  means = [table[k]['mean_final_test_accuracy'] for k in ('ce', 'mwnet', 'mwnet_famus')]
  assert [float(x) for x in quoted.groups()] == [round(m, 3) for m in means]


@pytest.mark.slow
def test_famus_beats_ce_at_40_percent_noise(tmp_path):
  results = {name: _final_accuracy(tmp_path, method, sampler, SEED)
             for name, method, sampler in (('ce', 'ce', 'all'), ('famus', 'mwnet', 'famus'))}
  acc, auc, issues_auc = ({k: r[i] for k, r in results.items()} for i in range(3))
  print(acc, auc, issues_auc)
  assert acc['famus'] > acc['ce'] + 0.10, acc
  assert auc['famus'] > 0.8, auc  # the meta-weights separate clean from noisy labels
  # Which labels are wrong: the label-issue score of both runs finds the realised
  # noise (label_issues.csv, ROC-AUC against the true labels).
  assert all(issues_auc[k] >= 0.9 for k in ('famus', 'ce')), issues_auc
