"""Data-set registry: ``config.data.name`` -> loader returning ``DataSplits``.

Every loader is deterministic in ``seed`` (meta-set draw, long-tail draw,
label noise each use their own stream derived from it); the test split never
depends on it. Order of operations for the synthetic-noise sets: load the
clean training split -> draw the clean meta set from it and remove it ->
(long tail) subsample the rest -> corrupt the rest's labels -> save them.
"""

from __future__ import annotations

import functools
import json
import os

from etils import epy
import numpy as np

from famus_jax.data import idx as idx_lib
from famus_jax.data import noise as noise_lib
from famus_jax.data import splits as splits_lib
from famus_jax.data.config import validate_data_config
from famus_jax.data.loader import NoiseBalancedSampler
from famus_jax.data.registry import DATASETS, register
from famus_jax.data.sources import (ArraySource, DataSplits, DatasetMissingError,
                                    ImageFileSource)

with epy.lazy_imports():  # imported when a data set needs them
  from PIL import Image
  from sklearn import datasets as sk_datasets
  from sklearn import model_selection
  import tensorflow_datasets as tfds



def load_dataset(data_config, seed: int, workdir: str | None = None) -> DataSplits:
  """Validates ``data_config`` and builds the named data set's splits.

  With ``workdir`` the training split's noisy labels go to
  ``workdir/noisy_labels.npz`` and the noise report to
  ``workdir/noise_report.json``.
  """
  validate_data_config(data_config)
  return DATASETS[data_config.name](data_config, int(seed), workdir)


# --------------------------------------------------------------------------
# Shared construction for the in-memory sets.


def _save_noise(workdir, train, report, meta_source_index):
  if workdir is None:
    return None
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "noisy_labels.npz")
  np.savez_compressed(
      path, noisy_labels=train.labels, true_labels=train.true_labels,
      source_index=train.source_index, meta_source_index=meta_source_index)
  with open(os.path.join(workdir, "noise_report.json"), "w") as f:
    json.dump(report, f, indent=1)
  return path


def _class_counts(labels, num_classes):
  labels = np.asarray(labels)
  return np.bincount(labels[labels >= 0], minlength=num_classes).tolist()


def _build_in_memory(name, cfg, seed, workdir, *, images, labels, true_labels,
                     test, num_classes, real_noise=False, info=None,
                     source_index=None, asymmetric_map=None):
  """Meta split, long tail and noise on a full in-memory training split.

  ``labels`` are the observed training labels (the clean ones for the
  synthetic-noise sets, the web labels for CNWL); ``true_labels`` the clean
  ones, -1 where unknown. The meta set is drawn among known true labels.
  """
  full = ArraySource(images, labels, true_labels, source_index)
  rest, meta_idx = splits_lib.split_meta_set(
      full.true_labels, num_classes, int(cfg.meta_per_class), seed)
  meta = None
  if meta_idx.size:
    m = full.subset(meta_idx)
    meta = m.with_labels(m.true_labels)  # clean labels
  train = full.subset(rest)
  per_class = int(cfg.get("train_per_class", 0))
  if name.endswith("_lt") or per_class:
    # class i keeps n_max * mu**i (IF = 1: n_max each); n_max = train_per_class
    # when set, else the smallest class count
    keep = splits_lib.long_tail_indices(
        train.true_labels, num_classes, float(cfg.imbalance_factor), seed,
        n_max=per_class or None)
    train = train.subset(keep)
  if not real_noise:
    noisy, report = noise_lib.apply_noise(
        train.true_labels, num_classes, cfg.noise_type, float(cfg.noise_rate),
        splits_lib.rng_for(seed, splits_lib.STREAM_NOISE).integers(2**31),
        include_true=bool(cfg.noise_include_true), mapping=asymmetric_map)
    train = train.with_labels(noisy)
  else:
    report = noise_lib.noise_report(train.true_labels, train.labels, num_classes)
    report.update(noise_type="real")
  meta_si = meta.source_index if meta is not None else np.zeros((0,), np.int64)
  if cfg.get("train_split", "noisy") == "meta":
    # The clean-meta-only baseline: train on the meta images (clean labels).
    train = meta
    report = noise_lib.noise_report(train.true_labels, train.labels, num_classes)
    report.update(noise_type="none", train_split="meta")
  path = _save_noise(workdir, train, report, meta_si)
  info = dict(info or {})
  info.update(
      name=name, seed=seed, num_train=len(train),
      num_meta=len(meta) if meta is not None else 0, num_test=len(test),
      train_class_counts=_class_counts(train.labels, num_classes),
      train_true_class_counts=_class_counts(train.true_labels, num_classes),
      noisy_labels_path=path, **report)
  return DataSplits(train=train, meta=meta, test=test, num_classes=num_classes,
                    image_shape=tuple(train.images.shape[1:]), info=info)


