"""Every loader on data the tests make.

tfds sets run under ``tfds.testing.mock_data`` (``MockPolicy.USE_CODE``: the
builder's code gives the features, random records come from tfds' fake
generator through the array_record ``data_source`` path, no TensorFlow
needed); Clothing1M and WebVision run on tiny directories in the official
layout written here; digits is the real scikit-learn data.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

from famus_jax import data



@pytest.fixture
def tfds():
  """tensorflow-datasets, for the tests that run its mock data (only they skip
  when it cannot be imported)."""
  return pytest.importorskip("tensorflow_datasets")


def _cfg(**kw):
  cfg = data.default_data_config()
  for k, v in kw.items():
    cfg[k] = v
  return cfg


def _check_source(src, num_classes, shape=None, dtype=np.uint8):
  rec = src[len(src) - 1]
  assert set(rec) >= {"image", "label", "true_label", "index"}
  assert rec["index"] == len(src) - 1
  assert rec["image"].dtype == dtype
  if shape is not None:
    assert rec["image"].shape == shape
  arr = data.as_arrays(src)
  assert arr["image"].shape[0] == len(src) == arr["label"].shape[0]
  assert arr["label"].dtype == np.int32 and arr["true_label"].dtype == np.int32
  assert arr["index"].tolist() == list(range(len(src)))
  assert arr["label"].min() >= 0 and arr["label"].max() < num_classes
  return arr


# ------------------------------------------------------------------ digits


def test_digits(tmp_path):
  cfg = _cfg(noise_type="symmetric", noise_rate=0.4, meta_per_class=10)
  s = data.load_dataset(cfg, seed=0, workdir=str(tmp_path))
  assert s.num_classes == 10 and s.image_shape == (8, 8, 1)
  assert (len(s.train), len(s.meta), len(s.test)) == (1347 - 100, 100, 450)
  tr = _check_source(s.train, 10, (8, 8, 1), np.float32)
  assert 0.0 <= tr["image"].min() and tr["image"].max() <= 1.0
  assert isinstance(s.train, data.ArraySource)
  # meta: clean, balanced, disjoint from train (positions in load_digits())
  assert np.bincount(s.meta.labels).tolist() == [10] * 10
  np.testing.assert_array_equal(s.meta.labels, s.meta.true_labels)
  assert np.intersect1d(s.meta.source_index, s.train.source_index).size == 0
  assert np.intersect1d(s.test.source_index, s.train.source_index).size == 0
  # noisy labels saved and reported
  saved = np.load(tmp_path / "noisy_labels.npz")
  np.testing.assert_array_equal(saved["noisy_labels"], s.train.labels)
  np.testing.assert_array_equal(saved["true_labels"], s.train.true_labels)
  assert s.info["noisy_labels_path"] == str(tmp_path / "noisy_labels.npz")
  rep = json.loads((tmp_path / "noise_report.json").read_text())
  assert rep["realised_noise_rate"] == pytest.approx(
      np.mean(s.train.labels != s.train.true_labels))
  assert abs(rep["realised_noise_rate"] - 0.36) < 4 * np.sqrt(0.36 * 0.64 / 1247)
  np.testing.assert_allclose(np.asarray(s.info["transition_matrix"]).sum(1), 1)
  # determinism: same seed -> same everything; test split independent of seed
  s2 = data.load_dataset(cfg, seed=0)
  np.testing.assert_array_equal(s.train.labels, s2.train.labels)
  s3 = data.load_dataset(cfg, seed=1)
  assert np.any(s.train.labels != s3.train.labels[:len(s.train)])
  np.testing.assert_array_equal(s.test.source_index, s3.test.source_index)
  s4 = data.load_dataset(_cfg(meta_per_class=0, noise_type="none"), seed=0)
  assert s4.meta is None and len(s4.train) == 1347
  np.testing.assert_array_equal(s4.train.labels, s4.train.true_labels)


# ------------------------------------------------------------------ tfds sets


def _mock(tfds, n):
  return tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.USE_CODE)


@pytest.mark.parametrize("name,num_classes,noise", [
    ("cifar10", 10, "asymmetric"), ("cifar100", 100, "symmetric")])
def test_cifar_mock(name, num_classes, noise, tmp_path, tfds):
  per = 3 if num_classes == 100 else 20
  with _mock(tfds, 1500):
    s = data.load_dataset(_cfg(name=name, noise_type=noise, noise_rate=0.4,
                               meta_per_class=per), seed=0, workdir=str(tmp_path))
  assert s.image_shape == (32, 32, 3) and s.num_classes == num_classes
  assert (len(s.train), len(s.meta), len(s.test)) == (1500 - per * num_classes,
                                                      per * num_classes, 1500)
  _check_source(s.train, num_classes, (32, 32, 3))
  assert np.bincount(s.meta.labels, minlength=num_classes).tolist() == [per] * num_classes
  assert np.intersect1d(s.meta.source_index, s.train.source_index).size == 0
  changed = s.train.labels != s.train.true_labels
  assert s.info["realised_noise_rate"] == pytest.approx(changed.mean())
  mapping = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
  # Requested 40 %: symmetric draws a uniform class (the true one included, so
  # 0.4 · 99/100 change); asymmetric flips 40 % of the mapped classes only.
  if noise == "symmetric":
    expected = 0.4 * (num_classes - 1) / num_classes
    sd = np.sqrt(expected * (1 - expected) / changed.size)
  else:
    flippable = np.isin(s.train.true_labels, list(mapping)).sum()
    expected = 0.4 * flippable / changed.size
    sd = np.sqrt(0.4 * 0.6 * flippable) / changed.size
  assert abs(changed.mean() - expected) < 4 * sd, (changed.mean(), expected)
  if noise == "asymmetric":
    np.testing.assert_array_equal(
        s.train.labels[changed], [mapping[t] for t in s.train.true_labels[changed]])
  assert os.path.exists(tmp_path / "noisy_labels.npz")


@pytest.mark.parametrize("imbalance", [100, 10])
def test_cifar10_lt_mock(imbalance, tfds):
  with _mock(tfds, 1000):
    s = data.load_dataset(_cfg(name="cifar10_lt", imbalance_factor=imbalance,
                               noise_type="none", meta_per_class=10), seed=0)
  assert np.bincount(s.meta.labels, minlength=10).tolist() == [10] * 10
  assert np.intersect1d(s.meta.source_index, s.train.source_index).size == 0
  # n = the smallest class count left after the meta draw
  with _mock(tfds, 1000):
    full = tfds.data_source("cifar10", split="train", download=False)
    all_labels = np.array([full[i]["label"] for i in range(len(full))])
  n = np.bincount(all_labels, minlength=10).min() - 10
  counts = np.bincount(s.train.labels, minlength=10)
  assert counts.tolist() == [int(n * (1 / imbalance) ** (i / 9)) for i in range(10)]
  assert s.info["imbalance_factor"] == imbalance


def test_cnwl_mock(tmp_path, tfds):
  with _mock(tfds, 300):
    s = data.load_dataset(_cfg(name="cnwl", noise_type="none", cnwl_noise=40,
                               meta_per_class=0), seed=0, workdir=str(tmp_path))
  assert s.num_classes == 100 and s.image_shape == (32, 32, 3)
  assert len(s.train) == 300 and len(s.test) == 300 and s.meta is None
  arr = _check_source(s.train, 100, (32, 32, 3))
  unknown = arr["true_label"] == -1
  np.testing.assert_array_equal(arr["true_label"][~unknown], arr["label"][~unknown])
  assert 0 < unknown.mean() < 1  # the fake is_clean flag is random
  assert s.info["cnwl_split"] == "train_40"
  assert s.info["realised_noise_rate"] == 0.0  # among images with known labels


def test_tfds_missing_data_is_one_line_error(tmp_path, tfds):
  del tfds  # the loaders import it
  for name, extra in (("cifar10", {}), ("cifar100_lt", {"imbalance_factor": 50.0}),
                      ("cnwl", {"noise_type": "none"})):
    cfg = _cfg(name=name, data_dir=str(tmp_path / "nothing"), **extra)
    with pytest.raises(data.DatasetMissingError) as e:
      data.load_dataset(cfg, seed=0)
    msg = str(e.value)
    assert "\n" not in msg and isinstance(e.value, FileNotFoundError)
    assert "--config.data.data_dir=" in msg and str(tmp_path / "nothing") in msg
    assert "tfds build" in msg and "array_record" in msg
    assert e.value.__cause__ is None and e.value.__suppress_context__
  assert "downloads/manual" in msg  # cnwl: where the manual files go


# ------------------------------------------------------------------ manual dirs


def _jpeg(path, color, size=(10, 8)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new("RGB", size, color).save(path, quality=95)


def make_clothing1m(root, per_class_train=3, num_classes=14):
  """Tiny Clothing1M in the official layout (images/, annotations/*.txt)."""
  rng = np.random.default_rng(0)
  noisy_kv, clean_kv, train, val, test = [], [], [], [], []
  k = 0
  for c in range(num_classes):
    for split, n in (("train", per_class_train), ("val", 2), ("test", 1)):
      for _ in range(n):
        key = f"images/{k % 10}/{k:02d}/{k}.jpg"
        _jpeg(os.path.join(root, key), tuple(int(x) for x in rng.integers(0, 255, 3)))
        k += 1
        if split == "train":
          train.append(key)
          noisy_kv.append(f"{key} {c}")
          if k % 2:  # half of the noisy images also have a clean label
            clean_kv.append(f"{key} {(c + 1) % num_classes if k % 3 == 0 else c}")
        else:
          (val if split == "val" else test).append(key)
          clean_kv.append(f"{key} {c}")
  ann = os.path.join(root, "annotations")
  os.makedirs(ann, exist_ok=True)
  for fname, lines in (("noisy_label_kv.txt", noisy_kv), ("clean_label_kv.txt", clean_kv),
                       ("noisy_train_key_list.txt", train), ("clean_val_key_list.txt", val),
                       ("clean_test_key_list.txt", test)):
    with open(os.path.join(ann, fname), "w") as f:
      f.write("\n".join(lines) + "\n")


def make_webvision(root, num_classes_total=52, per_class=2):
  """Tiny WebVision 1.0 (info/, google/, val_images_256/, imagenet/val/)."""
  train, val, synsets = [], [], []
  for c in range(num_classes_total):
    synsets.append(f"n{c:08d} class {c}")
    for j in range(per_class):
      p = f"google/q{c:04d}/{j}.jpg"
      _jpeg(os.path.join(root, p), (c * 4, j * 50, 10))
      train.append(f"{p} {c}")
    v = f"val{c:06d}.jpg"
    _jpeg(os.path.join(root, "val_images_256", v), (c * 4, 0, 0))
    val.append(f"{v} {c}")
    if c < 3:  # ILSVRC12 val images for a few classes, folders by WordNet id
      _jpeg(os.path.join(root, "imagenet", "val", f"n{c:08d}", f"ILSVRC_{c}.JPEG"),
            (0, c * 4, 0))
  os.makedirs(os.path.join(root, "info"), exist_ok=True)
  for fname, lines in (("train_filelist_google.txt", train), ("val_filelist.txt", val),
                       ("synsets.txt", synsets)):
    with open(os.path.join(root, "info", fname), "w") as f:
      f.write("\n".join(lines) + "\n")


def test_clothing1m(tmp_path):
  root = str(tmp_path / "clothing1m")
  make_clothing1m(root)
  cfg = _cfg(name="clothing1m", data_dir=root, noise_type="none", meta_per_class=1,
             resize_size=8, crop_size=6, clothing1m_batches_per_epoch=5)
  s = data.load_dataset(cfg, seed=0, workdir=str(tmp_path / "wd"))
  assert s.num_classes == 14 and s.image_shape == (6, 6, 3)
  assert (len(s.train), len(s.meta), len(s.test)) == (42, 14, 14)
  assert isinstance(s.train, data.ImageFileSource)
  arr = _check_source(s.train, 14, (8, 8, 3))
  known = arr["true_label"] >= 0
  assert 0 < known.sum() < len(s.train)
  assert np.bincount(s.meta.labels, minlength=14).tolist() == [1] * 14
  assert s.info["realised_noise_rate"] == pytest.approx(
      np.mean(arr["label"][known] != arr["true_label"][known]))
  assert os.path.exists(tmp_path / "wd" / "noisy_labels.npz")
  # -1: the whole clean validation list; 0: none
  assert len(data.load_dataset(_cfg(**{**cfg, "meta_per_class": -1}), 0).meta) == 28
  assert data.load_dataset(_cfg(**{**cfg, "meta_per_class": 0}), 0).meta is None
  # noise-balanced sampler: batches_per_epoch batches, classes balanced
  loader = data.make_loader(s.train, batch_size=14, seed=3, augment="resize_crop",
                            sampler=s.train_sampler, num_epochs=1)
  assert loader.batches_per_epoch == 5
  batches = list(loader)
  assert len(batches) == 5 and batches[0]["image"].shape == (14, 6, 6, 3)
  labels = np.concatenate([b["label"] for b in batches])
  assert np.bincount(labels, minlength=14).tolist() == [5] * 14
  test = next(data.make_loader(s.test, batch_size=4, seed=0, shuffle=False))
  assert test["image"].shape == (4, 6, 6, 3)  # 'none' centre-crops


def test_webvision(tmp_path):
  root = str(tmp_path / "webvision")
  make_webvision(root)
  cfg = _cfg(name="webvision", data_dir=root, noise_type="none", meta_per_class=0,
             resize_size=8, crop_size=7)
  s = data.load_dataset(cfg, seed=0)
  assert s.num_classes == 50 and s.image_shape == (7, 7, 3)
  assert (len(s.train), len(s.test)) == (100, 50) and s.meta is None
  _check_source(s.train, 50, (8, 8, 3))
  _check_source(s.test, 50, (8, 8, 3))
  assert np.all(s.train.true_labels == -1)
  imnet = s.extra_test["imagenet_val"]
  assert len(imnet) == 3 and imnet.labels.tolist() == [0, 1, 2]
  b = next(data.make_loader(s.train, batch_size=8, seed=0, augment="resize_crop"))
  assert b["image"].shape == (8, 7, 7, 3)
  with pytest.raises(ValueError, match="meta_per_class"):
    data.load_dataset(_cfg(**{**cfg, "meta_per_class": 5}), 0)


@pytest.mark.parametrize("name", ["clothing1m", "webvision"])
def test_manual_dir_missing_is_one_line_error(name, tmp_path):
  for d in (None, str(tmp_path / "absent"), str(tmp_path)):
    with pytest.raises(data.DatasetMissingError) as e:
      data.load_dataset(_cfg(name=name, data_dir=d, noise_type="none", meta_per_class=0),
                        seed=0)
    assert "\n" not in str(e.value) and "--config.data.data_dir=" in str(e.value)
