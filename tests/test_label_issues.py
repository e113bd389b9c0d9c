"""Which labels are wrong: the per-example record against a hand computation, the
score and ranking by hand, the record in checkpoints (checksums, corruption),
a tiny run end to end (record = a replay of its visits, CSV, summary, the
final line, `famus_jax.label_issues`, `famus_jax.inspect` and its errors)."""

import csv
import json
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import famus_jax
from famus_jax import inspect as inspect_lib
from famus_jax import main as main_lib
from famus_jax import train
from famus_jax.analysis import grid
from famus_jax.analysis import label_issues as issues_lib
from famus_jax.analysis import record as record_lib
from famus_jax.analysis import runs as runs_lib
from famus_jax.training import checkpoint as checkpoint_lib
from famus_jax.training import checks
from famus_jax.training.hooks import Hook
from famus_jax.training import sharding as sharding_lib
from famus_jax.training.writes import WriteError
from test_train_support import REPO, tiny_config

LN = np.log


def _metrics(weights=None, loss=(), prediction=()):
  m = {'example_loss': jnp.asarray(loss, jnp.float32),
       'prediction': jnp.asarray(prediction, jnp.int32)}
  if weights is not None:
    m['weights'] = jnp.asarray(weights, jnp.float32)
  return m


def weighted_mean(values, decay):
  """The definition: of k visits, visit j weighs decay^(k−j)."""
  w = decay ** np.arange(len(values) - 1, -1, -1, dtype=np.float64)
  return float(np.dot(w, values) / w.sum())


def test_average_rate_is_the_bias_corrected_exponential_mean():
  rng = np.random.default_rng(0)
  values = rng.uniform(size=6)
  for decay in (0.0, 0.5, 0.98, 1.0):
    a = 0.0
    for k, x in enumerate(values):
      a += record_lib.average_rate(float(k), decay) * (x - a)
    assert a == pytest.approx(weighted_mean(values, decay), rel=1e-12), decay
  assert weighted_mean(values, 0.0) == values[-1]


def test_record_update_against_hand_computation():
  """Three batches of a 4-example split (decay 0.5): the second one without
  weights (a warm-up step) leaves the trust alone; example 1 is never seen."""
  rec = record_lib.ExampleRecord(4, 'mwnet', 0.5, sharding_lib.make_mesh(1))
  steps = [  # index, labels, metrics
      ([2, 0], [1, 3], _metrics([0.25, 0.75], [LN(2), LN(4)], [1, 2])),
      ([0, 3], [3, 0], _metrics(None, [LN(2), 0.0], [3, 1])),
      ([0, 2], [3, 1], _metrics([0.5, 0.5], [LN(4), LN(4)], [3, 0])),
  ]
  for index, labels, metrics in steps:
    rec.update(jnp.asarray(index, jnp.int32), jnp.asarray(labels, jnp.int32), metrics)
  assert [rec.program_for(m) for _, _, m in steps] == ['record', 'record_visit', 'record']
  got = rec.host()
  # relative weights n·V: example 2 saw 0.5 then 1, example 0 saw 1.5 then 1
  np.testing.assert_allclose(got['trust'], [weighted_mean([1.5, 1.0], 0.5), 0.0,
                                            weighted_mean([0.5, 1.0], 0.5), 0.0], rtol=1e-6)
  assert got['trust'][0] == pytest.approx(7 / 6) and got['trust'][2] == pytest.approx(5 / 6)
  np.testing.assert_array_equal(got['trust_count'], [2, 0, 2, 0])
  np.testing.assert_array_equal(got['seen'], [3, 0, 2, 1])
  np.testing.assert_allclose(got['confidence'], [
      weighted_mean([0.25, 0.5, 0.25], 0.5), 0.0, weighted_mean([0.5, 0.25], 0.5), 1.0],
                             rtol=1e-6)
  assert got['confidence'][0] == pytest.approx(0.5625 / 1.75, rel=1e-6)
  np.testing.assert_allclose(got['disagreement'], [
      weighted_mean([1, 0, 0], 0.5), 0.0, weighted_mean([0, 1], 0.5), 1.0], rtol=1e-6)
  np.testing.assert_array_equal(got['prediction'], [3, -1, 0, 1])
  np.testing.assert_allclose(got['loss'], [LN(4), 0.0, LN(4), 0.0], rtol=1e-6)
  assert checks.compiled_counts(rec.programs) == {'record': 1, 'record_visit': 1}