# --------------------------------------------------------------------------
# digits: scikit-learn's bundled 8x8 images (the embedded default).

DIGITS_SPLIT_SEED = 0  # fixed: the test set never depends on config.seed


@register("digits")
def load_digits(cfg, seed, workdir=None):
  d = sk_datasets.load_digits()
  images = (d.images.astype(np.float32) / 16.0)[..., None]  # (N, 8, 8, 1) in [0, 1]
  labels = d.target.astype(np.int32)
  idx = np.arange(labels.size)
  tr, te = model_selection.train_test_split(
      idx, test_size=int(cfg.digits_test_size), stratify=labels,
      random_state=DIGITS_SPLIT_SEED)
  tr, te = np.sort(tr), np.sort(te)
  test = ArraySource(images[te], labels[te], labels[te], source_index=te)
  # source_index: positions in load_digits().
  return _build_in_memory(
      "digits", cfg, seed, workdir, images=images[tr], labels=labels[tr],
      true_labels=labels[tr], test=test, num_classes=10, source_index=tr)


# --------------------------------------------------------------------------
# fashion_mnist: the four original IDX files (Debian's dataset-fashion-mnist),
# else tfds 'fashion_mnist' prepared as array_record.

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # dataset-fashion-mnist
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _idx_path(folder, stem):
  for name in (stem + ".gz", stem):
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      return path
  return None


def _read_fashion_idx(folder):
  """{'train': (images, labels), 'test': ...} from ``folder``, or None if a file is missing.

  Decoded once per process and set of files (path, size, mtime); the arrays
  are read-only.
  """
  paths = {split: [_idx_path(folder, stem) for stem in stems]
           for split, stems in FASHION_MNIST_FILES.items()}
  if any(p is None for pair in paths.values() for p in pair):
    return None
  key = tuple((p, os.path.getsize(p), os.path.getmtime(p))
              for pair in paths.values() for p in pair)
  return _decode_fashion_idx(key, tuple((s, tuple(p)) for s, p in paths.items()))


@functools.lru_cache(maxsize=2)
def _decode_fashion_idx(key, paths):
  del key  # the cache key: which files, as they are now
  out = {}
  for split, (im_path, lab_path) in paths:
    images = idx_lib.read_idx(im_path, idx_lib.IMAGES_MAGIC)
    labels = idx_lib.read_idx(lab_path, idx_lib.LABELS_MAGIC).astype(np.int32)
    if images.shape[0] != labels.shape[0]:
      raise idx_lib.IdxFormatError(
          f"{im_path} holds {images.shape[0]} images but {lab_path} {labels.shape[0]} "
          "labels; replace them with the original files")
    images = images[..., None]  # (N, 28, 28, 1) uint8
    images.flags.writeable = labels.flags.writeable = False
    out[split] = (images, labels)
  return out


def _fashion_mnist_missing(folder, reason):
  names = ", ".join(f"{s}[.gz]" for pair in FASHION_MNIST_FILES.values() for s in pair)
  return DatasetMissingError(
      f"Fashion-MNIST not found: no {names} in {folder}, and tfds 'fashion_mnist' {reason}. "
      f"Install it with `sudo apt-get install dataset-fashion-mnist` (files in "
      f"{FASHION_MNIST_DIR}) or pass --config.data.data_dir=DIR holding the four files.")


