"""Heavy optional modules, imported on first use.

    plt = lazy.module('matplotlib.pyplot', before=lambda: matplotlib.use('Agg'))
    tfds = lazy.module('tensorflow_datasets')

Names a module-level attribute at the top of the file like any import, but
pays the import (matplotlib, scikit-learn, tensorflow-datasets, TensorBoard's
writer: seconds together) only when a run plots, fits, reads or logs with it,
so that the command line's `--help`, its one-line errors and the runs that do
not need a module stay fast.
"""

from __future__ import annotations

import importlib
import types
from typing import Callable, Optional


class LazyModule(types.ModuleType):
  """A module object that imports the real one on first attribute access."""

  def __init__(self, name: str, before: Optional[Callable[[], None]] = None):
    super().__init__(name)
    self.__dict__['_lazy_before'] = before
    self.__dict__['_lazy_module'] = None

  def _load(self) -> types.ModuleType:
    module = self.__dict__['_lazy_module']
    if module is None:
      if self.__dict__['_lazy_before'] is not None:
        self.__dict__['_lazy_before']()
      module = importlib.import_module(self.__name__)
      self.__dict__['_lazy_module'] = module
    return module

  def __getattr__(self, attr: str):
    return getattr(self._load(), attr)


def module(name: str, before: Optional[Callable[[], None]] = None) -> LazyModule:
  """`name`, imported when an attribute is first read (`before()` first)."""
  return LazyModule(name, before)
