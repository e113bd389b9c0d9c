"""What a user can get wrong or run into ends in one line `famus_jax: error: ...`
(exit code 1) naming the file or field and what to do: config files, values
the data do not allow (checked as soon as the data are read), damaged data
files, a full disk. A run stopped by a full disk resumes exactly once there is
space, in the standard loop and in Algorithm 2."""

import contextlib
import errno
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import types

import jax
import jax.numpy as jnp
from absl import flags
from ml_collections import config_flags
import pytest

from famus_jax import main as main_lib
from famus_jax import train
from famus_jax.training import build as build_lib
from famus_jax.training import checkpoint as checkpoint_lib
from famus_jax.training import config_file
from famus_jax.training import lock as lock_lib
from famus_jax.training import logfile
from famus_jax.training import metrics as metrics_lib
from famus_jax.training import writes
from famus_jax.training.config import ConfigError
from test_alg2 import _tiny_config as tiny_alg2_config
from test_robustness import (_assert_one_line_error, _env, _main, _tiny_cmd,
                             _write_fashion_idx)
from test_train_support import REPO, read_jsonl, tiny_config

# ---------------------------------------------------------------------------
# Config files.

CONFIG_FILES = {  # contents -> the message (FILE: the file's path)
    'syntax_error': ('def get_config(:\n  pass\n',
                     'FILE, line 1: syntax error (invalid syntax); fix the config file'),
    'no_get_config': ('X = 1\n', 'FILE: defines no get_config(); a config file defines '
                      'get_config() returning an ml_collections.ConfigDict (e.g. '
                      'configs/digits.py)'),
    'raises': ('def get_config():\n  raise RuntimeError("boom")\n',
               'FILE (line 2): get_config() failed with RuntimeError: boom; fix the '
               'config file'),
    'bad_import': ('import no_such_module_xyz\n',
                   "FILE (line 1): ModuleNotFoundError: No module named "
                   "'no_such_module_xyz'; fix the config file"),
    'returns_none': ('def get_config():\n  return None\n',
                     'FILE: get_config() returned NoneType, not an '
                     'ml_collections.ConfigDict (e.g. configs/digits.py)'),
}


def _config_file(tmp_path, case):
  path = tmp_path / f'{case}.py'
  path.write_text(CONFIG_FILES[case][0])
  return str(path), CONFIG_FILES[case][1].replace('FILE', str(path))


@pytest.mark.parametrize('case', sorted(CONFIG_FILES))
def test_config_file_errors_name_the_file(tmp_path, case):
  path, message = _config_file(tmp_path, case)
  with pytest.raises(config_file.ConfigFileError) as e:
    config_file.load_config_file(path)
  assert str(e.value) == message


def test_config_file_parameter_and_nested_errors(tmp_path):
  digits = os.path.join(REPO, 'configs', 'digits.py')
  with pytest.raises(config_file.ConfigFileError) as e:
    config_file.load_config_file(digits, 'foo')
  assert str(e.value) == (f'--config={digits}:foo: get_config() of {digits} takes no '
                          f'parameter; use --config={digits}')
  swept = tmp_path / 'swept.py'
  swept.write_text('from famus_jax.training.config import load_config\n'
                   'def get_config(k):\n'
                   '  c = load_config("digits.py", relative_to=%r)\n'
                   '  c.meta.k = int(k)\n  return c\n' % digits)
  assert config_file.load_config_file(str(swept), '7').meta.k == 7
  with pytest.raises(config_file.ConfigFileError, match=r'needs a parameter; use '
                     rf'--config={swept}:VALUE$'):
    config_file.load_config_file(str(swept))
  broken, _ = _config_file(tmp_path, 'syntax_error')  # a sibling it builds on
  swept.write_text(f'from famus_jax.training.config import load_config\n'
                   f'def get_config():\n  return load_config({broken!r})\n')
  with pytest.raises(config_file.ConfigFileError) as e:
    config_file.load_config_file(str(swept))
  assert str(e.value).startswith(f'{broken}, line 1: syntax error')


