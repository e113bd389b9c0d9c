"""Command-line entry point.

  python -m famus_jax.main --config=configs/digits.py --workdir=/tmp/digits
  python -m famus_jax.main --config=configs/cifar10.py --workdir=runs/c10 \\
      --config.meta.sampler=all --config.data.noise_rate=0.6

A finished run also ranks its training labels by how likely each is wrong
(`label_issues.csv`; `python -m famus_jax.inspect --workdir=...` shows them).

`config.algorithm` picks the training algorithm (`famus_jax.train.ALGORITHMS`:
'standard', or 'alg2' in configs/*_alg2.py). Any config field can be overridden
(`--config.meta.k=8`); `--config=FILE.py:PARAM` calls `get_config('PARAM')`.
The same command on the same `--workdir` resumes from its latest checkpoint.
Exit codes: 0 done; 1 with one line `famus_jax: error: ...` for what a user
can cause or meet (command line, config file and values, missing or damaged
data, a workdir that is unusable, busy, full or read-only, a non-finite loss,
no intact checkpoint); 143 stopped by SIGTERM or Ctrl-C after a checkpoint.
"""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from famus_jax import train
from famus_jax.analysis import label_issues
from famus_jax.data import DataFileError, DatasetMissingError
from famus_jax.training import checkpoint, config, config_file, lock, logfile, writes

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, e.g. configs/digits.py.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics '
                               'and the summary; an existing run there is resumed.')
flags.mark_flags_as_required(['config', 'workdir'])


def _fail(message, code: int = 1, prefix: str = 'famus_jax: error: '):
  print(f'{prefix}{message}', file=sys.stderr)
  sys.exit(code)


def parse_flags(argv):
  """absl's flag parsing with one-line errors (exit 1) instead of tracebacks."""
  try:
    return config_file.parse_flags(flags.FLAGS, argv)
  except (config_file.CommandLineError, config_file.ConfigFileError) as e:
    _fail(e)


def main(argv):
  del argv  # `parse_flags` refused any extra argument
  logfile.set_console_levels(verbose=flags.FLAGS['verbosity'].present)
  workdir = _WORKDIR.value
  checkpoints = os.path.join(os.path.abspath(workdir), 'checkpoints')
  try:
    lock.check_workdir(workdir)
    summary = train.train_and_evaluate(_CONFIG.value, workdir)
  except (config.ConfigError, DatasetMissingError, DataFileError, train.NonFiniteLossError,
          lock.WorkdirError, checkpoint.CheckpointError) as e:
    if isinstance(e, writes.WriteError) and e.checkpoints is None:
      e.checkpoints = checkpoints  # names the checkpoint the next run resumes from
    _fail(e)
  except OSError as e:  # a write no writer wrapped (outside the workdir, say)
    if e.errno not in writes.FILE_SYSTEM_ERRNOS:
      raise
    _fail(writes.WriteError(e.filename or workdir, e, checkpoints))
  except train.Preempted as e:
    _fail(e, 143, 'famus_jax: ')
  for line in done_lines(summary, workdir):
    print(line)


def done_lines(summary: dict, workdir: str) -> list[str]:
  """What a finished run prints: model selection, then the final result."""
  fmt = lambda v: f'{v:.4f}' if isinstance(v, float) else str(v)
  lines = []
  selected = summary.get('selected_by_meta_set')
  if selected:
    lines.append(f"famus_jax: best clean meta-set accuracy {fmt(selected['meta_accuracy'])} "
                 f"at step {selected['step']}: test accuracy "
                 f"{fmt(selected['test_accuracy'])}")
  noise = (summary.get('data') or {}).get('realised_noise_rate')
  noise = ('' if noise is None else f'; realised noise rate {fmt(noise)} (the fraction of '
           'training labels that differ from the true label)')
  lines.append(f"famus_jax: done, step {summary.get('step')}: final test accuracy "
               f"{fmt(summary.get('final_test_accuracy'))} (highest of all evaluations "
               f"{fmt(summary.get('best_test_accuracy'))}, a test-set oracle){noise}; "
               f"summary in {workdir}/summary.json")
  issues = summary.get('label_issues')
  if issues:
    lines.append(f"famus_jax: {label_issues.describe(issues)}; ranked in "
                 f"{os.path.join(workdir, issues['file'])} (see them: python -m "
                 f"famus_jax.inspect --workdir={workdir})")
  return lines


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
