"""Digits: cross-entropy vs Algorithm 2 at several symmetric noise rates.

  python -m experiments.studies.alg2_compare_digits --noise=0.4,0.6 --seeds=0 \\
      --out=/tmp/alg2_digits.json [--workdir=/tmp/alg2_digits_runs] [--set k=v ...]

Both arms use configs/digits_alg2.py's model, data (no clean meta set), batch
size, epochs and learning-rate schedule. CE is one network trained by the
standard loop (`famus_jax.train`, plain cross-entropy: `meta.method=ce`); Alg. 2 co-trains two
networks, so it costs more than twice the compute of the CE arm: we report
each of its networks alone as well as their ensemble. `--set` overrides any
field of the Alg. 2 config (e.g. `--set meta.sampler=all`).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time

import ml_collections

from experiments import common
from famus_jax import train
from famus_jax.alg2 import config as alg2_config
from famus_jax.training import config as config_lib

CONFIG = os.path.join(common.REPO_ROOT, 'configs', 'digits_alg2.py')


def alg2_digits_config(noise: float, seed: int, overrides: dict | None = None):
  c = alg2_config.load_sibling('digits_alg2.py', CONFIG)
  c.data.noise_rate = float(noise)
  c.seed = int(seed)
  c.train.progress = False
  for k, v in (overrides or {}).items():
    config_lib.set_field(c, k, v)
  return c


def ce_config(alg2_cfg):
  """The same run without Algorithm 2: one network, plain cross-entropy."""
  d = copy.deepcopy(alg2_cfg.to_dict())
  d.pop('alg2')
  c = ml_collections.ConfigDict(d)
  c.algorithm = 'standard'
  c.meta.method = 'ce'  # (its meta.sampler is ignored)
  c.train.eval_every = 0
  c.train.checkpoint_every = 0
  c.train.log_every = 10
  c.train.eval_batch_size = c.data.eval_batch_size
  return c


def run_pair(noise: float, seed: int, workdir: str, overrides=None) -> dict:
  a_cfg = alg2_digits_config(noise, seed, overrides)
  t = time.perf_counter()
  ce = train.train_and_evaluate(ce_config(a_cfg), os.path.join(workdir, f'ce_{noise}_{seed}'))
  ce_s = time.perf_counter() - t
  t = time.perf_counter()
  a2 = train.train_and_evaluate(a_cfg, os.path.join(workdir, f'alg2_{noise}_{seed}'))
  a2_s = time.perf_counter() - t
  return {
      'noise_rate': noise, 'seed': seed,
      'realised_noise_rate': a2['data'].get('realised_noise_rate'),
      'epochs': a2['epochs'],
      'ce': {'test_accuracy': ce['final']['test_accuracy'],
             'best_test_accuracy': ce['best_test_accuracy'], 'wall_s': ce_s},
      'alg2': {'test_accuracy': a2['final']['test_accuracy'],
               'test_accuracy_net1': a2['final']['test_accuracy_net1'],
               'test_accuracy_net2': a2['final']['test_accuracy_net2'],
               'best_test_accuracy': a2['best_test_accuracy'], 'wall_s': a2_s,
               'gmm': a2['gmm']},
  }


def _value(s: str):
  try:
    return json.loads(s)
  except json.JSONDecodeError:
    return s


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--noise', default='0.4,0.6')
  p.add_argument('--seeds', default='0')
  p.add_argument('--out', default=None)
  p.add_argument('--workdir', default=None)
  p.add_argument('--set', action='append', default=[])
  args = p.parse_args(argv)
  overrides = {kv.split('=', 1)[0]: _value(kv.split('=', 1)[1]) for kv in args.set}
  workdir = args.workdir or tempfile.mkdtemp(prefix='alg2_digits_')
  results = []
  for noise in [float(x) for x in args.noise.split(',')]:
    for seed in [int(x) for x in args.seeds.split(',')]:
      r = run_pair(noise, seed, workdir, overrides)
      results.append(r)
      a = r['alg2']
      last = a['gmm'][-1] if a['gmm'] else {}
      prec = [last.get(n, {}).get('precision') for n in ('net1', 'net2')]
      print(f"noise {noise:.0%} seed {seed}: CE {r['ce']['test_accuracy']:.4f} | Alg. 2 "
            f"ensemble {a['test_accuracy']:.4f} (net1 {a['test_accuracy_net1']:.4f}, "
            f"net2 {a['test_accuracy_net2']:.4f}); last GMM precision {prec}", flush=True)
  payload = {'overrides': overrides, 'workdir': workdir, 'results': results}
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(payload, f, indent=1)
  return payload


if __name__ == '__main__':
  main()