def _parse(*argv):
  """`config_file.parse_flags` on flags defined as famus_jax.main defines them."""
  fv, argv = flags.FlagValues(), ['famus_jax', *argv]
  config_flags.DEFINE_config_file('config', None, '', flag_values=fv, lock_config=True,
                                  sys_argv=argv)  # where the overrides are read from
  flags.DEFINE_string('workdir', None, '', flag_values=fv)
  flags.mark_flags_as_required(['config', 'workdir'], flag_values=fv)
  config_file.parse_flags(fv, argv)
  return fv


@pytest.mark.parametrize('argv,message', [
    (('--config=configs/digits.py', '--workdir=/w', '--config.seed=abc'),
     "--config.seed=abc: config.seed takes a value of type int (invalid literal for "
     "int() with base 10: 'abc')"),
    (('--config=configs/digits.py', '--workdir=/w', 'extra'),
     "unexpected argument 'extra': every setting is a flag (--config=FILE, "
     "--workdir=DIR, --config.FIELD=VALUE)"),
    (('--config=configs/digits.py',), '--workdir is required (e.g. '
     '--workdir=/tmp/famus_digits)'),
    (('--config=configs/digits.py', '--workdir=/w', '--config.meta.model_kwargs.x=1'),
     '--config.meta.model_kwargs.x: no such config field (every field and its default: '
     'famus_jax/training/config.py, base_config())'),
])
def test_command_line_errors_are_one_line(monkeypatch, argv, message):
  monkeypatch.chdir(REPO)
  with pytest.raises(config_file.CommandLineError) as e:
    _parse(*argv)
  assert str(e.value) == message


@pytest.mark.parametrize('case', ['syntax_error', 'no_get_config'])
def test_config_file_error_on_the_command_line(tmp_path, case):
  path, message = _config_file(tmp_path, case)
  workdir = tmp_path / 'run'
  _assert_one_line_error(_main(f'--config={path}', f'--workdir={workdir}'), message)
  assert not os.path.exists(workdir)


# ---------------------------------------------------------------------------
# Values the data do not allow, damaged data files.


def _no_model(*args, **kwargs):
  raise AssertionError('a model was built before the data checks')


@pytest.mark.parametrize('loop,field,value,message', [
    ('standard', 'data.meta_per_class', 1000,
     'config.data.meta_per_class=1000: class 8 has only 131 examples to draw the clean '
     'meta set from (the fewest of any class); must be <= 131'),
    ('standard', 'data.batch_size', 100000,
     'config.data.batch_size=100000: larger than the training split (1247 examples); '
     'must be <= 1247'),
    ('alg2', 'data.batch_size', 100000,
     'config.data.batch_size=100000: larger than the training split (1347 examples); '
     'must be <= 1347'),
])
def test_data_checks_come_before_any_model_or_compile(tmp_path, monkeypatch, loop, field,
                                                      value, message):
  monkeypatch.setattr(build_lib, 'build_model', _no_model)
  if loop == 'standard':
    c = tiny_config()
    c[field.split('.')[0]][field.split('.')[1]] = value
  else:
    c = tiny_alg2_config(**{field: value})
  workdir = tmp_path / 'run'
  with pytest.raises(ConfigError) as e:
    train.train_and_evaluate(c, str(workdir))
  assert str(e.value) == message
  assert not os.path.exists(workdir)


