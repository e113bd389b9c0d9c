"""Command-line entry point.

  python -m famus_jax.main --config=configs/digits.py --workdir=/tmp/digits
  python -m famus_jax.main --config=configs/cifar10.py --workdir=runs/c10 \\
      --config.meta.sampler=all --config.data.noise_rate=0.6

Configs with an enabled `alg2` section (configs/*_alg2.py) run Algorithm 2
(`famus_jax.alg2.train_and_evaluate`), all others the standard loop
(`famus_jax.train.train_and_evaluate`).

Every config field can be overridden (`--config.meta.k=8`). Re-running a
command with the same `--workdir` resumes from its latest checkpoint. Exit
codes: 0 done, 1 bad config / missing data / non-finite loss (one-line error
on stderr), 143 stopped by SIGTERM or Ctrl-C after saving a checkpoint.
"""

import logging
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, e.g. configs/digits.py.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics '
                               'and the summary; an existing run there is resumed.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  # Imported here so that `--help` and flag errors stay fast.
  from famus_jax import train  # pylint: disable=g-import-not-at-top
  from famus_jax.data import DatasetMissingError  # pylint: disable=g-import-not-at-top
  from famus_jax.training.config import ConfigError  # pylint: disable=g-import-not-at-top

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
    summary = run(config, _WORKDIR.value)
  except (ConfigError, DatasetMissingError, train.NonFiniteLossError) as e:
    print(f'famus_jax: error: {e}', file=sys.stderr)
    sys.exit(1)
  except train.Preempted as e:
    print(f'famus_jax: {e}', file=sys.stderr)
    sys.exit(143)
  acc, best = summary.get('final_test_accuracy'), summary.get('best_test_accuracy')
  fmt = lambda v: f'{v:.4f}' if isinstance(v, float) else str(v)
  print(f"famus_jax: done, step {summary.get('step')}: test accuracy {fmt(acc)} "
        f"(best {fmt(best)}); summary in {_WORKDIR.value}/summary.json")


if __name__ == '__main__':
  app.run(main)