def test_each_update_program_compiles_once_whatever_the_step():
  """L2R: meta steps (weights, val_loss) weigh; its weighted steps (uniform
  weights) and a CE warm-up (no weights) only visit: one program each."""
  rec = record_lib.ExampleRecord(6, 'l2r', 0.98, sharding_lib.make_mesh(1))
  meta = {**_metrics([0.5, 0.5], [0.1, 0.2], [0, 1]), 'val_loss': jnp.float32(1.0)}
  weighted = _metrics([0.5, 0.5], [0.1, 0.2], [0, 1])
  plain = _metrics(None, [0.1, 0.2], [0, 1])
  index, labels = jnp.asarray([1, 4], jnp.int32), jnp.asarray([0, 0], jnp.int32)
  for m in (plain, meta, weighted, plain, meta, weighted):
    rec.update(index, labels, m)
  assert checks.compiled_counts(rec.programs) == {'record': 1, 'record_visit': 1}
  got = rec.host()
  np.testing.assert_array_equal(got['trust_count'], [0, 2, 0, 0, 2, 0])
  np.testing.assert_array_equal(got['seen'], [0, 6, 0, 0, 6, 0])
  np.testing.assert_allclose(got['trust'], [0, 1, 0, 0, 1, 0], rtol=1e-6)


@pytest.mark.parametrize('method,requires', [
    ('mwnet', {'weights'}), ('l2r', {'weights', 'val_loss'}), ('mlc', {'val_loss'}),
    ('mlc_transition', {'weights'}), ('ce', set())])
def test_signals_cover_every_method(method, requires):
  signal = record_lib.SIGNALS[method]
  assert set(signal.requires) == requires
  m = _metrics([0.1, 0.3], [LN(2), LN(5)], [0, 0])
  want = [0.2, 0.6] if signal.scale == 'weight' else [0.5, 0.2]
  np.testing.assert_allclose(signal.fn(m), want, rtol=1e-6)


def _hand_record(**extra):
  """Five examples: trust (relative weight) 3, 1, 0.25, 0 and one never weighed."""
  rec = {'trust': np.array([3.0, 1.0, 0.25, 0.0, 0.0]),
         'trust_count': np.array([2, 3, 1, 4, 0]),
         'disagreement': np.array([0.0, 0.5, 1.0, 1.0, 1.0]),
         'confidence': np.array([0.9, 0.5, 0.1, 0.0, 0.0]),
         'prediction': np.array([0, 1, 7, 4, 2]), 'seen': np.array([2, 3, 1, 4, 1]),
         'loss': np.zeros(5)}
  rec.update(extra)
  return rec


def test_score_and_ranking_by_hand():
  """score = ½ (1 / (1 + w̄)) + ½ d̄: 0.125, 0.5, 0.9, 1.0; flagged: > 0.5."""
  given, true = np.array([0, 1, 2, 3, 4]), np.array([0, 5, 0, 3, 4])  # 1, 2 wrong
  table = issues_lib.rank_label_issues(_hand_record(), given, true, method='mwnet')
  np.testing.assert_array_equal(table.index, [3, 2, 1, 0])
  np.testing.assert_allclose(table.score, [1.0, 0.9, 0.5, 0.125])
  np.testing.assert_array_equal(table.rank, [1, 2, 3, 4])
  np.testing.assert_array_equal(table.given_label, [3, 2, 1, 0])
  np.testing.assert_array_equal(table.predicted_label, [4, 7, 1, 0])
  np.testing.assert_array_equal(table.true_label, [3, 0, 5, 0])
  np.testing.assert_array_equal(table.flagged, [True, True, False, False])
  assert table.num_unvisited == 1
  # k = 2 flagged: {3, 2}, one of the two wrong labels; AUC: each wrong label
  # outranks example 0 and is outranked by example 3 -> 2 of 4 pairs
  assert table.metrics == pytest.approx({
      'num_examples': 4, 'num_noisy': 2, 'k': 2, 'precision_at_k': 0.5,
      'recall_at_k': 0.5, 'roc_auc': 0.5, 'average_precision': (1 / 2 + 2 / 3) / 2})


def test_probability_signals_and_gmm_enter_the_score():
  """MLC / CE: 1 − p̄ for the trust; Alg. 2 adds 1 − the networks' mean GMM
  clean probability (-1: outside the pool, ignored; 0.5 when no network has one)."""
  rec = _hand_record(trust=np.array([0.9, 0.5, 0.2, 0.0, 0.0]))
  score = issues_lib.label_score(rec, 'ce')
  np.testing.assert_allclose(score, 0.5 * (1 - rec['trust'] + rec['disagreement']))
  rec['gmm_clean_net1'] = np.array([1.0, -1.0, 0.2, 0.0, -1.0])
  rec['gmm_clean_net2'] = np.array([0.8, 0.6, -1.0, 0.0, -1.0])
  gmm = 1.0 - np.array([0.9, 0.6, 0.2, 0.0, 0.5])
  np.testing.assert_allclose(issues_lib.label_score(rec, 'ce'),
                             (1 - rec['trust'] + rec['disagreement'] + gmm) / 3)