@pytest.mark.parametrize('overrides,message', [
    ({'seed': -1}, 'config.seed=-1: must be an integer in [0, inf]'),
    ({'algorithm': 'co_teaching'},
     "config.algorithm='co_teaching': must be one of 'alg2', 'standard'"),
    ({'algorithm': 'alg2'},
     'config.alg2: missing; build the config with famus_jax.alg2.config.with_alg2()'),
    ({'model__kwargs__width': 0}, "config.model (name='digits_mlp', kwargs={'depth': 2, "
     "'width': 0}): width must be a positive int, got 0"),
    ({'model__name': 'inception_resnet_v2', 'model__kwargs': {}, 'meta__method': 'ce'},
     "config.model.name='inception_resnet_v2' cannot take the images of "
     "config.data.name='digits' (shape (8, 8, 1)): Inception-ResNet-v2 needs inputs >= "
     "75x75, got (1, 8, 8, 1)"),
])
def test_values_that_used_to_fail_inside_numpy_or_jax(tmp_path, overrides, message):
  import ml_collections  # pylint: disable=g-import-not-at-top
  overrides = {k: ml_collections.ConfigDict(v) if isinstance(v, dict) else v
               for k, v in overrides.items()}
  with pytest.raises(ConfigError) as e:
    train.train_and_evaluate(tiny_config(**overrides), str(tmp_path / 'run'))
  assert str(e.value) == message
  assert not os.path.exists(tmp_path / 'run')


def test_impossible_meta_set_on_the_command_line(tmp_path):
  workdir = tmp_path / 'run'
  _assert_one_line_error(
      _main('--config=configs/digits.py', f'--workdir={workdir}',
            '--config.data.meta_per_class=1000'),
      'famus_jax: error: config.data.meta_per_class=1000: class 8 has only 131 '
      'examples to draw the clean meta set from (the fewest of any class); must be '
      '<= 131')
  assert not os.path.exists(workdir)


