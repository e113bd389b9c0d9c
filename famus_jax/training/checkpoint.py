"""Checkpoints with orbax-checkpoint: train state + data iterator states.

A checkpoint `workdir/checkpoints/<step>/` holds the `TrainState` (`state/`,
arrays restored with the shardings of the state they are restored into) and
the JSON states of the data loaders (`data/`). Orbax writes each checkpoint
into a temporary directory and renames it when complete, so a run killed
mid-save leaves no half-written step directory (temporary leftovers are removed
when the manager is next opened). Saves are synchronous: when `save` returns
the checkpoint is on disk (no race with donated buffers or SIGTERM).
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Keeps the last `keep` checkpoints under `directory`."""

  def __init__(self, directory: str, keep: int = 3):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=int(keep), create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=False))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict) -> None:
    """Saves (overwrites nothing: a step already saved is left as it is)."""
    if step in self._manager.all_steps():
      return
    self._manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
        force=True)
    self._manager.wait_until_finished()

  def restore(self, like_state: Any, step: Optional[int] = None
              ) -> tuple[Optional[Any], Optional[dict], Optional[int]]:
    """(state, data_state, step) of `step` (default latest), or Nones if none.

    `like_state` (concrete or abstract) gives the tree structure, dtypes and
    shardings of the restored arrays.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      return None, None, None
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like_state)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
    return restored.state, restored.data, step

  def close(self) -> None:
    self._manager.close()