def test_csv_holds_the_table(tmp_path):
  table = issues_lib.rank_label_issues(_hand_record(), np.arange(5),
                                       np.array([0, 5, 0, 3, 4]), method='mwnet')
  path = str(tmp_path / 'issues.csv')
  issues_lib.write_csv(path, table)
  with open(path) as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == ['rank', 'index', 'given_label', 'predicted_label', 'score',
                           'true_label']
  assert [int(r['index']) for r in rows] == [3, 2, 1, 0]
  assert [float(r['score']) for r in rows] == [1.0, 0.9, 0.5, 0.125]
  assert [int(r['true_label']) for r in rows] == [3, 0, 5, 0]
  no_truth = issues_lib.rank_label_issues(_hand_record(), np.arange(5), None)
  issues_lib.write_csv(path, no_truth)
  with open(path) as f:
    assert f.readline().strip() == 'rank,index,given_label,predicted_label,score'
  assert no_truth.metrics is None
  with pytest.raises(WriteError, match=r'cannot write .*/missing/issues.csv: No such file'):
    issues_lib.write_csv(str(tmp_path / 'missing' / 'issues.csv'), table)


# ---------------------------------------------------------------------------
# The record in checkpoints.


def _record(offset):
  return {'trust': jnp.arange(8, dtype=jnp.float32) + offset,
          'seen': jnp.full((8,), offset, jnp.int32)}


def _state(offset):
  return {'w': jnp.full((3, 4), offset, jnp.float32)}


def test_record_is_covered_by_the_checksums(tmp_path):
  """A rewritten record value or a missing record marks the checkpoint corrupt:
  the older one is restored; a checkpoint saved without a record restores with
  None; the record can be read alone."""
  directory = str(tmp_path / 'checkpoints')
  ckpt = checkpoint_lib.Checkpointer(directory, keep=5)
  ckpt.save(2, _state(2), {'at': 2})  # no record
  for step in (4, 8, 12):
    ckpt.save(step, _state(step), {'at': step}, extra={'label_record': _record(step)})
  ckpt.close()
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  bad = _record(12)
  bad['trust'] = bad['trust'].at[3].set(1e6)
  shutil.rmtree(os.path.join(directory, '12', 'label_record'))
  with ocp.StandardCheckpointer() as writer:
    writer.save(os.path.join(directory, '12', 'label_record'), bad)
    writer.wait_until_finished()
  shutil.rmtree(os.path.join(directory, '8', 'label_record'))
  ckpt = checkpoint_lib.Checkpointer(directory)
  with pytest.raises(checkpoint_lib.CheckpointError,
                     match=r"checksum mismatch in label_record\['trust'\]"):
    ckpt.restore_with_extra(_state(0), {'label_record': _record(0)}, 12)
  with pytest.raises(checkpoint_lib.CheckpointError, match='label_record is missing'):
    ckpt.restore_with_extra(None, {'label_record': None}, 8)
  state, extra, data, step = ckpt.restore_with_extra(_state(0), {'label_record': _record(0)})
  assert step == 4 and data == {'at': 4}
  np.testing.assert_array_equal(extra['label_record']['trust'], _record(4)['trust'])
  np.testing.assert_array_equal(state['w'], _state(4)['w'])
  assert ckpt.all_steps() == [2, 4]  # 8 and 12 moved aside
  assert ckpt.restore(_state(0))[2] == 4  # the state alone, as before
  _, extra, _, step = ckpt.restore_with_extra(_state(0), {'label_record': _record(0)}, 2)
  assert step == 2 and extra == {'label_record': None}
  ckpt.close()


