"""The run harness: the parts of a run that are not its training algorithm.

    with Run(config, workdir) as run:
      splits = run.load_dataset()
      ...                      # build, train (famus_jax.training.trainer)
      run.out.write_summary(summary)

`Run` composes, each with one job: the `Workdir` (lock, resume guard,
`config.json`, staged data files, log file), the device mesh, the
`Checkpointer` (`workdir/checkpoints`), the SIGTERM/SIGINT `StopFlag`, the
`Outputs` (writers, progress bar, summary files) and the `FiniteGuard`
(NaN/Inf stop naming the last good checkpoint). It also places batches on the
mesh and evaluates any `eval_fn` over padded batches of a split. Leaving the
context releases everything, whatever happened.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

from famus_jax import data as data_lib
from famus_jax.training import checkpoint as checkpoint_lib
from famus_jax.training import sharding as sharding_lib
from famus_jax.training import signals
from famus_jax.training.checks import FiniteGuard, NonFiniteLossError
from famus_jax.training.config import ConfigError
from famus_jax.training.outputs import Outputs
from famus_jax.training.workdir import Resources, Workdir


def padded_batches(source, batch_size: int, data_config) -> Iterator[tuple[dict, int]]:
  """(batch, n) over `source` in order, each padded to `batch_size` rows.

  The batch holds 'image', 'label', 'index' and 'mask' (True on the n real
  rows); one shape for the whole pass, so the consumer compiles once.
  """
  loader = data_lib.make_loader(source, batch_size=batch_size, seed=0, shuffle=False,
                                num_epochs=1, drop_remainder=False,
                                num_workers=int(data_config.num_workers),
                                prefetch=int(data_config.prefetch))
  try:
    for b in loader:
      n = b['label'].shape[0]
      host = {'image': b['image'], 'label': b['label'], 'index': b['index'],
              'mask': np.ones((n,), np.bool_)}
      if n < batch_size:
        host = {k: np.concatenate([v, np.zeros((batch_size - n,) + v.shape[1:], v.dtype)])
                for k, v in host.items()}
      yield host, n
  finally:
    loader.close()


def means(totals: dict[str, float]) -> dict[str, float]:
  """Sums over a split divided by its example count ('count')."""
  count = max(float(totals['count']), 1.0)
  return {k: float(v) / count for k, v in totals.items() if k != 'count'}


class Run(Resources):
  """Context manager owning a run's harness.

  Attributes (inside the `with`):
    dir: the `Workdir`; `workdir` its path, `is_main` whether this process
      writes the files.
    mesh: 1-D data-parallel mesh over `config.train.num_devices` devices.
    ckpt: the `Checkpointer` of `workdir/checkpoints`.
    stop: the `StopFlag` (`stop.signum` set by SIGTERM/SIGINT).
    out: the `Outputs`.
    guard: the `FiniteGuard`.
  """

  def __init__(self, config, workdir: str, *, resumable: tuple[str, ...] = ()):
    super().__init__()
    self.config = config
    self.dir = Workdir(config, workdir, resumable=resumable)
    self.workdir, self.is_main = self.dir.path, self.dir.is_main
    self.mesh = self.ckpt = self.stop = self.out = self.guard = None

  def __enter__(self) -> 'Run':
    try:
      self._stack.enter_context(self.dir)
      try:
        self.mesh = sharding_lib.make_mesh(int(self.config.train.num_devices))
      except ValueError as e:
        raise ConfigError(str(e)) from None
      self.ckpt = self.closing(checkpoint_lib.Checkpointer(
          os.path.join(self.workdir, 'checkpoints'),
          keep=int(self.config.train.keep_checkpoints)))
      self.stop = self._stack.enter_context(signals.StopFlag())
      self.out = Outputs(self.workdir, self.is_main, self.config.train.progress,
                         self.closing)
      self.guard = FiniteGuard(self.ckpt)
    except BaseException:
      self._stack.close()  # the lock, the staged data files
      raise
    return self

  def __exit__(self, exc_type, exc, tb):
    if isinstance(exc, NonFiniteLossError):
      self.out.write_failure('non_finite', exc.step, str(exc))
    return super().__exit__(exc_type, exc, tb)

  def load_dataset(self):
    """The data splits of `config.data`; process 0's noise files wait in the
    workdir's staging directory until `dir.write_config()`."""
    try:
      splits = data_lib.load_dataset(self.config.data, int(self.config.seed),
                                     self.dir.staging)
    except data_lib.DataConfigError as e:  # a value the data do not allow
      raise ConfigError(str(e)) from None
    if splits.info.get('noisy_labels_path'):
      splits.info['noisy_labels_path'] = self.dir.file(
          os.path.basename(splits.info['noisy_labels_path']))
    return splits

  @property
  def stop_requested(self) -> Optional[int]:
    """The signal number of a pending SIGTERM/SIGINT, else None."""
    return self.stop.signum

  # -- devices -------------------------------------------------------------------

  def device_batch(self, host: dict, keys: Iterable[str]) -> dict:
    """`host[keys]` as global arrays sharded along the batch axis of the mesh."""
    return sharding_lib.global_batch({k: host[k] for k in keys}, self.mesh)

  def replicate(self, tree):
    """`tree` replicated on every device of the mesh."""
    return sharding_lib.replicate(tree, self.mesh)

  def device_summary(self) -> dict:
    devs = list(self.mesh.devices.flat)
    return {'num_devices': len(devs), 'platform': devs[0].platform,
            'device_kind': devs[0].device_kind, 'process_count': jax.process_count()}

  def evaluate(self, eval_fn: Callable, args: tuple, source, batch_size: int
               ) -> dict[str, float]:
    """Sums of `eval_fn(*args, batch)` over `source` in padded batches.

    `eval_fn` takes a batch {'image', 'label', 'mask'} sharded over the mesh
    and returns sums that ignore the padding rows (with 'count' = Σ mask).
    """
    totals: Optional[dict[str, Any]] = None
    for host, _ in padded_batches(source, batch_size, self.config.data):
      out = eval_fn(*args, self.device_batch(host, ('image', 'label', 'mask')))
      totals = out if totals is None else jax.tree_util.tree_map(jnp.add, totals, out)
    return {k: float(v) for k, v in jax.device_get(totals).items()}

  def common_summary(self, data_info: dict) -> dict:
    """The summary fields every run reports: devices, data, wall time."""
    return {'devices': self.device_summary(), 'wall_time_s': self.out.wall_time_s,
            'data': {k: data_info.get(k) for k in (
                'name', 'num_train', 'num_meta', 'num_test', 'realised_noise_rate',
                'noise_type') if k in data_info}}
