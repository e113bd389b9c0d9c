"""Training entry point: `train_and_evaluate(config, workdir) -> summary`.

`config.algorithm` picks the training algorithm from `ALGORITHMS`:

    'standard'  one network, the method's iteration on every training batch,
                validation batches from the clean meta set
                (`famus_jax.training.standard`; configs/digits.py, cifar10.py, ...)
    'alg2'      Algorithm 2 of the FaMUS supplement: two co-trained networks,
                pseudo-clean validation sets from a GMM on the training losses
                (`famus_jax.alg2.cotrain`; configs/*_alg2.py)

Both run on the one `Trainer` (`famus_jax.training.trainer`) inside the run
harness `Run` (`famus_jax.training.run`). The workdir holds `config.json`,
`checkpoints/` (orbax: train states, data iterator states and the per-example
record, the last `train.keep_checkpoints`), `metrics.jsonl`, `eval.jsonl`,
`tensorboard/`, and at the end `summary.json`, `learning_curves.png` and
`label_issues.csv` (the training labels ranked by how likely each is wrong).
Re-running the same command resumes from the latest checkpoint and ends
exactly where an uninterrupted run ends; SIGTERM (or Ctrl-C) saves a
checkpoint before exiting; a non-finite loss stops the run naming the step
and keeps the last good checkpoint.
"""

from __future__ import annotations

from typing import Sequence

from famus_jax.alg2.cotrain import CoTraining
from famus_jax.training import config as config_lib
from famus_jax.training.algorithm import Algorithm
from famus_jax.training.checks import NonFiniteLossError, RecompilationError
from famus_jax.training.hooks import Hook
from famus_jax.training.run import Run
from famus_jax.training.signals import Preempted
from famus_jax.training.standard import Standard
from famus_jax.training.trainer import Trainer

__all__ = ['ALGORITHMS', 'NonFiniteLossError', 'Preempted', 'RecompilationError',
           'Trainer', 'algorithm_class', 'train_and_evaluate']

ALGORITHMS: dict[str, type[Algorithm]] = {'standard': Standard, 'alg2': CoTraining}


def algorithm_class(config) -> type[Algorithm]:
  """`ALGORITHMS[config.algorithm]`; `ConfigError` naming the choices."""
  config_lib.choice(config, 'algorithm', sorted(ALGORITHMS))
  return ALGORITHMS[config.algorithm]


def train_and_evaluate(config, workdir: str, *, hooks: Sequence[Hook] = (),
                       splits=None) -> dict:
  """Trains and evaluates as `config` says, in `workdir`; returns the summary.

  `hooks`: extra plug-ins of the trainer (`famus_jax.training.hooks.Hook`),
  e.g. an experiment's capture of per-iteration values; `splits`: data splits
  to use instead of `config.data`'s.

  Raises:
    ConfigError: a bad config value (one line naming the field), before any
      compile.
    famus_jax.data.DatasetMissingError: the data set is not where the config
      says (one-line how-to).
    NonFiniteLossError: the loss became NaN/Inf (the step is named; the last
      good checkpoint is kept).
    Preempted: SIGTERM/SIGINT; a checkpoint was saved.
  """
  cls = algorithm_class(config)
  cls.validate(config)
  with Run(config, workdir, resumable=cls.resumable) as run:
    return Trainer(run, cls(config), splits=splits, hooks=hooks).fit()