def test_reading_a_record_moves_nothing_and_skips_a_corrupt_checkpoint(tmp_path, caplog):
  """`famus_jax.inspect` reads beside a run that may be saving: a corrupt newest
  checkpoint is skipped with a warning and left where it is."""
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / 'checkpoints'))
  for step in (4, 8):
    ckpt.save(step, _state(step), {'at': step}, extra={'label_record': _record(step)})
  ckpt.close()
  shutil.rmtree(tmp_path / 'checkpoints' / '8' / 'label_record')
  with caplog.at_level('WARNING', logger='famus_jax.labels'):
    record, step = runs_lib.read_record(str(tmp_path))
  assert step == 4
  np.testing.assert_array_equal(record['trust'], np.asarray(_record(4)['trust']))
  assert 'checkpoint 8: label_record is missing; reading checkpoint 4 instead' in caplog.text
  assert os.path.isdir(tmp_path / 'checkpoints' / '8')
  reader = checkpoint_lib.Checkpointer(str(tmp_path / 'checkpoints'), read_only=True)
  with pytest.raises(checkpoint_lib.CheckpointError, match='opened read-only'):
    reader.save(12, _state(12), {})
  reader.close()


# ---------------------------------------------------------------------------
# A tiny run end to end.


class _Visits(Hook):
  """Captures every iteration's batch indices, labels and per-example values."""

  def __init__(self):
    self.visits = []

  def after_iteration(self, trainer, member, step, host, metrics):
    self.visits.append((np.asarray(host['index']), np.asarray(host['label']),
                        {k: np.asarray(v) for k, v in metrics.items()
                         if k in ('weights', 'example_loss', 'prediction')}))


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """A 10-step MW-Net run whose every visit is captured on the host."""
  workdir = str(tmp_path_factory.mktemp('run'))
  capture = _Visits()
  c = tiny_config('mwnet', 'all', steps=10, meta__warmup_epochs=0.1, train__label_ema=0.7)
  summary = train.train_and_evaluate(c, workdir, hooks=[capture])
  return workdir, summary, capture.visits


def _replay(visits, num, decay):
  """The record by its definition, from the captured visits."""
  hist = {k: [[] for _ in range(num)] for k in ('trust', 'confidence', 'disagreement')}
  last = {'prediction': np.full(num, -1), 'loss': np.zeros(num)}
  for index, labels, m in visits:
    for j, i in enumerate(index):
      if 'weights' in m:
        hist['trust'][i].append(m['weights'][j] * len(index))
      hist['confidence'][i].append(np.exp(-m['example_loss'][j]))
      hist['disagreement'][i].append(float(m['prediction'][j] != labels[j]))
      last['prediction'][i], last['loss'][i] = m['prediction'][j], m['example_loss'][j]
  out = {k: np.array([weighted_mean(v, decay) if v else 0.0 for v in h])
         for k, h in hist.items()}
  out['trust_count'] = np.array([len(v) for v in hist['trust']])
  out['seen'] = np.array([len(v) for v in hist['confidence']])
  return {**out, **last}


def test_tiny_run_record_and_table_match_a_replay_of_its_visits(tiny_run):
  workdir, summary, visits = tiny_run
  # 0.1 epoch of CE warm-up: 3 steps of the 38 per epoch, then 7 meta steps
  assert [('weights' in m) for _, _, m in visits] == [False] * 3 + [True] * 7
  assert summary['compiled']['record'] == 1 and summary['compiled']['record_visit'] == 1
  record, step = runs_lib.read_record(workdir)
  assert step == 10
  noise = np.load(os.path.join(workdir, 'noisy_labels.npz'))
  given, true = noise['noisy_labels'], noise['true_labels']
  want = _replay(visits, given.size, 0.7)
  for key, value in want.items():
    np.testing.assert_allclose(record[key][:given.size], value, rtol=2e-6, atol=1e-7,
                               err_msg=key)
  table = issues_lib.rank_label_issues(want, given, true, method='mwnet')
  assert len(table) == int((want['trust_count'] > 0).sum()) == 7 * 32
  with open(os.path.join(workdir, 'label_issues.csv')) as f:
    rows = list(csv.DictReader(f))
  np.testing.assert_array_equal([int(r['index']) for r in rows], table.index)
  np.testing.assert_allclose([float(r['score']) for r in rows], table.score, atol=1e-5)
  np.testing.assert_array_equal([int(r['predicted_label']) for r in rows],
                                table.predicted_label)
  from sklearn.metrics import roc_auc_score  # pylint: disable=g-import-not-at-top
  noisy = table.given_label != table.true_label
  m = summary['label_issues']['metrics']
  assert m['roc_auc'] == pytest.approx(roc_auc_score(noisy, table.score), abs=1e-6)
  assert m['num_noisy'] == int(noisy.sum()) and m['k'] == int((table.score > 0.5).sum())
  with open(os.path.join(workdir, 'summary.json')) as f:
    assert json.load(f)['label_issues']['metrics'] == pytest.approx(m)
  public = famus_jax.label_issues(workdir)
  np.testing.assert_array_equal(public.index, [int(r['index']) for r in rows])
  assert public.metrics == pytest.approx(m)


