"""CE vs MW-Net (exact) vs MW-Net + FaMUS on digits with 40 % symmetric noise.

Same config (configs/digits.py: model, data, schedule, budget) for every
method; only `meta.method` / `meta.sampler` change. Several seeds (the seed
draws the noise, the meta set, the initialisation and the batch order).

  python experiments/digits_comparison.py --seeds=0,1,2
  python experiments/digits_comparison.py --seeds=0 --override optim.num_steps=300

Writes experiments/results/digits_comparison.json (per run: final and best
clean test accuracy, meta-weight AUC, wall time).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

VARIANTS = {
    'ce': {'meta.method': 'ce', 'meta.sampler': 'all'},
    'mwnet': {'meta.method': 'mwnet', 'meta.sampler': 'all'},
    'mwnet_famus': {'meta.method': 'mwnet', 'meta.sampler': 'famus'},
}


def _set(config, dotted, value):
  node = config
  *parents, last = dotted.split('.')
  for p in parents:
    node = node[p]
  node[last] = type(node[last])(value) if not isinstance(value, type(node[last])) \
      and node[last] is not None and not isinstance(node[last], tuple) else value


def _parse(value):
  try:
    return json.loads(value)
  except json.JSONDecodeError:
    return value


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--variants', default=','.join(VARIANTS))
  parser.add_argument('--override', action='append', default=[],
                      help='field=value, e.g. optim.num_steps=300 (JSON values)')
  parser.add_argument('--out', default=os.path.join(os.path.dirname(__file__), 'results',
                                                    'digits_comparison.json'))
  args = parser.parse_args()

  import importlib.util  # pylint: disable=g-import-not-at-top
  from famus_jax import train  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      'digits_config', os.path.join(os.path.dirname(__file__), '..', 'configs', 'digits.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)

  runs = []
  for variant in args.variants.split(','):
    for seed in [int(s) for s in args.seeds.split(',')]:
      config = mod.get_config()
      config.seed = seed
      config.train.progress = False
      for k, v in VARIANTS[variant].items():
        _set(config, k, v)
      for item in args.override:
        k, v = item.split('=', 1)
        v = _parse(v)
        _set(config, k, tuple(v) if isinstance(v, list) else v)
      workdir = tempfile.mkdtemp(prefix=f'digits_{variant}_{seed}_')
      start = time.perf_counter()
      summary = train.train_and_evaluate(config, workdir)
      wall = time.perf_counter() - start
      final = summary['final']
      run = {'variant': variant, 'seed': seed,
             'final_test_accuracy': final['test_accuracy'],
             'best_test_accuracy': summary['best_test_accuracy'],
             'train_weight_auc': final.get('train_weight_auc'),
             'train_weight_clean': final.get('train_weight_clean'),
             'train_weight_noisy': final.get('train_weight_noisy'),
             'steps_per_s': summary['steps_per_s'], 'wall_s': wall}
      print(json.dumps(run), flush=True)
      runs.append(run)
      shutil.rmtree(workdir, ignore_errors=True)

  table = {}
  for variant in args.variants.split(','):
    accs = [r['final_test_accuracy'] for r in runs if r['variant'] == variant]
    table[variant] = {'mean_final_test_accuracy': sum(accs) / len(accs),
                      'final_test_accuracies': accs}
  for v, row in table.items():
    print(f"{v:12s} {row['mean_final_test_accuracy']:.4f}  {row['final_test_accuracies']}")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump({'overrides': args.override, 'runs': runs, 'table': table}, f, indent=2)


if __name__ == '__main__':
  main()
