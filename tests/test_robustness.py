"""Runs that survive what people do: one run per workdir, corrupt checkpoints
fall back to the newest intact one, bad input is one line (exit 1) that leaves
the workdir untouched."""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from famus_jax import main as main_lib
from famus_jax import train
from famus_jax.training import checkpoint as checkpoint_lib
from famus_jax.training import checks
from famus_jax.training import lock as lock_lib
from famus_jax.training import run as run_lib
from famus_jax.training import trainer as trainer_lib
from test_train_support import REPO, TINY_FLAGS, read_jsonl, tiny_config

# ---------------------------------------------------------------------------
# Workdir lock.


def test_second_lock_is_refused_with_one_line_naming_the_holder(tmp_path):
  workdir = str(tmp_path / 'run')
  with lock_lib.WorkdirLock(workdir):
    with pytest.raises(lock_lib.WorkdirBusyError) as e:
      lock_lib.WorkdirLock(workdir).acquire()
    msg = str(e.value)
    assert '\n' not in msg
    assert f'pid {os.getpid()} on ' in msg and 'started ' in msg
    assert 'in use by another run' in msg
  # released: the lock file is gone, the lock can be taken again
  assert not os.path.exists(os.path.join(workdir, lock_lib.LOCK_NAME))
  with lock_lib.WorkdirLock(workdir):
    pass


def test_lock_released_by_an_exception_and_empty_workdir_removed(tmp_path):
  workdir = str(tmp_path / 'a' / 'run')
  with pytest.raises(KeyError):
    with lock_lib.WorkdirLock(workdir):
      assert os.path.isfile(os.path.join(workdir, lock_lib.LOCK_NAME))
      raise KeyError('boom')
  assert not os.path.exists(tmp_path / 'a')  # created by the lock, left empty
  lock_lib.WorkdirLock(workdir).acquire()  # free again


_HOLD = ('import sys, time\nfrom famus_jax.training.lock import WorkdirLock\n'
         'with WorkdirLock(sys.argv[1]):\n  print("locked", flush=True)\n'
         '  time.sleep(600)\n')


def test_lock_of_a_killed_run_is_taken_over_with_a_warning(tmp_path, caplog):
  workdir = str(tmp_path / 'run')
  proc = subprocess.Popen([sys.executable, '-c', _HOLD, workdir], cwd=REPO,
                          stdout=subprocess.PIPE, text=True,
                          env={**os.environ, 'PYTHONPATH': REPO})
  try:
    assert proc.stdout.readline().strip() == 'locked'
    with pytest.raises(lock_lib.WorkdirBusyError, match=f'pid {proc.pid} on '):
      lock_lib.WorkdirLock(workdir).acquire()
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert os.path.exists(os.path.join(workdir, lock_lib.LOCK_NAME))  # left behind
  with caplog.at_level(logging.WARNING, logger='famus_jax.lock'):
    with lock_lib.WorkdirLock(workdir):
      pass
  warnings = [r.getMessage() for r in caplog.records]
  assert len(warnings) == 1 and f'pid {proc.pid} on ' in warnings[0]
  assert 'is no longer running' in warnings[0]


def test_check_workdir_errors(tmp_path):
  regular = tmp_path / 'file'
  regular.write_text('x')
  with pytest.raises(lock_lib.WorkdirError, match='is a file, not a directory'):
    lock_lib.check_workdir(str(regular))
  fresh = tmp_path / 'new' / 'run'
  lock_lib.check_workdir(str(fresh))  # writable: nothing is left behind
  assert not os.path.exists(tmp_path / 'new')


# ---------------------------------------------------------------------------
# Checkpoint integrity.


def _state(offset):
  return {'w': jnp.arange(600, dtype=jnp.float32).reshape(6, 100) + offset,
          'b': jnp.full((3,), offset, jnp.float32), 'rng': jax.random.PRNGKey(offset)}


def _two_checkpoints(directory):
  ckpt = checkpoint_lib.Checkpointer(directory)
  ckpt.save(4, _state(4), {'at': 4})
  ckpt.save(8, _state(8), {'at': 8})
  ckpt.close()