def test_final_line_reports_the_auc(tiny_run):
  workdir, summary, _ = tiny_run
  lines = main_lib.done_lines(summary, workdir)
  m = summary['label_issues']['metrics']
  assert lines[-2].startswith('famus_jax: done, step 10')
  assert lines[-1].startswith(f"famus_jax: label issues: {summary['label_issues']['num_flagged']}"
                              f" of 224 training labels flagged (score > 0.5); against the "
                              f"realised noise ({m['num_noisy']} wrong labels): ROC-AUC "
                              f"{m['roc_auc']:.4f}")
  assert f'ranked in {workdir}/label_issues.csv' in lines[-1]


def test_inspect_writes_the_grid_and_a_checkpoint_table(tiny_run):
  workdir, _, _ = tiny_run
  lines = inspect_lib.inspect_run(workdir, top=6)
  assert os.path.getsize(os.path.join(workdir, 'label_issues.png')) > 5000
  assert lines[0].startswith(f'famus_jax: checkpoint 10 of {workdir}: 224 training')
  assert len([l for l in lines if l.startswith('  #')]) == 6
  assert 'ROC-AUC' in lines[-2]
  lines = inspect_lib.inspect_run(workdir, checkpoint=4, top=3)
  for name in ('label_issues_step4.csv', 'label_issues_step4.png'):
    assert os.path.isfile(os.path.join(workdir, name)), name
  assert famus_jax.label_issues(workdir, checkpoint=4).num_unvisited == 1247 - 1 * 32
  with pytest.raises(runs_lib.RunError, match=r'--checkpoint=5: no such checkpoint in '
                     r'.*/checkpoints \(there are: 4, 8, 10\)'):
    inspect_lib.inspect_run(workdir, checkpoint=5)


def test_grid_shows_uint8_images_as_the_pipeline_does():
  """Fashion-MNIST and CIFAR sources hold uint8: ÷ 255, not clipped to 0/1."""
  images = np.array([[[[0], [51]], [[255], [128]]]], np.uint8)
  np.testing.assert_allclose(grid.unit_range(images)[0, :, :, 0],
                             [[0.0, 0.2], [1.0, 128 / 255]], rtol=1e-6)
  floats = np.array([[[[0.25]]]], np.float32)
  np.testing.assert_array_equal(grid.unit_range(floats), floats)


def test_inspect_refuses_a_run_of_another_data_set(tiny_run, tmp_path):
  workdir, _, _ = tiny_run
  other = str(tmp_path / 'other')
  shutil.copytree(workdir, other)
  with np.load(os.path.join(other, 'noisy_labels.npz')) as f:
    saved = dict(f)
  saved['noisy_labels'] = (saved['noisy_labels'] + 1) % 10
  np.savez(os.path.join(other, 'noisy_labels.npz'), **saved)
  with pytest.raises(runs_lib.RunError, match=r'was trained on another data set than '
                     r'config.data \(digits\) loads now'):
    inspect_lib.inspect_run(other)
  os.remove(os.path.join(other, 'noisy_labels.npz'))
  record, _ = runs_lib.read_record(other)
  with pytest.raises(runs_lib.RunError, match='its per-example record has 1247 rows for '
                     'a training split of 1000 examples: another data set'):
    runs_lib.check_record(record, 1000, other)


def test_inspect_command_errors_are_one_line(tmp_path, capsys):
  """The command: exit 1 and one line (a workdir without a run); the messages of
  the other cases in process."""
  empty = tmp_path / 'empty'
  empty.mkdir()
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-m', 'famus_jax.inspect', f'--workdir={empty}'],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1, proc.stderr
  assert proc.stderr.strip() == (
      f'famus_jax: error: --workdir={empty} holds no training run (no config.json); train '
      f'one first: python -m famus_jax.main --config=configs/digits.py --workdir={empty}')
  (tmp_path / 'config.json').write_text('{}')
  with pytest.raises(runs_lib.RunError, match=(
      f'^--workdir={tmp_path} holds no checkpoint yet; wait for the first one '
      r'\(train.checkpoint_every\) or the end of the run$')):
    runs_lib.read_record(str(tmp_path))
  with pytest.raises(SystemExit) as e:
    inspect_lib.parse_args(['--workdir=x', '--top=0'])
  assert e.value.code == 1
  assert capsys.readouterr().err == 'famus_jax: error: --top=0: must be at least 1\n'
