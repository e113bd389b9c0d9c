"""Command-line entry point.

  python -m famus_jax.main --config=configs/digits.py --workdir=/tmp/digits
  python -m famus_jax.main --config=configs/cifar10.py --workdir=runs/c10 \\
      --config.meta.sampler=all --config.data.noise_rate=0.6

Configs with an enabled `alg2` section (configs/*_alg2.py) run Algorithm 2
(`famus_jax.alg2.train_and_evaluate`), all others the standard loop
(`famus_jax.train.train_and_evaluate`).

Every config field can be overridden (`--config.meta.k=8`). Re-running a
command with the same `--workdir` resumes from its latest checkpoint. Exit
codes: 0 done; 1 with a one-line error on stderr for a bad command line
(unknown config field, with the nearest field name; missing config file), a
bad config value, missing data, a workdir that is a file, not writable or in
use by another run, a non-finite loss or no intact checkpoint; 143 stopped by
SIGTERM or Ctrl-C after saving a checkpoint.
"""

import difflib
import importlib.util
import logging
import os
import sys

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, e.g. configs/digits.py.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics '
                               'and the summary; an existing run there is resumed.')
flags.mark_flags_as_required(['config', 'workdir'])


class UsageFailure(Exception):
  """A bad command line: one line for stderr, exit code 1."""


def _flag_value(argv, name):
  """The value of `--name=V` or `--name V` in `argv` (the last one), or None."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{name}='):
      value = arg.split('=', 1)[1]
    elif arg == f'--{name}' and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _config_file(argv):
  """The `--config` file (without a `:parameter` suffix), checked to exist."""
  path = _flag_value(argv, 'config')
  if path is None:
    return None
  if not os.path.isfile(path) and ':' in path:
    path = path.split(':', 1)[0]
  if not os.path.isfile(path):
    raise UsageFailure(f'--config={path}: no such config file (the configs are '
                       'configs/*.py, e.g. --config=configs/digits.py)')
  return path


def _load_config_file(path, argv):
  spec = importlib.util.spec_from_file_location('famus_cli_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  param = _flag_value(argv, 'config')
  param = param.split(':', 1)[1] if ':' in param and not os.path.isfile(param) else None
  return module.get_config(param) if param is not None else module.get_config()


def _field_names(node, prefix=''):
  out = []
  for key in node.keys():
    out.append(prefix + key)
    if isinstance(node[key], ml_collections.ConfigDict):
      out.extend(_field_names(node[key], f'{prefix}{key}.'))
  return out


def _unknown_override(argv, path):
  """A one-line message for the first `--config.X` naming no field, or None."""
  config = _load_config_file(path, argv)
  names = _field_names(config)
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    dotted = arg[len('--config.'):].split('=', 1)[0]
    if dotted in names:
      continue
    parent = dotted.rsplit('.', 1)[0] if '.' in dotted else ''
    if parent and parent in names and not isinstance(
        _lookup(config, parent), ml_collections.ConfigDict):
      return f'--config.{dotted}: config.{parent} is a value, it has no fields'
    depth = dotted.count('.')
    close = difflib.get_close_matches(
        dotted, [n for n in names if n.count('.') == depth], n=1, cutoff=0.6)
    hint = f'; did you mean {close[0]}?' if close else ''
    from famus_jax.training import config as config_lib  # pylint: disable=g-import-not-at-top
    schema = os.path.relpath(config_lib.__file__)
    return (f'--config.{dotted}: no such config field{hint} (every field and its '
            f'default: {schema}, base_config())')
  return None


def _lookup(config, dotted):
  for part in dotted.split('.'):
    config = config[part]
  return config


def parse_flags(argv):
  """absl's flag parsing with one-line errors (exit 1) instead of tracebacks."""
  try:
    path = _config_file(argv)
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      raise UsageFailure(str(e).strip().splitlines()[0]) from None
    except Exception as e:  # pylint: disable=broad-except  (config_flags' overrides)
      msg = _unknown_override(argv, path) if path else None
      lines = [l for l in str(e).strip().splitlines() if l.strip()]
      raise UsageFailure(msg or f'{type(e).__name__}: {lines[-1] if lines else ""}'
                         ) from None
  except UsageFailure as e:
    print(f'famus_jax: error: {e}', file=sys.stderr)
    sys.exit(1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  # Imported here so that `--help` and flag errors stay fast.
  from famus_jax import train  # pylint: disable=g-import-not-at-top
  from famus_jax.data import DatasetMissingError  # pylint: disable=g-import-not-at-top
  from famus_jax.training.checkpoint import CheckpointError  # pylint: disable=g-import-not-at-top
  from famus_jax.training.config import ConfigError  # pylint: disable=g-import-not-at-top
  from famus_jax.training.lock import WorkdirError, check_workdir  # pylint: disable=g-import-not-at-top

  # orbax and grain log every save at INFO through absl; keep the console for
  # the progress bar and our own messages unless --verbosity asks for more.
  if not flags.FLAGS['verbosity'].present:
    for name in ('absl', 'jax'):
      logging.getLogger(name).setLevel(logging.WARNING)
  logging.getLogger('famus_jax').setLevel(logging.INFO)
  from famus_jax.alg2 import config as alg2_config  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  run = train.train_and_evaluate
  if alg2_config.is_enabled(config):  # Algorithm 2 (pseudo-clean co-training)
    from famus_jax import alg2  # pylint: disable=g-import-not-at-top
    run = alg2.train_and_evaluate
  try:
    check_workdir(_WORKDIR.value)
    summary = run(config, _WORKDIR.value)
  except (ConfigError, DatasetMissingError, train.NonFiniteLossError, WorkdirError,
          CheckpointError) as e:
    print(f'famus_jax: error: {e}', file=sys.stderr)
    sys.exit(1)
  except train.Preempted as e:
    print(f'famus_jax: {e}', file=sys.stderr)
    sys.exit(143)
  for line in done_lines(summary, _WORKDIR.value):
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
  return lines


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
