"""Runs that survive what people do: one run per workdir, corrupt checkpoints
fall back to the newest intact one, bad input is one line (exit 1) that leaves
the workdir untouched."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from famus_jax.training import checkpoint as checkpoint_lib
from famus_jax.training import lock as lock_lib
from test_train_support import REPO

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


def _largest_file(directory):
  files = [os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs]
  return max(files, key=os.path.getsize)


def truncate_array_file(step_dir):
  path = _largest_file(os.path.join(step_dir, 'state'))
  os.truncate(path, os.path.getsize(path) // 2)


def truncate_metadata(step_dir):
  path = os.path.join(step_dir, 'state', '_METADATA')
  os.truncate(path, os.path.getsize(path) // 2)


def flip_bytes(step_dir, count=None):
  """XORs `count` bytes (default all) in the middle of the largest array file."""
  path = _largest_file(os.path.join(step_dir, 'state'))
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


@pytest.fixture(scope='module')
def xla_cache_env(tmp_path_factory):
  """One persistent XLA cache for the README runs (shared compiled programs)."""
  return {'JAX_COMPILATION_CACHE_DIR': str(tmp_path_factory.mktemp('xla_cache')),
          'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
          'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}


@pytest.mark.parametrize('command', readme_commands(),
                         ids=lambda c: ' '.join(c[3:]).replace('/', '_'))
def test_readme_command_runs(tmp_path, xla_cache_env, command):
  args = [f'--workdir={tmp_path / "run"}' if a.startswith('--workdir=') else a
          for a in command[3:]]
  proc = subprocess.run([sys.executable, '-m', 'famus_jax.main', *args, *README_BUDGET],
                        cwd=REPO, env={**_env(), **xla_cache_env}, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'famus_jax: done' in proc.stdout
  with open(tmp_path / 'run' / 'summary.json') as f:
    assert json.load(f)['status'] == 'completed'
