"""The run harness (`famus_jax.training.run`) on its own: resume guard, NaN
stop, evaluation over padded batches, per-process writing, the method
strategies; and Algorithm 2 on two forced CPU devices."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from famus_jax import data as data_lib
from famus_jax import meta_models
from famus_jax import train
from famus_jax.training import checks
from famus_jax.training import metrics as metrics_lib
from famus_jax.training import run as run_lib
from famus_jax.training import strategies
from famus_jax.training.config import ConfigError
from test_train_support import tiny_config

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))


def test_resume_guard(tmp_path):
  c = tiny_config()
  with run_lib.Run(c, str(tmp_path)) as run:
    run.dir.write_config()
  with run_lib.Run(c, str(tmp_path)):  # the same config: resumes
    pass
  c.train.log_every = 3  # train.* may change on resume
  with run_lib.Run(c, str(tmp_path)):
    pass
  c.optim.lr = 0.2
  with pytest.raises(ConfigError, match=r'holds a run with a different config '
                     r'\(config.optim.lr\); use a new workdir'):
    with run_lib.Run(c, str(tmp_path)):
      pass
  with run_lib.Run(c, str(tmp_path), resumable=('optim.lr',)):  # declared resumable
    pass


def test_nan_stop_names_step_and_checkpoint_and_writes_summary(tmp_path):
  rows = [{'loss': 1.0, 'finite': True}, {'loss': 0.5, 'finite': True},
          {'loss': 0.4, 'finite': False},  # NaN parameters, finite loss
          {'loss': np.nan}]
  first_non_finite = metrics_lib.first_non_finite
  assert first_non_finite(rows) == 2
  assert first_non_finite(rows[:2] + rows[3:]) == 2
  assert first_non_finite([{'loss': 1.0, 'ssl_loss': np.inf}]) is None
  assert first_non_finite([{'loss': 1.0, 'ssl_loss': np.inf}], ('loss', 'ssl_loss')) == 0
  with pytest.raises(checks.NonFiniteLossError,
                     match='at step 12; stopped, the last good checkpoint is step 7'):
    with run_lib.Run(tiny_config(), str(tmp_path)) as run:
      run.ckpt.save(7, {'w': jnp.ones(3)}, {})
      run.guard.check_step(None)  # all finite: nothing happens
      run.guard.check_step(10 + first_non_finite(rows))
  with open(tmp_path / 'summary.json') as f:
    summary = json.load(f)
  assert summary['status'] == 'non_finite' and summary['step'] == 12


def test_evaluate_pads_the_last_batch_and_compiles_once(tmp_path):
  n, bs = 10, 4  # batches of 4, 4 and 2 (+ 2 padding rows)
  images = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1) + 1.0
  labels = np.arange(n, dtype=np.int32) % 3
  source = data_lib.ArraySource(images, labels)
  shapes = []

  def sums(scale, batch):
    shapes.append(batch['image'].shape)
    mask = batch['mask'].astype(jnp.float32)
    return {'image': scale * jnp.sum(batch['image'][:, 0, 0, 0] * mask),
            'label': jnp.sum(batch['label'] * mask), 'count': jnp.sum(mask)}

  fn = jax.jit(sums)
  with run_lib.Run(tiny_config(), str(tmp_path)) as run:
    totals = run.evaluate(fn, (2.0,), source, bs)
  assert totals == {'image': 2.0 * images.sum(), 'label': float(labels.sum()),
                    'count': float(n)}
  assert run_lib.means(totals) == {'image': 2.0 * images.sum() / n,
                                   'label': labels.sum() / n}
  assert shapes == [(bs, 1, 1, 1)] and checks.compile_count(fn) == 1
  padded = list(run_lib.padded_batches(source, bs, tiny_config().data))
  assert [k for _, k in padded] == [4, 4, 2]
  last = padded[-1][0]
  assert last['mask'].tolist() == [True, True, False, False]
  assert last['index'][:2].tolist() == [8, 9]


def test_only_process_zero_writes(tmp_path, monkeypatch):
  c = tiny_config()
  made = []
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  with run_lib.Run(c, str(tmp_path / 'p1')) as run:
    assert not run.is_main
    run.dir.write_config()
    assert run.out.writer(lambda: made.append(1)) is None
    c.train.progress = True
    assert run.out.progress(10, 0, 'x') is None
    run.out.write_summary({'status': 'completed'})
  assert not {'config.json', 'summary.json'} & set(os.listdir(tmp_path / 'p1'))
  assert not made
  monkeypatch.setattr(jax, 'process_index', lambda: 0)

  class Closing:
    closed = False

    def close(self):
      self.closed = True

  with run_lib.Run(c, str(tmp_path / 'p0')) as run:
    run.dir.write_config()
    writer = run.out.writer(Closing)
    run.out.write_summary({'status': 'completed'})
  assert writer.closed  # closed by the harness at the end
  assert {'config.json', 'summary.json'} <= set(os.listdir(tmp_path / 'p0'))


def test_strategies_choose_programs_by_iteration():
  """CE: the plain step always; a meta method: plain during the warm-up, then the
  meta step every `interval`-th iteration and the weighted step between."""
  assert set(strategies.STRATEGIES) == {'ce', *meta_models.META_MODELS}
  ce = strategies.PlainStrategy.__new__(strategies.PlainStrategy)
  assert [ce.program_for(i) for i in range(3)] == ['plain'] * 3
  assert not any(ce.needs_validation(i) for i in range(3))
  meta = strategies.MetaStrategy.__new__(strategies.MetaStrategy)
  meta.interval, meta.warmup_steps = 2, 3
  assert [meta.program_for(i) for i in range(7)] == [
      'plain', 'plain', 'plain', 'weighted', 'meta', 'weighted', 'meta']
  assert [meta.needs_validation(i) for i in range(5)] == [False] * 4 + [True]


def test_ce_ignores_the_sampler_and_meta_warmup_runs_plain_steps(tmp_path):
  c = tiny_config('ce', 'famus', steps=4)
  s = train.train_and_evaluate(c, str(tmp_path / 'ce'))
  assert s['sampler'] is None and s['compiled'] == {'plain': 1, 'eval': 1, 'record': 1,
                                                    'record_visit': 0}
  c = tiny_config('mwnet', 'famus', steps=4, meta__warmup_epochs=0.2)  # 7 of 38 batches
  s = train.train_and_evaluate(c, str(tmp_path / 'warm'))
  meta_programs = {k: n for k, n in s['compiled'].items() if k.startswith('meta')}
  assert meta_programs and not any(meta_programs.values())  # no meta-weight yet
  others = {k: n for k, n in s['compiled'].items() if k not in meta_programs}
  assert others == {'plain': 1, 'weighted': 0, 'eval': 1, 'record': 0, 'record_visit': 1}
  assert s['last_train_row']['meta_steps'] == 0


ALG2_SCRIPT = r'''
import json, sys
sys.path.insert(0, sys.argv[2])
import jax
from famus_jax import train
from test_alg2 import _tiny_config
out = {}
for n in (1, 2):
  c = _tiny_config(**{'train.num_devices': n, 'data.eval_batch_size': 150})
  s = train.train_and_evaluate(c, f'{sys.argv[1]}/dp{n}')
  rows = [json.loads(l) for l in open(f'{sys.argv[1]}/dp{n}/alg2_epochs.jsonl')]
  out[n] = {'loss': [r['net1']['train']['loss'] for r in rows],
            'val_loss': rows[-1]['net1']['train']['val_loss'],
            'test_loss': s['final']['test_loss'], 'devices': s['devices']['num_devices'],
            'compiled': s['compiled']}
print('RESULT' + json.dumps(out))
'''


def test_alg2_on_two_devices_matches_one(tmp_path):
  """Alg. 2 with its batches sharded over 2 forced CPU devices: the same epoch
  losses and test loss as on 1 device, every program compiled once."""
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=(os.environ.get('XLA_FLAGS', '') +
                        ' --xla_force_host_platform_device_count=2'),
             PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  proc = subprocess.run([sys.executable, '-c', ALG2_SCRIPT, str(tmp_path),
                         os.path.dirname(__file__)], cwd=REPO, capture_output=True,
                        text=True, timeout=900, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split('RESULT')[1])
  one, two = out['1'], out['2']
  assert (one['devices'], two['devices']) == (1, 2)
  assert all(v <= 1 for v in two['compiled'].values()), two['compiled']
  assert two['compiled']['meta'] == 1
  np.testing.assert_allclose(two['loss'], one['loss'], rtol=2e-4)
  np.testing.assert_allclose(two['val_loss'], one['val_loss'], rtol=2e-4)
  np.testing.assert_allclose(two['test_loss'], one['test_loss'], rtol=2e-4)
