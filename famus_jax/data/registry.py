"""The data sets by `config.data.name`: `DATASETS[name](data_config, seed, workdir)
-> DataSplits`, filled by `@register(name)` in `famus_jax.data.datasets` (imported
with the package, so the names are known wherever a data module is)."""

from __future__ import annotations

from typing import Callable

DATASETS: dict[str, Callable] = {}


def register(name: str):
  """Decorator: the builder of data set `name`."""
  def wrap(fn):
    DATASETS[name] = fn
    return fn
  return wrap