def _array_files(step_dir):
  """The array data files of a checkpoint (orbax's OCDBT value files).

  Which of them a restore reads varies from save to save (unreferenced files
  stay beside the one that holds the arrays), so corruptions hit all of them.
  """
  d = os.path.join(step_dir, 'state', 'ocdbt.process_0', 'd')
  files = [os.path.join(d, f) for f in sorted(os.listdir(d))]
  assert files, f'no array data files in {d}'
  return files


def truncate_array_file(step_dir):
  for path in _array_files(step_dir):
    os.truncate(path, os.path.getsize(path) // 2)


def truncate_metadata(step_dir):
  path = os.path.join(step_dir, 'state', '_METADATA')
  os.truncate(path, os.path.getsize(path) // 2)


def flip_bytes(step_dir, count=None):
  """XORs `count` bytes (default all) from a third into each array data file."""
  for path in _array_files(step_dir):
    with open(path, 'rb') as f:
      data = bytearray(f.read())
    start = len(data) // 3 if count else 0
    for i in range(start, min(len(data), start + (count or len(data)))):
      data[i] ^= 0xFF
    with open(path, 'wb') as f:
      f.write(data)


def rewrite_a_value(step_dir):
  """Changed bytes that still decode: one value of the stored state rewritten
  through orbax itself, the old checksums kept."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  step = int(os.path.basename(step_dir))
  bad = _state(step)
  bad['w'] = bad['w'].at[2, 7].set(1e6)
  state_dir = os.path.join(step_dir, 'state')
  shutil.rmtree(state_dir)
  with ocp.StandardCheckpointer() as writer:
    writer.save(state_dir, bad)
    writer.wait_until_finished()


@pytest.mark.parametrize('corrupt,reason', [
    (truncate_array_file, 'orbax could not read it: ValueError: OUT_OF_RANGE'),
    (truncate_metadata, 'orbax could not read it: JSONDecodeError'),
    (lambda d: flip_bytes(d, 64), 'step 8 is corrupt'),
    (flip_bytes, 'orbax could not read it'),
    (rewrite_a_value, "checksum mismatch in state['w']"),
])
def test_corrupt_newest_checkpoint_falls_back_to_the_older(tmp_path, caplog, corrupt,
                                                         reason):
  directory = str(tmp_path / 'checkpoints')
  _two_checkpoints(directory)
  corrupt(os.path.join(directory, '8'))
  ckpt = checkpoint_lib.Checkpointer(directory)
  with caplog.at_level(logging.WARNING, logger='famus_jax.checkpoint'):
    state, data, step = ckpt.restore(_state(0))
  assert step == 4 and data == {'at': 4}
  for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(_state(4))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  warnings = [r.getMessage() for r in caplog.records]
  assert len(warnings) == 1 and '\n' not in warnings[0], warnings
  assert 'checkpoint step 8 is corrupt' in warnings[0] and reason in warnings[0]
  assert 'resuming from step 4' in warnings[0]
  # moved aside: the run can save step 8 again
  assert ckpt.all_steps() == [4]
  assert os.path.isdir(tmp_path / checkpoint_lib.CORRUPT_DIR / '8')
  ckpt.save(8, _state(8), {'at': 8})
  assert ckpt.restore(_state(0))[2] == 8
  ckpt.close()


def test_checkpointer_writes_nothing_before_the_first_save(tmp_path):
  directory = tmp_path / 'checkpoints'
  ckpt = checkpoint_lib.Checkpointer(str(directory))
  assert ckpt.restore(_state(0)) == (None, None, None)
  assert not directory.exists()
  ckpt.save(4, _state(4), {'at': 4})
  assert ckpt.all_steps() == [4]
  ckpt.close()


def test_no_intact_checkpoint_is_one_line_and_moves_nothing(tmp_path):
  directory = str(tmp_path / 'checkpoints')
  _two_checkpoints(directory)
  truncate_metadata(os.path.join(directory, '8'))
  flip_bytes(os.path.join(directory, '4'))
  ckpt = checkpoint_lib.Checkpointer(directory)
  with pytest.raises(checkpoint_lib.CheckpointError) as e:
    ckpt.restore(_state(0))
  msg = str(e.value)
  assert '\n' not in msg and 'no intact checkpoint' in msg
  assert 'step 8 is corrupt' in msg and '(and 1 older)' in msg
  assert ckpt.all_steps() == [4, 8]
  ckpt.close()


def test_checkpoint_without_checksums_must_be_finite(tmp_path):
  directory = str(tmp_path / 'checkpoints')
  _two_checkpoints(directory)
  rewrite_a_value(os.path.join(directory, '8'))  # a large but finite value
  for step in ('4', '8'):  # checkpoints written before checksums existed
    shutil.rmtree(os.path.join(directory, step, 'checksum'))
  ckpt = checkpoint_lib.Checkpointer(directory)
  assert ckpt.restore(_state(0))[2] == 8
  ckpt.close()
  nan_dir = str(tmp_path / 'nan')
  ckpt = checkpoint_lib.Checkpointer(nan_dir)
  ckpt.save(4, _state(4), {'at': 4})
  ckpt.save(8, {**_state(8), 'b': jnp.array([0.0, jnp.nan, 1.0])}, {'at': 8})
  for step in ('4', '8'):
    shutil.rmtree(os.path.join(nan_dir, step, 'checksum'))
  ckpt.close()
  ckpt = checkpoint_lib.Checkpointer(nan_dir)
  assert ckpt.restore(_state(0))[2] == 4
  ckpt.close()


# ---------------------------------------------------------------------------
# Bad command lines: one line on stderr, exit code 1, the workdir untouched.


def _env():
  env = dict(os.environ)
  env.setdefault('JAX_PLATFORMS', 'cpu')
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  return env


def _main(*args, timeout=300):
  return subprocess.run([sys.executable, '-m', 'famus_jax.main', *args], cwd=REPO,
                        env=_env(), capture_output=True, text=True, timeout=timeout)


def _assert_one_line_error(proc, *needles):
  assert proc.returncode == 1, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith('famus_jax: error: '), lines[0]
  for needle in needles:
    assert needle in lines[0], lines[0]


@pytest.mark.parametrize('override,needles', [
    ('--config.nonexistent_field=3',
     ('--config.nonexistent_field: no such config field (every field and its default: '
      'famus_jax/training/config.py',)),
    ('--config.meta.kk=3', ('--config.meta.kk: no such config field; did you mean '
                            'meta.k?',)),
])
def test_unknown_config_field(tmp_path, override, needles):
  workdir = tmp_path / 'run'
  _assert_one_line_error(_main('--config=configs/digits.py', f'--workdir={workdir}',
                               override), *needles)
  assert not os.path.exists(workdir)


def test_missing_config_file(tmp_path):
  workdir = tmp_path / 'run'
  _assert_one_line_error(_main('--config=configs/no_such.py', f'--workdir={workdir}'),
                         '--config=configs/no_such.py: no such config file')
  assert not os.path.exists(workdir)


def test_workdir_that_is_a_file(tmp_path):
  workdir = tmp_path / 'run'
  workdir.write_text('keep me')
  _assert_one_line_error(_main('--config=configs/digits.py', f'--workdir={workdir}'),
                         'is a file, not a directory')
  assert workdir.read_text() == 'keep me'


def _unwritable(tmp_path):
  """A workdir path that cannot be created (root ignores file modes)."""
  if os.geteuid() != 0:
    parent = tmp_path / 'locked'
    parent.mkdir()
    parent.chmod(0o500)
    return parent / 'run'
  path = '/sys/famus_jax_test/run'  # sysfs: root cannot make directories there
  try:
    os.makedirs(path)
  except OSError:
    return path
  os.removedirs(path)
  pytest.skip('no unwritable directory for root here')


def test_unwritable_workdir(tmp_path):
  workdir = _unwritable(tmp_path)
  _assert_one_line_error(_main('--config=configs/digits.py', f'--workdir={workdir}'),
                         'is not writable')
  assert not os.path.exists(workdir)


def _tiny_cmd(workdir, **flags):
  merged = {**TINY_FLAGS, 'meta.sampler': 'all', **flags}
  return ['--config=configs/digits.py', f'--workdir={workdir}'] + [
      f'--config.{k}={v}' for k, v in merged.items()]


@pytest.mark.parametrize('override,needles', [
    ('meta.k=999', ('config.meta.k=999 is out of range',)),  # with meta.sampler=famus
    ('data.batch_size=100000', ('config.data.batch_size=100000: larger than the '
                                'training split',)),
])
def test_bad_value_leaves_the_workdir_untouched(tmp_path, override, needles):
  key, value = override.split('=')
  flags = {'meta.sampler': 'famus', key: value}
  new = tmp_path / 'new'
  _assert_one_line_error(_main(*_tiny_cmd(new, **flags)), *needles)
  assert not os.path.exists(new)  # not even created
  empty = tmp_path / 'empty'
  empty.mkdir()
  _assert_one_line_error(_main(*_tiny_cmd(empty, **flags)), *needles)
  assert os.listdir(empty) == []


# ---------------------------------------------------------------------------
# Whole runs: two at once, corrupt checkpoints, divergence.


def _wait_for_lock(workdir, proc, timeout=240):
  path = os.path.join(workdir, lock_lib.LOCK_NAME)
  start = time.time()
  while not (os.path.exists(path) and os.path.getsize(path)):
    if proc.poll() is not None:
      raise AssertionError(f'first run ended ({proc.returncode}): {proc.stderr.read()}')
    assert time.time() - start < timeout, 'the first run never took the lock'
    time.sleep(0.05)


def test_second_run_on_a_workdir_is_refused(tmp_path):
  workdir = str(tmp_path / 'run')
  first = subprocess.Popen(
      [sys.executable, '-m', 'famus_jax.main',
       *_tiny_cmd(workdir, **{'optim.num_steps': 10**7, 'train.log_every': 50,
                              'train.eval_every': 0, 'train.checkpoint_every': 0})],
      cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    _wait_for_lock(workdir, first)
    second = _main(*_tiny_cmd(workdir))
    _assert_one_line_error(second, f'--workdir={workdir} is in use by another run '
                           f'(pid {first.pid} on ', 'famus_jax', 'started ')
  finally:
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
  assert first.returncode == 143, err[-2000:]
  steps = [r['step'] for r in read_jsonl(os.path.join(workdir, 'metrics.jsonl'))]
  assert steps == sorted(set(steps))  # one writer: no interleaved rows
  assert not os.path.exists(os.path.join(workdir, lock_lib.LOCK_NAME))


def _rows_without_timing(path):
  skip = ('step_time_s', 'steps_per_s', 'compiled')
  return [{k: v for k, v in r.items() if k not in skip} for r in read_jsonl(path)]


_RESUME = ('import json, sys\nfrom famus_jax import train\nfrom test_train_support import tiny_config\n'
           "print(json.dumps(train.train_and_evaluate(tiny_config('mwnet', 'all', steps=8), "
           'sys.argv[1])))\n')


def _resume_in_a_new_process(workdir):
  """The run restarted as a user restarts it: in a fresh process, so nothing
  read or written before (orbax's in-process caches included) is reused."""
  env = {**_env(), 'PYTHONPATH': REPO + os.pathsep + os.path.join(REPO, 'tests')}
  proc = subprocess.run([sys.executable, '-c', _RESUME, workdir], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.mark.parametrize('corrupt', [truncate_array_file, flip_bytes],
                         ids=['truncated', 'bit_flipped'])
def test_run_falls_back_to_the_older_checkpoint_bit_identically(tmp_path, corrupt):
  c = tiny_config('mwnet', 'all', steps=8)
  workdir = str(tmp_path / 'run')
  reference = train.train_and_evaluate(c, workdir)
  ref_eval = _rows_without_timing(os.path.join(workdir, 'eval.jsonl'))
  ref_train = _rows_without_timing(os.path.join(workdir, 'metrics.jsonl'))
  corrupt(os.path.join(workdir, 'checkpoints', '8'))
  again, stderr = _resume_in_a_new_process(workdir)
  assert re.findall(r'checkpoint step \d+ is corrupt', stderr) == [
      'checkpoint step 8 is corrupt'], stderr[-3000:]
  assert again['resumed_from'] == 4
  assert again['final'] == reference['final']  # exact floats
  assert _rows_without_timing(os.path.join(workdir, 'eval.jsonl')) == ref_eval
  assert _rows_without_timing(os.path.join(workdir, 'metrics.jsonl')) == ref_train
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['4', '8']


def test_no_intact_checkpoint_keeps_the_summary(tmp_path):
  c = tiny_config('mwnet', 'all', steps=8)
  workdir = tmp_path / 'run'
  train.train_and_evaluate(c, str(workdir))
  before = {n: (workdir / n).read_bytes() for n in ('summary.json', 'eval.jsonl',
                                                    'metrics.jsonl')}
  for step in ('4', '8'):
    truncate_metadata(str(workdir / 'checkpoints' / step))
  with pytest.raises(checkpoint_lib.CheckpointError, match='no intact checkpoint'):
    train.train_and_evaluate(c, str(workdir))
  assert {n: (workdir / n).read_bytes() for n in before} == before


def test_a_failure_keeps_a_completed_summary(tmp_path):
  completed = {'status': 'completed', 'step': 8, 'final_test_accuracy': 0.9}
  (tmp_path / 'summary.json').write_text(json.dumps(completed))
  with pytest.raises(checks.NonFiniteLossError):
    with run_lib.Run(tiny_config(), str(tmp_path)) as run:
      raise run.guard.error(3)
  assert json.loads((tmp_path / 'summary.json').read_text()) == completed


def test_divergence_stops_within_one_iteration(tmp_path, monkeypatch):
  """lr = 1e6: the run names the first non-finite iteration and runs at most
  one more (the check reads each iteration's flag when the next is launched)."""
  flags = []  # the finiteness flag of every iteration that ran, read eagerly
  iterate = train.Trainer.iterate

  def recording(self, member, step, validation):
    try:
      iterate(self, member, step, validation)
    finally:
      flags.append(bool(self.mets[member].pending[-1][1]['finite']))
  monkeypatch.setattr(train.Trainer, 'iterate', recording)
  c = tiny_config('mwnet', 'all', steps=60, optim__lr=1e6, train__log_every=50,
                  train__eval_every=0, train__checkpoint_every=0)
  with pytest.raises(train.NonFiniteLossError) as e:
    train.train_and_evaluate(c, str(tmp_path))
  first_bad = flags.index(False) + 1  # iterations are numbered from 1
  assert e.value.step == first_bad
  assert len(flags) <= first_bad + 1
  with open(tmp_path / 'summary.json') as f:
    assert json.load(f)['status'] == 'non_finite'


def test_chance_level_warns_once(caplog):
  watch = checks.ChanceWatch(10)
  level = np.log(10)
  with caplog.at_level(logging.WARNING, logger='famus_jax.run'):
    for step, loss in ((2, 2.5), (4, level * 0.99)):
      watch.add({'step': step, 'loss': loss})
    assert watch.end_period(4)
    watch.add({'step': 6, 'loss': 5.0, 'val_loss': level})  # meta steps: val loss
    assert watch.end_period(8)
    watch.add({'step': 10, 'loss': 5.0, 'val_loss': 1.0})  # learning
    assert not watch.end_period(12)
  messages = [r.getMessage() for r in caplog.records]
  assert messages == [
      'training stayed at chance level up to step 4: since step 2 the loss never went '
      'below 2.257 (98 % of log 10 = 2.303, the loss of a uniform prediction); check '
      'optim.lr (far too high or too low)']


def test_tiny_learning_rate_warns_in_a_run(tmp_path, caplog):
  c = tiny_config('ce', steps=8, optim__lr=1e-9)
  with caplog.at_level(logging.WARNING, logger='famus_jax.run'):
    train.train_and_evaluate(c, str(tmp_path))
  assert ['chance level' in r.getMessage() for r in caplog.records
          if r.name == 'famus_jax.run'] == [True]


# ---------------------------------------------------------------------------
# What a run prints.


def test_progress_bar_labels_its_numbers():
  meta_row = {'step': 38, 'loss': 3.3, 'weighted_loss': 2.1234, 'val_loss': 0.4567}
  assert trainer_lib.progress_postfix(meta_row, None) == {
      'weighted_train_loss': '2.123', 'meta_val_loss': '0.457'}
  assert trainer_lib.progress_postfix({'step': 4, 'loss': 1.5},
                                {'step': 2, 'test_accuracy': 0.25}) == {
                                    'train_loss': '1.500', 'test_acc@2': '0.250'}


def test_final_lines_name_the_selection_and_the_noise_rate():
  eval_rows = [{'step': 2, 'meta_accuracy': 0.5, 'test_accuracy': 0.6},
               {'step': 4, 'meta_accuracy': 0.7, 'test_accuracy': 0.65},
               {'step': 6, 'meta_accuracy': 0.7, 'test_accuracy': 0.62},
               {'step': 8, 'meta_accuracy': 0.6, 'test_accuracy': 0.7}]
  selected = trainer_lib.selected_by_meta_set(eval_rows)
  assert selected == {'step': 6, 'meta_accuracy': 0.7, 'test_accuracy': 0.62}
  summary = {'step': 8, 'final_test_accuracy': 0.7, 'best_test_accuracy': 0.7,
             'selected_by_meta_set': selected, 'data': {'realised_noise_rate': 0.343}}
  lines = main_lib.done_lines(summary, '/w')
  assert lines == [
      'famus_jax: best clean meta-set accuracy 0.7000 at step 6: test accuracy 0.6200',
      'famus_jax: done, step 8: final test accuracy 0.7000 (highest of all evaluations '
      '0.7000, a test-set oracle); realised noise rate 0.3430 (the fraction of training '
      'labels that differ from the true label); summary in /w/summary.json']


# ---------------------------------------------------------------------------
# Every `python -m famus_jax.main` command README.md shows runs (rc 0).

# A small step budget appended to each command (later flags win).
README_BUDGET = ('--config.optim.num_epochs=1', '--config.optim.boundaries=()',
                 '--config.train.progress=False')


def readme_commands(path=os.path.join(REPO, 'README.md')):
  """The `python -m famus_jax.main ...` commands of the code blocks in `path`,
  as argument lists (continued lines joined; `pip install ... &&` dropped)."""
  import shlex  # pylint: disable=g-import-not-at-top
  with open(path) as f:
    text = f.read()
  blocks = text.split('```')[1::2]
  commands = []
  for block in blocks:
    for line in block.replace('\\\n', ' ').splitlines():
      for part in line.split('&&'):
        words = shlex.split(part, comments=True)
        if words[:3] == ['python', '-m', 'famus_jax.main']:
          commands.append(words)
  return commands


def test_readme_commands_are_found():
  commands = readme_commands()
  assert len(commands) >= 4
  assert any(c[3:] == ['--config=configs/digits.py', '--workdir=/tmp/famus_digits']
             for c in commands), commands


def _write_fashion_idx(folder, train_per_class=160, test_per_class=20):
  """Small Fashion-MNIST-shaped IDX files (random images) in `folder`."""
  from famus_jax.data import idx  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split, per in (('train', train_per_class), ('t10k', test_per_class)):
    labels = np.tile(np.arange(10, dtype=np.uint8), per)
    idx.write_idx(str(folder / f'{split}-labels-idx1-ubyte.gz'), labels)
    idx.write_idx(str(folder / f'{split}-images-idx3-ubyte.gz'),
                  rng.integers(0, 256, (labels.size, 28, 28)).astype(np.uint8))
  return folder


@pytest.mark.slow
@pytest.mark.parametrize('command', readme_commands(),
                         ids=lambda c: ' '.join(c[3:]).replace('/', '_'))
def test_readme_command_runs(tmp_path, command):
  args = [f'--workdir={tmp_path / "run"}' if a.startswith('--workdir=') else a
          for a in command[3:]]
  if '--config=configs/fashion_mnist.py' in args:
    # The same command on small IDX files written here, whether or not Debian's
    # dataset-fashion-mnist is installed: the test costs the same on every machine
    # (reading the real files is tested in test_data_fashion_mnist.py).
    args.append(f'--config.data.data_dir={_write_fashion_idx(tmp_path / "fashion")}')
  proc = subprocess.run([sys.executable, '-m', 'famus_jax.main', *args, *README_BUDGET],
                        cwd=REPO, env=_env(), capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'famus_jax: done' in proc.stdout
  with open(tmp_path / 'run' / 'summary.json') as f:
    assert json.load(f)['status'] == 'completed'