def test_truncated_idx_file_on_the_command_line(tmp_path):
  folder = _write_fashion_idx(tmp_path / 'fashion', train_per_class=20, test_per_class=2)
  images = folder / 'train-images-idx3-ubyte.gz'
  import gzip  # pylint: disable=g-import-not-at-top
  raw = gzip.decompress(images.read_bytes())
  images.write_bytes(gzip.compress(raw[:len(raw) // 2]))
  workdir = tmp_path / 'run'
  _assert_one_line_error(
      _main('--config=configs/fashion_mnist.py', f'--workdir={workdir}',
            f'--config.data.data_dir={folder}'),
      f'famus_jax: error: {images}: truncated or padded IDX file (78392 data bytes for '
      'shape (200, 28, 28), expected 156800); replace it with the original file')
  assert not os.path.exists(workdir)


# ---------------------------------------------------------------------------
# A full disk.


class SmallDisk:
  """A directory whose file system fills up on demand: a tmpfs of `size` (root),
  else, where mounting is not permitted, orbax's file writes raise ENOSPC once
  `fill()` is called (its JSON items, written by its worker threads)."""

  def __init__(self, path, monkeypatch, size='8m', mount=True):
    self.path, self.full = str(path), False
    os.makedirs(self.path)
    self.mounted = mount and subprocess.run(
        ['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', self.path],
        capture_output=True).returncode == 0
    if not self.mounted:
      from etils.epath import abstract_path  # pylint: disable=g-import-not-at-top
      real = abstract_path.Path.write_text

      def write_text(path, *args, **kwargs):
        if self.full and str(path).startswith(self.path):
          raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, *args, **kwargs)
      monkeypatch.setattr(abstract_path.Path, 'write_text', write_text)

  def fill(self, leave=64 * 1024):
    """Leaves `leave` bytes free (a tmpfs), or makes orbax's writes fail."""
    self.full = True
    if self.mounted:
      with open(os.path.join(self.path, 'ballast'), 'wb') as f:
        f.write(b'\0' * max(shutil.disk_usage(self.path).free - leave, 0))

  def free(self):
    self.full = False
    if self.mounted:
      os.remove(os.path.join(self.path, 'ballast'))

  def close(self):
    if self.mounted:
      subprocess.run(['umount', '-l', self.path], check=True)


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
  disk = SmallDisk(tmp_path / 'disk', monkeypatch)
  yield disk
  disk.close()


def test_write_error_names_path_free_space_and_resume_step(tmp_path):
  ckpts = tmp_path / 'checkpoints'
  for name in ('4', '8', '12.orbax-checkpoint-tmp', 'notes'):
    (ckpts / name).mkdir(parents=True)
  free = writes.free_space(str(tmp_path))
  assert free.split()[1] in ('bytes', 'KB', 'MB', 'GB', 'TB')
  full = writes.WriteError(str(ckpts / '12'), OSError(errno.ENOSPC, 'x'), str(ckpts))
  assert str(full) == (
      f'cannot write {ckpts}/12: No space left on device ({free} free there); the next '
      f'run resumes from the checkpoint of step 8 ({ckpts}/8): free some space, then '
      're-run the same command')
  tensorstore = ValueError('RESOURCE_EXHAUSTED: Error writing local file "x": Failed to '
                           "write 171 bytes: No space left on device [os_error_code='28']")
  assert 'x: No space left on device (' in str(writes.WriteError('x', tensorstore))
  read_only = writes.WriteError(str(tmp_path / 'a'), OSError(errno.EROFS, 'x'),
                                str(tmp_path / 'none'))
  assert str(read_only).endswith(
      'Read-only file system (' + free + ' free there); no checkpoint was saved yet, so '
      'the next run starts from the beginning: make the file system writable, then '
      're-run the same command')


@pytest.mark.skipif(not os.path.exists('/dev/full'), reason='no /dev/full')
def test_metric_rows_on_a_full_device():
  writer = metrics_lib.JsonlWriter('/dev/full')  # every write: ENOSPC
  with pytest.raises(writes.WriteError, match='^cannot write /dev/full: No space left on '
                     'device'):
    writer.write({'step': 1, 'loss': 0.5})
  writer.close()  # the failed row is dropped quietly


def test_tensorboard_thread_failure_is_raised_by_the_next_write(tmp_path, monkeypatch,
                                                                capfd):
  from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
  writer = metrics_lib.MetricWriter(str(tmp_path))

  def full(self, data):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(record_writer.RecordWriter, 'write', full)
  writer.write_train({'step': 1, 'loss': 0.5})  # queued for TensorBoard's thread
  start = time.time()
  while writer._thread_error is None and time.time() - start < 30:  # pylint: disable=protected-access
    time.sleep(0.01)
  with pytest.raises(writes.WriteError, match=f'^cannot write {tmp_path}/tensorboard: '
                     'No space left on device'):
    writer.write_train({'step': 2, 'loss': 0.4})
  writer.close()
  assert threading.excepthook is not writer._thread_failed  # pylint: disable=protected-access
  assert capfd.readouterr().err == ''  # no thread traceback on the terminal
  assert [r['step'] for r in read_jsonl(tmp_path / 'metrics.jsonl')] == [1]


def _small_state(offset):
  return {'w': jnp.arange(600, dtype=jnp.float32) + offset, 'rng': jax.random.PRNGKey(0)}


@pytest.mark.parametrize('mount', [True, False], ids=['tmpfs', 'enospc_writes'])
def test_checkpoint_save_on_a_full_disk(tmp_path, monkeypatch, capfd, mount):
  """The failed save is one `WriteError`, its partial files are gone, orbax's
  thread tracebacks are in the log file (DEBUG), not on the terminal, and the
  older checkpoint is restored once there is space."""
  disk = SmallDisk(tmp_path / 'disk', monkeypatch, mount=mount)
  directory = os.path.join(disk.path, 'checkpoints')
  log = logfile.LogFile(str(tmp_path / 'log.txt'))
  try:
    with contextlib.closing(checkpoint_lib.Checkpointer(directory)) as ckpt:
      ckpt.save(1, _small_state(1), {'at': 1})
      disk.fill(leave=4096)
      with pytest.raises(writes.WriteError) as e:
        ckpt.save(2, _small_state(2), {'at': 2})
    message = str(e.value)  # names what is on the disk now
    assert sorted(os.listdir(directory)) == ['1']
    disk.free()
    with contextlib.closing(checkpoint_lib.Checkpointer(directory)) as ckpt:
      state, data, step = ckpt.restore(_small_state(0))
  finally:
    log.close()
    disk.close()
  assert message.startswith(f'cannot write {directory}/2: No space left on device (')
  assert f'resumes from the checkpoint of step 1 ({directory}/1)' in message
  assert capfd.readouterr().err == ''
  text = (tmp_path / 'log.txt').read_text()
  assert ' DEBUG ' in text and 'Traceback' in text and 'No space left on device' in text
  assert step == 1 and data == {'at': 1}
  assert (state['w'] == _small_state(1)['w']).all()


FULL_DISK_MAIN = '''
import errno, os, sys
from etils.epath import abstract_path
def write_text(path, *args, **kwargs):
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
abstract_path.Path.write_text = write_text  # orbax's JSON items: ENOSPC
from absl import app
from famus_jax import main
app.run(main.main, flags_parser=main.parse_flags)
'''


def test_full_disk_on_the_command_line(tmp_path, monkeypatch):
  """A 200 KB tmpfs (as root; else every orbax JSON write raises ENOSPC): one
  line naming the checkpoint that failed, the free space and the newest
  complete checkpoint, which is the next run's start; no partial files."""
  disk = SmallDisk(tmp_path / 'disk', monkeypatch, size='200k')
  workdir = os.path.join(disk.path, 'run')
  args = _tiny_cmd(workdir, **{'optim.num_steps': 12, 'train.eval_every': 0})
  try:
    cmd = ([sys.executable, '-m', 'famus_jax.main'] if disk.mounted
           else [sys.executable, '-c', FULL_DISK_MAIN])
    proc = subprocess.run(cmd + args, cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=600)
    _assert_one_line_error(proc)
    ckpts = os.path.join(workdir, 'checkpoints')
    kept = os.listdir(ckpts)  # complete checkpoints only
    assert all(name.isdigit() for name in kept), kept
    resume = (f'the next run resumes from the checkpoint of step {max(kept, key=int)} '
              f'({ckpts}/{max(kept, key=int)})' if kept else
              'no checkpoint was saved yet, so the next run starts from the beginning')
    assert re.fullmatch(
        rf'famus_jax: error: cannot write {ckpts}/(4|8|12): No space left on device '
        rf'\([0-9.]+ (bytes|KB) free there\); {re.escape(resume)}: free some space, then '
        're-run the same command', proc.stderr.strip()), proc.stderr
  finally:
    disk.close()


@pytest.mark.parametrize('error', ['write_error', 'os_error', 'preempted'])
def test_main_turns_errors_into_one_line(tmp_path, monkeypatch, capsys, error):
  """Any write (here the summary), wrapped or not, names the checkpoint the next
  run resumes from; a stop by signal exits with 143."""
  (tmp_path / 'checkpoints' / '4').mkdir(parents=True)
  path = str(tmp_path / 'summary.json')
  raised = {'write_error': writes.WriteError(path, OSError(errno.ENOSPC, 'x')),
            'os_error': OSError(errno.ENOSPC, 'x', path),
            'preempted': train.Preempted(4, 15)}[error]

  def run(config, workdir):
    raise raised
  monkeypatch.setattr(train, 'train_and_evaluate', run)
  monkeypatch.setattr(logfile, 'set_console_levels', lambda verbose: None)
  monkeypatch.setattr(main_lib, '_CONFIG', types.SimpleNamespace(value=tiny_config()))
  monkeypatch.setattr(main_lib, '_WORKDIR', types.SimpleNamespace(value=str(tmp_path)))
  with pytest.raises(SystemExit) as e:
    main_lib.main(['famus_jax'])
  if error == 'preempted':
    assert (e.value.code, capsys.readouterr().err) == (143, (
        'famus_jax: stopped by signal SIGTERM at step 4; checkpoint saved, re-run the '
        'same command to continue\n'))
    return
  assert (e.value.code, capsys.readouterr().err) == (1, (
      f'famus_jax: error: cannot write {path}: No space left on device '
      f'({writes.free_space(path)} free there); the next run resumes from the checkpoint '
      f'of step 4 ({tmp_path}/checkpoints/4): free some space, then re-run the same '
      'command\n'))


def test_full_disk_at_the_start_names_the_lock_file(tmp_path, monkeypatch):
  def full(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(lock_lib.os, 'pwrite', full)
  workdir = tmp_path / 'new' / 'run'
  with pytest.raises(OSError) as e:
    lock_lib.WorkdirLock(str(workdir)).acquire()
  assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(workdir / 'run.lock'))
  assert not os.path.exists(tmp_path / 'new')  # the workdir it made is gone again


def _fill_after_save(monkeypatch, disk, when):
  """The disk fills up right after the checkpoint of step `when` is saved."""
  save = checkpoint_lib.Checkpointer.save

  def saving(self, step, state, data_state, **kwargs):
    save(self, step, state, data_state, **kwargs)
    if step == when and not disk.full:
      disk.fill()
  monkeypatch.setattr(checkpoint_lib.Checkpointer, 'save', saving)


def _fill_before_second_save(monkeypatch, disk):
  """The disk is full when the second checkpoint is saved."""
  save, saves = checkpoint_lib.Checkpointer.save, []

  def saving(self, step, state, data_state, **kwargs):
    saves.append(step)
    if len(saves) == 2 and not disk.full:
      disk.fill(leave=0)
    save(self, step, state, data_state, **kwargs)
  monkeypatch.setattr(checkpoint_lib.Checkpointer, 'save', saving)


def _rows(path, skip=('step_time_s', 'steps_per_s', 'compiled', 'epoch_time_s')):
  return [{k: v for k, v in r.items() if k not in skip} for r in read_jsonl(path)]


def test_run_stopped_by_a_full_disk_resumes_exactly(small_disk, monkeypatch):
  """The disk fills after the checkpoint of step 4; the final checkpoint (step 8)
  fails, after the run wrote its rows up to step 8 (those of an uninterrupted
  run). With space again, the same command resumes at 4 and writes the same rows."""
  c = tiny_config('mwnet', 'all', steps=8)
  workdir = os.path.join(small_disk.path, 'run')
  _fill_after_save(monkeypatch, small_disk, 4)
  with pytest.raises(writes.WriteError) as e:
    train.train_and_evaluate(c, workdir)
  assert str(e.value).startswith(f'cannot write {workdir}/checkpoints/8: No space left')
  uninterrupted = {f: _rows(os.path.join(workdir, f)) for f in ('metrics.jsonl',
                                                               'eval.jsonl')}
  assert uninterrupted['eval.jsonl'][-1]['step'] == 8
  small_disk.free()
  summary = train.train_and_evaluate(c, workdir)
  assert summary['resumed_from'] == 4
  assert summary['final'] == uninterrupted['eval.jsonl'][-1]  # exact floats
  for name, rows in uninterrupted.items():
    assert _rows(os.path.join(workdir, name)) == rows, name


def test_alg2_stopped_by_a_full_disk_resumes_exactly(small_disk, monkeypatch):
  """Algorithm 2: the disk is full when the checkpoint of epoch 2 is saved, after
  its row (with the final evaluation) was written; the re-run resumes after
  epoch 1 and writes the same row."""
  c = tiny_alg2_config()
  workdir = os.path.join(small_disk.path, 'run')
  _fill_before_second_save(monkeypatch, small_disk)
  with pytest.raises(writes.WriteError) as e:
    train.train_and_evaluate(c, workdir)
  uninterrupted = _rows(os.path.join(workdir, 'alg2_epochs.jsonl'))
  assert [r['epoch'] for r in uninterrupted] == [0, 1]
  epoch = uninterrupted[0]['step']  # iterations per epoch
  assert str(e.value).startswith(f'cannot write {workdir}/checkpoints/{2 * epoch}: '
                                 'No space left')
  small_disk.free()
  summary = train.train_and_evaluate(c, workdir)
  assert summary['resumed_from'] == epoch
  assert _rows(os.path.join(workdir, 'alg2_epochs.jsonl')) == uninterrupted
  assert summary['final'] == {k: v for k, v in uninterrupted[-1].items()
                              if k in summary['final']}
