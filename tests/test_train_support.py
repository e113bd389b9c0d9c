"""Helpers (no tests) shared by the training-system tests: small digits configs
with cheap compiles, and checks of the files a run leaves."""

import json
import os

import contextlib

import jax
import ml_collections

from famus_jax.training import config as config_lib

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
DIGITS = os.path.join(REPO, 'configs', 'digits.py')

# The same settings as command-line overrides of configs/digits.py.
TINY_FLAGS = {
    'model.name': 'digits_mlp', 'model.kwargs.width': 16, 'model.kwargs.depth': 2,
    'data.batch_size': 32, 'data.meta_batch_size': 20, 'data.eval_batch_size': 150,
    'optim.unit': 'step', 'optim.num_epochs': 0, 'optim.num_steps': 8,
    'optim.boundaries': '(3,)', 'meta.k': 2, 'meta.s': 2,
    'train.log_every': 2, 'train.eval_every': 4, 'train.checkpoint_every': 4,
    'train.progress': False,
}


def tiny_config(method='mwnet', sampler='all', steps=8, **overrides):
  """configs/digits.py with a 3-layer MLP and a few steps.

  The learning rate drops at step 3 whatever `steps` is (> 3; as in TINY_FLAGS):
  the schedule is compiled into the programs, so runs of any length share them
  through the session's compilation cache."""
  c = config_lib.load_config(DIGITS)
  c.model.name = 'digits_mlp'
  c.model.kwargs = ml_collections.ConfigDict({'width': 16, 'depth': 2})
  c.data.batch_size = 32
  c.data.meta_batch_size = 20
  c.data.eval_batch_size = 150
  c.optim.unit, c.optim.num_epochs, c.optim.num_steps = 'step', 0, steps
  c.optim.boundaries = (3,) if steps > 3 else ()
  c.meta.method, c.meta.sampler, c.meta.k, c.meta.s = method, sampler, 2, 2
  c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 2, 4, 4
  c.train.progress = False
  return config_lib.with_fields(c, {k.replace('__', '.'): v for k, v in overrides.items()})


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def check_run_files(workdir, num_steps, method):
  """The files a finished run leaves, with finite losses; returns (summary, rows)."""
  for name in ('config.json', 'metrics.jsonl', 'eval.jsonl', 'summary.json',
               'learning_curves.png'):
    assert os.path.isfile(os.path.join(workdir, name)), name
  assert any(f.startswith('events') for f in os.listdir(os.path.join(workdir,
                                                                     'tensorboard')))
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  assert summary['status'] == 'completed' and summary['step'] == num_steps
  rows = read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  assert rows and rows[-1]['step'] == num_steps
  for r in rows:
    assert all(isinstance(r[k], float) for k in ('loss', 'lr', 'step_time_s'))
    assert r['loss'] == r['loss'] and abs(r['loss']) < 1e6  # finite
    if method != 'ce':
      assert 'weight_clean' in r and 'weight_noisy' in r
  evals = read_jsonl(os.path.join(workdir, 'eval.jsonl'))
  assert evals[-1]['step'] == num_steps and 0.0 <= evals[-1]['test_accuracy'] <= 1.0
  steps = os.listdir(os.path.join(workdir, 'checkpoints'))
  assert str(num_steps) in steps
  # every train-loop function compiled at most once, the used ones exactly once
  assert summary['compiled']['eval'] == 1
  assert all(v <= 1 for v in summary['compiled'].values()), summary['compiled']
  used = ['plain'] if method == 'ce' else [k for k in summary['compiled'] if k.startswith('meta')]
  assert used and max(summary['compiled'][k] for k in used) == 1, summary['compiled']
  return summary, rows


@contextlib.contextmanager
def compilation_cache(directory):
  """Runs of the same config share compiled programs (identical HLO) through
  jax's persistent compilation cache in `directory`, restored afterwards."""
  keys = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs',
          'jax_persistent_cache_min_entry_size_bytes')
  old = {k: jax.config.values[k] for k in keys}
  jax.config.update('jax_compilation_cache_dir', str(directory))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  try:
    yield
  finally:
    for k, v in old.items():
      jax.config.update(k, v)