@register("fashion_mnist")
def load_fashion_mnist(cfg, seed, workdir=None):
  """Fashion-MNIST: 60,000 / 10,000 grey 28x28 images, 10 classes (uint8).

  Read from the IDX files in ``data_dir`` (default ``FASHION_MNIST_DIR``),
  else from tfds ``fashion_mnist`` (array_record; its ``data_dir`` is
  ``data_dir`` or the tfds default). Meta set, noise (asymmetric: the
  ``noise.FASHION_MNIST_ASYMMETRIC`` map) and report as for the other
  in-memory sets; the test split never depends on ``seed``.
  """
  folder = cfg.data_dir or FASHION_MNIST_DIR
  arrays = _read_fashion_idx(folder)
  source = "idx"
  if arrays is None:
    how_to = lambda why: str(_fashion_mnist_missing(folder, why))
    arrays = {}
    for split in ("train", "test"):
      ds = _tfds_data_source("fashion_mnist", split, cfg.data_dir, how_to)
      images, labels, _ = _read_tfds(ds)
      arrays[split] = (images.reshape(images.shape[:3] + (1,)), labels)
    source = "tfds"
  (tr_im, tr_lab), (te_im, te_lab) = arrays["train"], arrays["test"]
  test = ArraySource(te_im, te_lab, te_lab)
  return _build_in_memory(
      "fashion_mnist", cfg, seed, workdir, images=tr_im, labels=tr_lab,
      true_labels=tr_lab, test=test, num_classes=10,
      asymmetric_map=noise_lib.FASHION_MNIST_ASYMMETRIC,
      info={"source": source, "data_dir": folder if source == "idx" else cfg.data_dir})


# --------------------------------------------------------------------------
# tensorflow-datasets sets (array_record via tfds.data_source).


def _tfds_dir(data_dir):
  if data_dir:
    return str(data_dir)
  return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def _tfds_data_source(tfds_name, split, data_dir, how_to):
  """``tfds.data_source`` with download=False; missing data -> one-line error."""
  try:
    return tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # pylint: disable=broad-except
    reason = f"is not prepared under {_tfds_dir(data_dir)}"
    try:
      vdir = tfds.builder(tfds_name, data_dir=data_dir).data_dir
      if os.path.isdir(vdir):
        reason = (f"is at {vdir} but not readable as array_record "
                  f"({type(e).__name__}; tfrecord-prepared data does not do)")
    except Exception:  # pylint: disable=broad-except
      pass
    raise DatasetMissingError(how_to(reason)) from None


def _cifar_how_to(tfds_name, title):
  def how_to(reason):
    return (
        f"{title} (tfds '{tfds_name}') {reason}: on a machine with "
        f"internet and tensorflow run `tfds build {tfds_name} --file_format=array_record "
        f"--data_dir=DIR` (or copy a prepared tensorflow_datasets/ folder holding "
        f"{tfds_name}/<version>/*.array_record-*), then pass --config.data.data_dir=DIR.")
  return how_to


def _read_tfds(ds, image_size=None, chunk=512):
  """All records of a tfds data source as arrays (image, label, is_clean)."""
  n = len(ds)
  images, labels, clean = [], [], []
  batched = hasattr(ds, "__getitems__")
  for s in range(0, n, chunk):
    keys = list(range(s, min(n, s + chunk)))
    recs = None
    if batched:
      try:
        recs = ds.__getitems__(keys)  # one array_record read per chunk
      except TypeError:
        # tfds.testing.mock_data's __getitems__ stand-in does not bind self
        batched = False
    if recs is None:
      recs = [ds[k] for k in keys]
    for r in recs:
      im = np.asarray(r["image"], np.uint8)
      if image_size is not None and im.shape[:2] != (image_size, image_size):
        im = np.asarray(Image.fromarray(im).resize((image_size, image_size),
                                                   Image.BOX), np.uint8)
      images.append(im)
      labels.append(int(r["label"]))
      clean.append(bool(r.get("is_clean", True)))
  shape = (0, image_size or 32, image_size or 32, 3)
  return (np.stack(images) if images else np.zeros(shape, np.uint8),
          np.asarray(labels, np.int32), np.asarray(clean, bool))


