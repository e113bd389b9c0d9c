"""The training loop, in process, on digits with a 3-layer MLP and a few steps:
method × sampler variants, meta.interval, compile-once, NaN stop, resume."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from famus_jax import data as data_lib
from famus_jax import train
from famus_jax.analysis import runs as runs_lib
from famus_jax.training import build as build_lib
from famus_jax.training import checkpoint as checkpoint_lib
from famus_jax.training import checks
from famus_jax.training import metrics as metrics_lib
from famus_jax.training import sharding as sharding_lib
from test_train_support import check_run_files, read_jsonl, tiny_config


@pytest.mark.parametrize('method,sampler,interval', [
    ('mwnet', 'all', 1),
    ('l2r', 'famus', 1),
    ('mlc', 'all', 1),
    ('mwnet', 'random', 2),
])
def test_variants_in_process(tmp_path, method, sampler, interval):
  # 10 steps as the other runs of tiny_config: runs of one method share programs
  c = tiny_config(method, sampler, steps=10, meta__interval=interval)
  summary = train.train_and_evaluate(c, str(tmp_path))
  _, rows = check_run_files(str(tmp_path), 10, method)
  if interval == 2:  # meta steps at iterations 0, 2, 4, 6, 8; weighted steps between
    # random gates on the MLP's 2 scopes, the default dispatcher ('ahead'): one
    # program per scope, each compiled once when its scope is first drawn
    compiled = summary['compiled']
    meta = {k: v for k, v in compiled.items() if k.startswith('meta_')}
    assert {k: v for k, v in compiled.items() if k not in meta} == {
        'weighted': 1, 'eval': 1, 'record': 1, 'record_visit': 0}
    assert set(meta) == {'meta_ahead0', 'meta_ahead1'}
    assert set(meta.values()) <= {0, 1} and sum(meta.values()) >= 1
    assert [r['meta_steps'] for r in rows] == [1] * 5
  else:
    assert summary['compiled']['weighted'] == 0
  if sampler != 'all':
    assert all(len(r['layer_frequency']) == 3 for r in rows)
    assert all(isinstance(r['selected_layers'], list) for r in rows)
  # relative weights n·V_i since the last evaluation: normalised weights (Σ V = 1,
  # L2R also 0) pool to a mean of at most 1, MLC weighs every example the same
  clean, noisy = (summary['final'][f'train_weight_{k}'] for k in ('clean', 'noisy'))
  if method == 'mwnet':
    assert min(clean, noisy) <= 1.0 + 1e-6 <= max(clean, noisy) + 2e-6, (clean, noisy)
  elif method == 'l2r':
    assert min(clean, noisy) <= 1.0 + 1e-6, (clean, noisy)
  else:
    assert clean == pytest.approx(noisy, rel=1e-6), (clean, noisy)


def test_recompilation_is_detected():
  f = jax.jit(lambda x: x * 2)
  programs = {'meta': f, 'eval': jax.jit(lambda x: x), 'host': lambda x: x}
  f(jnp.zeros(3))
  assert checks.check_compiled_once(programs) == {'meta': 1, 'eval': 0}
  f(jnp.zeros(4))
  with pytest.raises(train.RecompilationError, match='meta'):
    checks.check_compiled_once(programs)


class _Poisoned:
  """A train loader whose batch `at` has a NaN image (an injected divergence)."""

  def __init__(self, loader, at):
    self._loader, self._at, self._n = loader, at, 0

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self._loader)
    if self._n == self._at:
      batch = dict(batch, image=np.full_like(batch['image'], np.nan))
    self._n += 1
    return batch

  def __getattr__(self, name):
    return getattr(self._loader, name)


@pytest.mark.parametrize('method,interval,program,log_every', [
    ('mwnet', 1, 'meta', 2), ('mwnet', 2, 'weighted', 4), ('ce', 1, 'plain', 4)])
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, method,
                                                       interval, program, log_every):
  """A NaN image batch at iteration 6, run by the meta, weighted or plain
  program: the run stops naming step 6 and keeps the checkpoint of step 4.
  Found by the log row of step 6 (log_every 2) or, without one (log_every 4),
  by the per-iteration check when iteration 7 is launched."""
  real = data_lib.make_split_loaders
  ran = {}
  real_iterate = train.Trainer.iterate

  def recording(self, member, step, validation):
    ran[step + 1] = self.strategy.program_for(step)
    return real_iterate(self, member, step, validation)

  monkeypatch.setattr(train.Trainer, 'iterate', recording)

  def poisoned(*args, **kwargs):
    loaders = real(*args, **kwargs)
    loaders['train'] = _Poisoned(loaders['train'], at=5)  # the 6th iteration
    return loaders

  monkeypatch.setattr(data_lib, 'make_split_loaders', poisoned)
  c = tiny_config(method, 'all', steps=10, meta__interval=interval,
                  train__log_every=log_every)
  with pytest.raises(train.NonFiniteLossError, match='at step 6; stopped, the last '
                     'good checkpoint is step 4') as e:
    train.train_and_evaluate(c, str(tmp_path))
  assert e.value.step == 6 and e.value.checkpoint_step == 4
  assert ran[6] == program and max(ran) <= 7  # at most one iteration after it
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / 'checkpoints'))
  assert ckpt.all_steps() == [4]
  state, _, _ = ckpt.restore(_abstract_state(c), 4)
  ckpt.close()
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(state['net'].params))
  with open(tmp_path / 'summary.json') as f:
    assert json.load(f)['status'] == 'non_finite'
  # the rows before the failure were written, none after it
  assert ([r['step'] for r in read_jsonl(tmp_path / 'metrics.jsonl')]
          == list(range(log_every, 5, log_every)))


def _abstract_state(c):
  """The checkpointed state structure of config `c` (the standard algorithm's
  one network, 'net')."""
  splits = data_lib.load_dataset(c.data, c.seed)
  parts = build_lib.build(c, num_classes=splits.num_classes, image_shape=splits.image_shape)
  return {'net': jax.eval_shape(parts.new_state, jax.random.PRNGKey(0))}


class _Crash(Exception):
  pass


def restore_checkpoint(workdir, c, step):
  """(train state, data state) of checkpoint `step` in `workdir`, through the
  public `Checkpointer` API."""
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, 'checkpoints'))
  try:
    state, data_state, got = ckpt.restore(_abstract_state(c), step)
  finally:
    ckpt.close()
  assert got == step
  return state['net'], data_state


def assert_same_train_state(got, want):
  """Bit-identical train states, field by field (a failure names the field)."""
  for field in ('step', 'params', 'batch_stats', 'opt_state', 'meta_params',
                'meta_opt_state', 'rng', 'sampler_params', 'sampler_opt_state',
                'sampler_state'):
    try:
      chex.assert_trees_all_equal(getattr(got, field), getattr(want, field))
    except AssertionError as e:
      raise AssertionError(f'TrainState.{field} differs: {e}') from None


@pytest.mark.parametrize('method,sampler,meta', [
    ('mwnet', 'famus', {'meta__dispatch': 'ahead'}), ('ce', 'all', {})])
def test_resume_after_crash_matches_uninterrupted_run(tmp_path, monkeypatch, method,
                                                      sampler, meta):
  """A run that dies after step 6 (checkpoint at 4, no save at the crash) and is
  re-run ends with the same metrics as one that never stopped, and its final
  checkpoint holds a bit-identical state: parameters, batch statistics,
  optimizer, meta model and sampler states, RNG, and the data loaders' and
  weight window's states, and the gates drawn for the next meta iteration
  (`meta.dispatch='ahead'`), and the per-example record with its
  label_issues.csv. A half-written checkpoint left by the crash is ignored
  and removed."""
  c = tiny_config(method, sampler, steps=10, train__log_every=3, **meta)
  ref_dir, run_dir = str(tmp_path / 'ref'), str(tmp_path / 'run')
  ref = train.train_and_evaluate(c, ref_dir)

  real_global_batch = sharding_lib.global_batch
  calls = {'train': 0}

  def crashing(batch, mesh):
    if 'true_label' in batch:
      calls['train'] += 1
      if calls['train'] == 7:
        raise _Crash()
    return real_global_batch(batch, mesh)

  monkeypatch.setattr(sharding_lib, 'global_batch', crashing)
  with pytest.raises(_Crash):
    train.train_and_evaluate(c, run_dir)
  monkeypatch.setattr(sharding_lib, 'global_batch', real_global_batch)
  ckpt_dir = os.path.join(run_dir, 'checkpoints')
  assert sorted(os.listdir(ckpt_dir)) == ['4']
  leftover = os.path.join(ckpt_dir, '8.orbax-checkpoint-tmp')  # as if killed mid-save
  os.makedirs(os.path.join(leftover, 'state'))

  resumed = train.train_and_evaluate(c, run_dir)
  assert resumed['resumed_from'] == 4
  assert not os.path.exists(leftover)
  assert resumed['final']['test_accuracy'] == ref['final']['test_accuracy']
  np.testing.assert_allclose(resumed['final']['test_loss'], ref['final']['test_loss'],
                             rtol=1e-6)
  strip = lambda rows: [{k: v for k, v in r.items()
                         if k not in ('step_time_s', 'steps_per_s', 'compiled')} for r in rows]
  got, want = (strip(read_jsonl(os.path.join(d, 'metrics.jsonl')))
               for d in (run_dir, ref_dir))
  assert [r['step'] for r in got] == [3, 6, 9, 10]
  assert [r['step'] for r in want] == [3, 6, 9, 10]
  for a, b in zip(got, want):
    assert a.keys() == b.keys()
    for k in a:
      if isinstance(a[k], float):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-7, err_msg=k)
      else:
        assert a[k] == b[k], k
  assert (read_jsonl(os.path.join(run_dir, 'eval.jsonl'))
          == read_jsonl(os.path.join(ref_dir, 'eval.jsonl')))

  (got_state, got_data), (want_state, want_data) = (
      restore_checkpoint(d, c, 10) for d in (run_dir, ref_dir))
  assert int(want_state.step) == 10
  if method == 'mwnet':  # the meta model and the FaMUS samplers are compared too
    assert jax.tree_util.tree_leaves(want_state.meta_params)
    assert jax.tree_util.tree_leaves(want_state.meta_opt_state)
    assert jax.tree_util.tree_leaves(want_state.sampler_params)
    assert jax.tree_util.tree_leaves(want_state.sampler_opt_state)
  if meta:
    assert bool(want_state.sampler_state['valid'])
    assert ref['program_counts']
    assert set(ref['program_counts']) <= {'meta_ahead0', 'meta_ahead1'}
  assert_same_train_state(got_state, want_state)
  # the per-example record (label issues), and the table made from it
  (got_record, _), (want_record, _) = (runs_lib.read_record(d, 10)
                                       for d in (run_dir, ref_dir))
  assert want_record['trust_count'].sum() == want_record['seen'].sum() == 10 * 32
  chex.assert_trees_all_equal(got_record, want_record)
  with open(os.path.join(run_dir, 'label_issues.csv')) as a, open(
      os.path.join(ref_dir, 'label_issues.csv')) as b:
    assert a.read() == b.read()
  assert set(want_data) == {'train', 'meta', 'metrics', 'window'}
  assert want_data['train']['grain']['next_index'] == 10
  assert bool(want_data['window']['clean']) == (method != 'ce')
  assert got_data == want_data


def test_weight_window_and_auc():
  w = metrics_lib.WeightWindow(capacity=5)
  labels, true = np.array([0, 1, 2, 3]), np.array([0, 1, 5, -1])
  w.add(np.array([0.4, 0.3, 0.1, 0.2]), labels, true)  # relative: 1.6 1.2 0.4 (0.8)
  stats = w.eval_stats()
  assert stats['train_weight_clean'] == pytest.approx(1.4)
  assert stats['train_weight_noisy'] == pytest.approx(0.4)
  assert stats['train_weight_auc'] == 1.0
  assert metrics_lib.auc(np.array([1.0, 0.0]), np.array([0.5])) == 0.5
  assert metrics_lib.auc(np.array([1.0]), np.array([1.0])) == 0.5
  for _ in range(5):
    w.add(np.array([0.4, 0.3, 0.1, 0.2]), labels, true)
  clean, noisy = w.arrays()
  assert clean.size == 5 and noisy.size == 5
  state = json.loads(json.dumps(w.get_state()))
  w2 = metrics_lib.WeightWindow(capacity=5)
  w2.set_state(state)
  np.testing.assert_array_equal(w2.arrays()[0], clean)


def test_weight_window_state_after_resume_equals_uninterrupted():
  """A window restored from a checkpointed state and fed the same weights holds,
  and checkpoints, the same state as one that never stopped."""
  rng = np.random.default_rng(0)
  labels, true = np.array([0, 1, 2, 3]), np.array([0, 1, 5, 3])  # 3 clean, 1 noisy
  batches = [rng.uniform(size=4) for _ in range(9)]
  whole, resumed = metrics_lib.WeightWindow(5), metrics_lib.WeightWindow(5)
  for i, b in enumerate(batches):
    whole.add(b, labels, true)
    if i == 3:
      resumed.set_state(json.loads(json.dumps(whole.get_state())))
    elif i > 3:
      resumed.add(b, labels, true)
    if i >= 3:
      assert resumed.get_state() == whole.get_state(), i
  assert len(whole.get_state()['clean']) == 5
