"""Data sets, label noise, meta sets and the grain input pipeline.

Entry points: ``load_dataset(config.data, seed, workdir) -> DataSplits`` and
``make_loader(source, batch_size=..., seed=...)``. See the module docstrings
for the exact semantics.
"""

from famus_jax.data.augment import augment_batch_jax, crop_flip_numpy
from famus_jax.data.config import DataConfigError, default_data_config, validate_data_config
from famus_jax.data.datasets import DATASETS, load_dataset
from famus_jax.data.loader import Loader, NoiseBalancedSampler, make_loader
from famus_jax.data.noise import (apply_noise, asymmetric_noise, noise_report,
                                  pairflip_noise, symmetric_noise, transition_matrix)
from famus_jax.data.sources import (ArraySource, DataFileError, DataSplits,
                                    DatasetMissingError, ImageFileSource, as_arrays,
                                    get_batch)
from famus_jax.data.splits import long_tail_counts, long_tail_indices, split_meta_set


def make_split_loaders(splits, data_config, seed: int, test: bool = True):
  """Convenience: the usual loaders for a DataSplits.

  ``train``: shuffled, augmented (``data_config.augment``), forever, with
  ``splits.train_sampler`` if any; ``meta``: its own shuffle stream, cycling
  forever independently of ``train`` (None without a meta set); ``test``: one
  ordered pass, no augmentation, last partial batch kept (None with
  ``test=False``).
  """
  common = dict(num_workers=int(data_config.num_workers),
                prefetch=int(data_config.prefetch))
  train = make_loader(splits.train, batch_size=int(data_config.batch_size), seed=seed,
                      augment=data_config.augment, sampler=splits.train_sampler,
                      **common)
  meta = None
  if splits.meta is not None:
    meta = make_loader(splits.meta, batch_size=min(int(data_config.meta_batch_size),
                                                   len(splits.meta)),
                       seed=seed + 1, augment=data_config.augment, **common)
  if not test:
    return {"train": train, "meta": meta, "test": None}
  test = make_loader(splits.test, batch_size=int(data_config.eval_batch_size), seed=0,
                     shuffle=False, num_epochs=1, drop_remainder=False, **common)
  return {"train": train, "meta": meta, "test": test}


__all__ = [
    "ArraySource", "DATASETS", "DataConfigError", "DataFileError", "DataSplits",
    "DatasetMissingError", "ImageFileSource",
    "Loader", "NoiseBalancedSampler", "apply_noise", "as_arrays", "asymmetric_noise",
    "augment_batch_jax", "crop_flip_numpy", "default_data_config", "get_batch",
    "load_dataset", "long_tail_counts", "long_tail_indices", "make_loader",
    "make_split_loaders", "noise_report", "pairflip_noise", "split_meta_set",
    "symmetric_noise", "transition_matrix", "validate_data_config",
]