def _load_cifar(name, cfg, seed, workdir):
  base = name[:-3] if name.endswith("_lt") else name
  num_classes = 10 if base == "cifar10" else 100
  how_to = _cifar_how_to(base, "CIFAR-10" if base == "cifar10" else "CIFAR-100")
  train_ds = _tfds_data_source(base, "train", cfg.data_dir, how_to)
  test_ds = _tfds_data_source(base, "test", cfg.data_dir, how_to)
  tr_im, tr_lab, _ = _read_tfds(train_ds)
  te_im, te_lab, _ = _read_tfds(test_ds)
  test = ArraySource(te_im, te_lab, te_lab)
  info = {"imbalance_factor": float(cfg.imbalance_factor)} if name.endswith("_lt") else {}
  return _build_in_memory(name, cfg, seed, workdir, images=tr_im, labels=tr_lab,
                          true_labels=tr_lab, test=test, num_classes=num_classes,
                          info=info)


for _n in ("cifar10", "cifar100", "cifar10_lt", "cifar100_lt"):
  register(_n)(lambda cfg, seed, workdir=None, _n=_n: _load_cifar(_n, cfg, seed, workdir))


@register("cnwl")
def load_cnwl(cfg, seed, workdir=None):
  """Controlled Noisy Web Labels (red or blue mini-ImageNet), 100 classes.

  ``label`` is the web label of the ``train_XX`` split; ``true_label`` equals it
  where tfds' ``is_clean`` says it is correct and is -1 otherwise (the true
  class of a wrongly labelled web image is unknown). The meta set, if any, is
  drawn among the clean-flagged training images. Test = the clean
  ``validation`` split. Images are resized from 84x84 to ``cnwl_image_size``.
  """
  tfds_name = f"controlled_noisy_web_labels/mini_imagenet_{cfg.cnwl_color}"

  def how_to(reason):
    return (
        f"Controlled Noisy Web Labels (tfds '{tfds_name}') {reason}: "
        f"it needs a manual download — put dataset_no_images/ (from "
        f"https://storage.googleapis.com/cnlw/dataset_no_images.zip), noisy_images/ "
        f"(the web images listed in its mini-imagenet-annotations.json, as <id>.jpg), "
        f"ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in DIR/downloads/manual/, "
        f"run `tfds build {tfds_name} --file_format=array_record --data_dir=DIR` on a "
        f"machine with internet, tensorflow and opencv, then pass "
        f"--config.data.data_dir=DIR.")

  split = f"train_{int(cfg.cnwl_noise):02d}"
  train_ds = _tfds_data_source(tfds_name, split, cfg.data_dir, how_to)
  test_ds = _tfds_data_source(tfds_name, "validation", cfg.data_dir, how_to)
  size = int(cfg.cnwl_image_size)
  tr_im, tr_lab, tr_clean = _read_tfds(train_ds, size)
  te_im, te_lab, _ = _read_tfds(test_ds, size)
  true = np.where(tr_clean, tr_lab, -1).astype(np.int32)
  test = ArraySource(te_im, te_lab, te_lab)
  return _build_in_memory(
      "cnwl", cfg, seed, workdir, images=tr_im, labels=tr_lab, true_labels=true,
      test=test, num_classes=100, real_noise=True,
      info={"cnwl_split": split, "cnwl_color": cfg.cnwl_color,
            "cnwl_noise_percent": int(cfg.cnwl_noise),
            "web_noise_rate_is_clean": float(1.0 - tr_clean.mean()) if tr_clean.size else None})


# --------------------------------------------------------------------------
# Manual-directory sets: Clothing1M and WebVision.


def _read_kv(path):
  out = {}
  with open(path) as f:
    for line in f:
      parts = line.split()
      if len(parts) >= 2:
        out[parts[0]] = int(parts[1])
  return out


def _read_list(path):
  with open(path) as f:
    return [line.split()[0] for line in f if line.strip()]


CLOTHING1M_FILES = ("noisy_label_kv.txt", "clean_label_kv.txt", "noisy_train_key_list.txt",
                    "clean_val_key_list.txt", "clean_test_key_list.txt")


def _clothing1m_missing(what):
  return DatasetMissingError(
      f"Clothing1M {what}: get it from its authors (https://github.com/Cysu/noisy_label), "
      f"extract it so that DIR holds images/ and annotations/{{{','.join(CLOTHING1M_FILES)}}} "
      f"(keys are paths relative to DIR, e.g. images/0/00/x.jpg), then pass "
      f"--config.data.data_dir=DIR.")


