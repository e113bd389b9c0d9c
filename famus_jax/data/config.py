"""Data configuration: defaults and validation.

Every field lives under ``config.data`` in the experiment configs and can be
overridden from the command line (``--config.data.noise_rate=0.6``).
"""

from __future__ import annotations

import numbers

import ml_collections

from famus_jax.data.augment import AUGMENTATIONS
from famus_jax.data.registry import DATASETS

NOISE_TYPES = ("none", "symmetric", "asymmetric", "pairflip")
AUGMENTS = tuple(AUGMENTATIONS)  # the loader's augmentations (famus_jax.data.augment)
LONG_TAIL_FACTORS = (100, 50, 20, 10)  # the paper's imbalance factors
CNWL_NOISE_LEVELS = (0, 5, 10, 15, 20, 30, 40, 50, 60, 80)  # tfds splits train_XX
CNWL_COLORS = ("red", "blue")
# Data sets whose labels are already noisy (real-world noise): synthetic
# noise is not added on top of them.
REAL_NOISE_SETS = ("cnwl", "clothing1m", "webvision")
# Data sets with a class map for noise_type='asymmetric' (noise.py).
ASYMMETRIC_SETS = ("cifar10", "cifar100", "cifar10_lt", "cifar100_lt", "fashion_mnist")
# What the training split holds: the noisy training images, or only the clean
# meta images (the baseline every meta method must beat).
TRAIN_SPLITS = ("noisy", "meta")


class DataConfigError(ValueError):
  """A ``config.data`` value is not allowed, or does not fit the data read;
  str() is one line naming the field and what is allowed."""


def default_data_config() -> ml_collections.ConfigDict:
  """Defaults for ``config.data`` (the embedded digits run)."""
  c = ml_collections.ConfigDict()
  c.name = "digits"
  # None -> the tfds default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``)
  # for the tfds sets; /usr/share/datasets/fashion-mnist (then the tfds
  # default) for fashion_mnist; the root of the manual directory for clothing1m and
  # webvision (required there).
  c.data_dir = ml_collections.FieldReference(None, field_type=str)
  # Synthetic label noise on the training split.
  c.noise_type = "symmetric"  # none | symmetric | asymmetric | pairflip
  c.noise_rate = 0.4  # in [0, 1]
  # symmetric only: True = the paper's definition, the label is replaced by a
  # class drawn uniformly among *all* classes (so it may stay the same; the
  # realised rate is rate * (C - 1) / C); False = drawn among the other C - 1.
  c.noise_include_true = True
  # Clean meta (validation) set drawn per class from the training split and
  # removed from it; 0 = no meta set (the pseudo-clean path supplies it);
  # -1 = the whole official clean validation list (clothing1m only).
  c.meta_per_class = 10
  # noisy: train on the (noisy) training split; meta: train on the clean meta
  # images only (a baseline; needs meta_per_class >= 1).
  c.train_split = "noisy"
  # Training images kept per class (by true label) after the meta draw, drawn
  # with the seed; 0 = all. A smaller real-data run (e.g. CPU studies); with
  # *_lt it is the head class's count n_max.
  c.train_per_class = 0
  # *_lt only: class i keeps n * mu**i examples, mu = (1 / IF) ** (1 / (C - 1)).
  c.imbalance_factor = 1.0
  c.batch_size = 64
  c.meta_batch_size = 64
  c.eval_batch_size = 256
  # none | crop_flip (4-pixel pad, random crop, horizontal flip) |
  # resize_crop (random crop_size crop + flip of the resized image) |
  # center_crop. 'none' on a large-image set centre-crops.
  c.augment = "none"
  c.num_workers = 0  # grain worker processes; 0 = threads in this process
  c.prefetch = 2  # batches buffered ahead
  # Controlled Noisy Web Labels.
  c.cnwl_noise = 40  # percent; the paper uses 20/40/60/80
  c.cnwl_color = "red"
  c.cnwl_image_size = 32
  # Clothing1M noise-balanced sampler.
  c.clothing1m_batches_per_epoch = 1000
  # Large-image sets: None -> data set default (clothing1m 256/224,
  # webvision 320/299).
  c.resize_size = ml_collections.FieldReference(None, field_type=int)
  c.crop_size = ml_collections.FieldReference(None, field_type=int)
  c.webvision_num_classes = 50
  # ILSVRC12 validation images (folders named by class index 0..49 or by
  # WordNet id); None -> <data_dir>/imagenet/val.
  c.imagenet_val_dir = ml_collections.FieldReference(None, field_type=str)
  c.digits_test_size = 450
  return c


def _number(cfg, field, lo=None, hi=None, integer=False):
  v = cfg[field]
  ok = isinstance(v, numbers.Real) and not isinstance(v, bool)
  if integer:
    ok = ok and float(v) == int(v)
  if ok and lo is not None and v < lo:
    ok = False
  if ok and hi is not None and v > hi:
    ok = False
  if not ok:
    rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
    kind = "an integer" if integer else "a number"
    raise DataConfigError(f"config.data.{field}={v!r}: must be {kind} in {rng}")
  return v


