"""Measured effect of each switchable departure from the paper or the official codes.

Every variant is configs/digits.py (MW-Net + FaMUS, 40 % symmetric noise, 760
iterations) with a few fields changed; the seeds are shared, so each variant's
difference to `ours` (the config as it is) is paired per seed. The README's
fidelity table quotes the table this prints.

  python -m experiments.studies.fidelity_digits --seeds=0,1,2
  python -m experiments.studies.fidelity_digits --quick          # 2 epochs, seed 0
  python -m experiments.studies.fidelity_digits --smoke          # 4 iterations (the test's)
  python -m experiments.studies.fidelity_digits --variants=ours,sampler_depth2 --seeds=3,4 --merge

Writes experiments/results/fidelity_digits.json (fidelity_digits_quick.json
with --quick): per run the final and best clean test accuracy, the meta-weight
AUC, the mean number of selected layers and the wall time; per variant the
mean, the standard deviation and the paired difference to `ours`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time

import ml_collections

from experiments import common
from famus_jax import train
from famus_jax.training.config import load_config, with_fields

CONFIG = os.path.join(common.REPO_ROOT, 'configs', 'digits.py')

# name -> (config overrides, what the variant is)
VARIANTS = {
    'ours': ({}, 'configs/digits.py as it is'),
    'sampler_depth2': ({'meta.sampler_depth': 2},
                       "the paper's two-layer sampler (FC1 + PReLU, FC2)"),
    'sampler_input_pooled': ({'meta.sampler_input': 'pooled'},
                             "the paper's sampler input: pooled gradient, not standardised"),
    'gate_surrogate_official': ({'meta.gate_surrogate': 'official'},
                                "the official code's (1 − r)·g: off layers' gate gradient negated"),
    'meta_sgd_nesterov': ({'meta.optimizer': 'sgd', 'meta.momentum': 0.9,
                           'meta.nesterov': True, 'meta.weight_decay': 5e-4},
                          'meta optimiser of the official WRN-28-10 MW-Net and FaMUS codes'),
    'base_nesterov': ({'optim.nesterov': True},
                      'Nesterov base optimiser (official WRN-28-10 MW-Net and FaMUS codes)'),
    'scopes4_gate_grad_scope': ({'meta.prune_levels': 4},
                                "4 nested scopes, gate_grad='scope' (default)"),
    'scopes4_gate_grad_all': ({'meta.prune_levels': 4, 'meta.gate_grad': 'all'},
                              "4 nested scopes, gate_grad='all' (every layer's gate gradient)"),
    'granularity_tensor': ({'meta.granularity': 'tensor'},
                           "one sampler per parameter tensor, as the official code's"),
    'exact': ({'meta.sampler': 'all'}, 'exact MW-Net (every layer), for reference'),
    'l2r_famus': ({'meta.method': 'l2r'},
                  'L2R + FaMUS, the sampler reading the mean training gradient (ours)'),
    'l2r_famus_zero_input': ({'meta.method': 'l2r',
                              'meta.model_kwargs': ml_collections.ConfigDict(
                                  {'zero_lookahead': False})},
                             "L2R + FaMUS, the sampler reading Eq. 8's look-ahead gradient "
                             '(zero at ε = 0)'),
}
# variant -> the variant its paired difference is taken to (default `ours`)
REFERENCE = {'l2r_famus_zero_input': 'l2r_famus'}
QUICK = {'optim.num_epochs': 2, 'optim.boundaries': (), 'train.eval_every': 0,
         'train.checkpoint_every': 0}
SMOKE = {'model.name': 'digits_mlp', 'model.kwargs': ml_collections.ConfigDict(
             {'width': 16, 'depth': 2}), 'meta.k': 2, 'data.batch_size': 32, 'optim.unit': 'step', 'optim.num_epochs': 0, 'optim.num_steps': 4,
         'optim.boundaries': (), 'train.eval_every': 0, 'train.checkpoint_every': 0,
         'train.log_every': 2}


def run_variant(name: str, seed: int, size: dict) -> dict:
  """One training run of variant `name` (`size`: QUICK, SMOKE or {})."""
  config = load_config(CONFIG)
  config.seed = seed
  config.train.progress = False
  with_fields(config, {**VARIANTS[name][0], **size})
  workdir = tempfile.mkdtemp(prefix=f'fidelity_{name}_{seed}_')
  start = time.perf_counter()
  try:
    summary = train.train_and_evaluate(config, workdir)
  finally:
    wall = time.perf_counter() - start
    shutil.rmtree(workdir, ignore_errors=True)
  final, last = summary['final'], summary['last_train_row'] or {}
  return {'variant': name, 'seed': seed, 'final_test_accuracy': final['test_accuracy'],
          'best_test_accuracy': summary['best_test_accuracy'],
          'train_weight_auc': final.get('train_weight_auc'),
          'num_selected': last.get('num_selected'), 'wall_s': round(wall, 1)}


def summarize(runs: list[dict]) -> dict:
  """Per variant: mean and std of the final accuracy, paired difference to `ours`."""
  by = {}
  for r in runs:
    by.setdefault(r['variant'], {})[r['seed']] = r['final_test_accuracy']
  table = {}
  for name, accs in by.items():
    reference = REFERENCE.get(name, 'ours')
    base = by.get(reference, {})
    vals = [accs[s] for s in sorted(accs)]
    row = {'seeds': sorted(accs), 'mean': statistics.mean(vals),
           'std': statistics.stdev(vals) if len(vals) > 1 else 0.0,
           'description': VARIANTS[name][1]}
    diffs = [accs[s] - base[s] for s in sorted(accs) if s in base]
    if name != reference and diffs:
      row['paired_to'] = reference
      row['paired_diff_mean'] = statistics.mean(diffs)
      row['paired_diff_std'] = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    table[name] = row
  return table


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--variants', default=','.join(VARIANTS))
  parser.add_argument('--quick', action='store_true', help='2 epochs, seed 0 only')
  parser.add_argument('--smoke', action='store_true', help='4 iterations, seed 0 (tests)')
  parser.add_argument('--results-dir', default=common.RESULTS_DIR)
  parser.add_argument('--merge', action='store_true',
                      help='add to (replace the same variant and seed in) the existing JSON')
  args = parser.parse_args(argv)
  names = args.variants.split(',')
  unknown = sorted(set(names) - set(VARIANTS))
  if unknown:
    parser.error(f'unknown variant(s) {unknown}; known: {", ".join(VARIANTS)}')
  mode = 'smoke' if args.smoke else 'quick' if args.quick else 'full'
  size = {'smoke': SMOKE, 'quick': QUICK, 'full': {}}[mode]
  seeds = [0] if size else [int(s) for s in args.seeds.split(',')]
  out_name = 'fidelity_digits' + ('' if mode == 'full' else f'_{mode}')
  path = os.path.join(args.results_dir, out_name + '.json')
  runs = common.load_runs(path) if args.merge else []
  for seed in seeds:  # seeds outermost: an interrupted study has whole seeds
    for name in names:
      row = run_variant(name, seed, size)
      print(json.dumps(row), flush=True)
      runs = common.replace_run(runs, row, keys=('variant', 'seed'))
  table = summarize(runs)
  for name, row in table.items():
    diff = (f"  {row['paired_diff_mean']:+.4f} ± {row['paired_diff_std']:.4f} "
            f"vs {row['paired_to']}" if 'paired_diff_mean' in row else '')
    print(f"{name:26s} {row['mean']:.4f} ± {row['std']:.4f}{diff}")
  common.write_json(out_name + '.json', {'config': 'configs/digits.py', 'mode': mode,
                                         'machine': common.machine(), 'runs': runs,
                                         'table': table}, args.results_dir)


if __name__ == '__main__':
  main()