def _clothing1m_annotations(root) -> str:
  """The folder of Clothing1M's annotation lists; one-line error if absent."""
  if not root or not os.path.isdir(root):
    raise _clothing1m_missing(f"directory not found ({root!r})" if root
                              else "needs --config.data.data_dir")
  ann = os.path.join(root, "annotations")
  if not os.path.isdir(ann):
    ann = root  # some copies keep the lists next to images/
  missing = [f for f in CLOTHING1M_FILES if not os.path.isfile(os.path.join(ann, f))]
  if missing:
    raise _clothing1m_missing(f"annotation files missing in {ann} ({', '.join(missing)})")
  return ann


@register("clothing1m")
def load_clothing1m(cfg, seed, workdir=None):
  """Clothing1M: 14 classes; train = noisy_train_key_list with noisy labels
  (true label from clean_label_kv where the key has one, else -1); meta =
  ``meta_per_class`` per class drawn from clean_val_key_list (-1: all of it,
  0: none); test = clean_test_key_list. Records are resized (short side 256,
  centre square) and cropped to 224 by the loader. ``train_sampler`` is the
  noise-balanced sampler (``clothing1m_batches_per_epoch`` batches per epoch).
  """
  root = cfg.data_dir
  ann = _clothing1m_annotations(root)
  noisy_kv = _read_kv(os.path.join(ann, "noisy_label_kv.txt"))
  clean_kv = _read_kv(os.path.join(ann, "clean_label_kv.txt"))
  resize = int(cfg.resize_size or 256)
  crop = int(cfg.crop_size or 224)

  def source(keys, label_of):
    keys = [k for k in keys if k in label_of]
    labels = np.array([label_of[k] for k in keys], np.int32)
    true = np.array([clean_kv.get(k, -1) for k in keys], np.int32)
    return ImageFileSource(root, keys, labels, true, resize=resize, crop_size=crop)

  train = source(_read_list(os.path.join(ann, "noisy_train_key_list.txt")), noisy_kv)
  val = source(_read_list(os.path.join(ann, "clean_val_key_list.txt")), clean_kv)
  test = source(_read_list(os.path.join(ann, "clean_test_key_list.txt")), clean_kv)
  num_classes = 14
  per_class = int(cfg.meta_per_class)
  if per_class == -1:
    meta = val
  elif per_class == 0:
    meta = None
  else:
    _, meta_idx = splits_lib.split_meta_set(val.labels, num_classes, per_class, seed)
    meta = val.subset(meta_idx)
  report = noise_lib.noise_report(train.true_labels, train.labels, num_classes)
  report.update(noise_type="real")
  path = None
  if workdir is not None:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "noisy_labels.npz")
    np.savez_compressed(path, noisy_labels=train.labels, true_labels=train.true_labels,
                        keys=np.asarray(train.paths, dtype=str))
    with open(os.path.join(workdir, "noise_report.json"), "w") as f:
      json.dump(report, f, indent=1)
  sampler = NoiseBalancedSampler(train.labels, num_classes,
                                 int(cfg.clothing1m_batches_per_epoch))
  info = dict(name="clothing1m", seed=seed, num_train=len(train),
              num_meta=len(meta) if meta is not None else 0, num_test=len(test),
              train_class_counts=_class_counts(train.labels, num_classes),
              resize_size=resize, crop_size=crop, noisy_labels_path=path,
              sampler="noise_balanced",
              batches_per_epoch=int(cfg.clothing1m_batches_per_epoch), **report)
  return DataSplits(train=train, meta=meta, test=test, num_classes=num_classes,
                    image_shape=(crop, crop, 3), info=info, train_sampler=sampler)


def _webvision_missing(what):
  return DatasetMissingError(
      f"WebVision 1.0 {what}: download it from https://data.vision.ee.ethz.ch/cvl/webvision/ "
      f"so that DIR holds info/train_filelist_google.txt, info/val_filelist.txt, the "
      f"google/ images and val_images_256/ (optionally imagenet/val/<class>/ with the "
      f"ILSVRC12 validation images), then pass --config.data.data_dir=DIR.")