def _choice(cfg, field, allowed):
  v = cfg[field]
  if v not in allowed:
    raise DataConfigError(
        f"config.data.{field}={v!r}: must be one of {', '.join(map(repr, allowed))}")
  return v


def validate_data_config(cfg) -> None:
  """Raises DataConfigError naming the field and the allowed values on bad input."""
  names = sorted(DATASETS)
  if cfg.name not in names:
    raise DataConfigError(
        f"config.data.name={cfg.name!r}: unknown data set; known: {', '.join(names)}")
  _choice(cfg, "noise_type", NOISE_TYPES)
  _number(cfg, "noise_rate", 0.0, 1.0)
  if not isinstance(cfg.noise_include_true, bool):
    raise DataConfigError(
        f"config.data.noise_include_true={cfg.noise_include_true!r}: must be True or False")
  _number(cfg, "meta_per_class", -1, None, integer=True)
  _number(cfg, "imbalance_factor", 1.0, None)
  _number(cfg, "train_per_class", 0, None, integer=True)
  for f in ("batch_size", "meta_batch_size", "eval_batch_size"):
    _number(cfg, f, 1, None, integer=True)
  _choice(cfg, "augment", AUGMENTS)
  _number(cfg, "num_workers", 0, None, integer=True)
  _number(cfg, "prefetch", 0, None, integer=True)
  _choice(cfg, "train_split", TRAIN_SPLITS)
  _validate_combinations(cfg, names)
  _validate_set_fields(cfg)


def _validate_combinations(cfg, names) -> None:
  """Values that the chosen data set does not allow."""
  name = cfg.name
  # Any IF >= 1 works for the *_lt sets (the paper's: LONG_TAIL_FACTORS).
  if not name.endswith("_lt") and cfg.imbalance_factor != 1:
    raise DataConfigError(
        f"config.data.imbalance_factor={cfg.imbalance_factor!r}: only the long-tail "
        f"sets ({', '.join(n for n in names if n.endswith('_lt'))}) take an "
        "imbalance factor; it must be 1 here")
  if name in REAL_NOISE_SETS and cfg.noise_type != "none":
    raise DataConfigError(
        f"config.data.noise_type={cfg.noise_type!r}: {name} has real label noise; "
        "it must be 'none' for this data set")
  if cfg.noise_type == "asymmetric" and name not in ASYMMETRIC_SETS:
    raise DataConfigError(
        f"config.data.noise_type='asymmetric' is defined for {', '.join(ASYMMETRIC_SETS)} "
        f"only, not {name!r}; use 'symmetric' or 'pairflip'")
  if cfg.train_per_class and name in REAL_NOISE_SETS:
    raise DataConfigError(
        f"config.data.train_per_class={cfg.train_per_class!r}: {name} has real label "
        "noise (true labels mostly unknown); it must be 0 (all) for this data set")
  if cfg.train_split == "meta" and (
      name in REAL_NOISE_SETS or cfg.meta_per_class < 1):
    raise DataConfigError(
        f"config.data.train_split='meta' trains on the clean meta images: it needs "
        f"meta_per_class >= 1 (got {cfg.meta_per_class!r}) and a synthetic-noise data "
        f"set (not {name!r})")
  if cfg.meta_per_class == -1 and name != "clothing1m":
    raise DataConfigError(
        "config.data.meta_per_class=-1 (the whole official clean validation list) "
        f"exists for clothing1m only; for {name!r} use an integer >= 0")
  if name == "webvision" and cfg.meta_per_class != 0:
    raise DataConfigError(
        f"config.data.meta_per_class={cfg.meta_per_class!r}: webvision has no clean "
        "training labels to draw a meta set from; it must be 0 (pseudo-clean path)")


def _validate_set_fields(cfg) -> None:
  """The fields that only one data set reads, and the optional image sizes."""
  name = cfg.name
  if name == "cnwl":
    _choice(cfg, "cnwl_noise", CNWL_NOISE_LEVELS)
    _choice(cfg, "cnwl_color", CNWL_COLORS)
    _number(cfg, "cnwl_image_size", 1, None, integer=True)
  if name == "clothing1m":
    _number(cfg, "clothing1m_batches_per_epoch", 1, None, integer=True)
  if name == "webvision":
    _number(cfg, "webvision_num_classes", 1, 1000, integer=True)
  if cfg.resize_size is not None:
    _number(cfg, "resize_size", 1, None, integer=True)
  if cfg.crop_size is not None:
    _number(cfg, "crop_size", 1, None, integer=True)
  if name == "digits":
    _number(cfg, "digits_test_size", 10, 1000, integer=True)
