"""Data parallelism with `jax.sharding`: batch sharded, state replicated.

One mesh axis, 'data', over the devices. The train state is replicated
(`NamedSharding(mesh, P())`) and every batch is split along its first axis
(`NamedSharding(mesh, P('data'))`); XLA's SPMD partitioner inserts the
gradient all-reduces and the batch-norm statistic reductions, so the program
computes exactly what one device would (up to reduction order).

Several hosts: call `jax.distributed.initialize()` before anything else on
every host; `jax.devices()` then lists the devices of all hosts, the mesh spans
them, and `global_batch` makes one global array from each host's slice of the
batch (every host runs the same loader with the same seed and keeps the rows
`[process_index × B/P, (process_index + 1) × B/P)`).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(num_devices: int = 0, devices: Optional[list] = None) -> Mesh:
  """1-D mesh over the first `num_devices` devices (0 = all, across hosts)."""
  devices = list(devices if devices is not None else jax.devices())
  if num_devices:
    if num_devices > len(devices):
      raise ValueError(f'config.train.num_devices={num_devices}: only {len(devices)} '
                       'devices are available')
    if jax.process_count() > 1 and num_devices != len(devices):
      raise ValueError('config.train.num_devices must be 0 (all) on several hosts')
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree (host or device arrays) replicated on the mesh."""
  return jax.device_put(tree, replicated(mesh))


def global_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict:
  """Global arrays sharded along the batch axis from this host's batch.

  `batch` is the full global batch as every host's loader yields it; each
  host contributes its contiguous slice.
  """
  sharding = batch_sharding(mesh)
  pc, pi = jax.process_count(), jax.process_index()
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    n = value.shape[0]
    local = value if pc == 1 else value[pi * (n // pc):(pi + 1) * (n // pc)]
    out[key] = jax.make_array_from_process_local_data(sharding, local, value.shape)
  return out