def _imagenet_val(root, imagenet_dir, num_classes, resize, crop):
  """ILSVRC12 validation images of the first classes, folders named by class
  index (0..C-1) or by WordNet id (mapped through info/synsets.txt)."""
  d = imagenet_dir or os.path.join(root, "imagenet", "val")
  if not os.path.isdir(d):
    return None, f"not found at {d}"
  folders = set(os.listdir(d))
  wnids = []
  syn = os.path.join(root, "info", "synsets.txt")
  if os.path.isfile(syn):
    wnids = [line.split()[0] for line in open(syn) if line.strip()][:num_classes]
  paths, labels = [], []
  for c in range(num_classes):
    name = str(c) if str(c) in folders else (wnids[c] if c < len(wnids) else None)
    if name is None or name not in folders:
      continue
    for f in sorted(os.listdir(os.path.join(d, name))):
      paths.append(os.path.join(name, f))
      labels.append(c)
  if not paths:
    return None, f"no class folder in {d}"
  labels = np.asarray(labels, np.int32)
  return ImageFileSource(d, paths, labels, labels, resize=resize, crop_size=crop), d


@register("webvision")
def load_webvision(cfg, seed, workdir=None):
  """WebVision 1.0, first ``webvision_num_classes`` (50) classes, Google subset.

  Train: info/train_filelist_google.txt (web labels; true labels unknown, -1);
  test: WebVision validation (info/val_filelist.txt, images in
  val_images_256/); ``extra_test['imagenet_val']``: the ILSVRC12 validation
  images of the same classes when present. Resize 320, crop 299.
  """
  root = cfg.data_dir
  if not root or not os.path.isdir(root):
    raise _webvision_missing(f"directory not found ({root!r})" if root
                             else "needs --config.data.data_dir")
  info_dir = os.path.join(root, "info")
  for f in ("train_filelist_google.txt", "val_filelist.txt"):
    if not os.path.isfile(os.path.join(info_dir, f)):
      raise _webvision_missing(f"info/{f} missing in {root}")
  num_classes = int(cfg.webvision_num_classes)
  resize = int(cfg.resize_size or 320)
  crop = int(cfg.crop_size or 299)

  def read(path, prefix):
    paths, labels = [], []
    with open(path) as f:
      for line in f:
        parts = line.split()
        if len(parts) >= 2 and int(parts[1]) < num_classes:
          paths.append(os.path.join(prefix, parts[0]) if prefix else parts[0])
          labels.append(int(parts[1]))
    return paths, np.asarray(labels, np.int32)

  tr_paths, tr_labels = read(os.path.join(info_dir, "train_filelist_google.txt"), "")
  val_dir = "val_images_256" if os.path.isdir(os.path.join(root, "val_images_256")) \
      else "val_images"
  te_paths, te_labels = read(os.path.join(info_dir, "val_filelist.txt"), val_dir)
  train = ImageFileSource(root, tr_paths, tr_labels, np.full_like(tr_labels, -1),
                          resize=resize, crop_size=crop)
  test = ImageFileSource(root, te_paths, te_labels, te_labels, resize=resize,
                         crop_size=crop)
  extra, imnet_where = {}, None
  imnet, imnet_where = _imagenet_val(root, cfg.imagenet_val_dir, num_classes, resize, crop)
  if imnet is not None:
    extra["imagenet_val"] = imnet
  path = None
  if workdir is not None:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "noisy_labels.npz")
    np.savez_compressed(path, noisy_labels=train.labels, true_labels=train.true_labels,
                        keys=np.asarray(train.paths, dtype=str))
  info = dict(name="webvision", seed=seed, num_train=len(train), num_meta=0,
              num_test=len(test), num_imagenet_val=len(imnet) if imnet else 0,
              imagenet_val=imnet_where, noise_type="real",
              realised_noise_rate=None, transition_matrix=None,
              train_class_counts=_class_counts(train.labels, num_classes),
              resize_size=resize, crop_size=crop, noisy_labels_path=path)
  return DataSplits(train=train, meta=None, test=test, num_classes=num_classes,
                    image_shape=(crop, crop, 3), info=info, extra_test=extra)

