"""Fashion-MNIST: IDX reader, the data set on small IDX files this test writes,
its asymmetric noise map, the clean-meta-only and per-class subset options,
its model (`fashion_resnet`) and its configs. No installed data needed."""

import functools
import gzip
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from famus_jax import data, models
from famus_jax.data import datasets, idx, noise
from famus_jax.training import config as config_lib
from famus_jax.training.config import ConfigError

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")
N_TRAIN_PER_CLASS, N_TEST_PER_CLASS = 12, 3


def _idx_bytes(magic, array):
  """An IDX file by hand (big-endian header), independent of idx.write_idx."""
  array = np.asarray(array, np.uint8)
  return struct.pack(">I", magic) + b"".join(
      struct.pack(">I", d) for d in array.shape) + array.tobytes()


def _write(path, payload):
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(payload)


def _fake_set(folder, gz_train=True, gz_test=False):
  """Writes a 10-class Fashion-MNIST-shaped set; returns its arrays.

  Image k of a split has every pixel equal to its label plus 10 x (k mod 20),
  so images can be matched to labels exactly after any split.
  """
  os.makedirs(folder, exist_ok=True)
  out = {}
  for split, per, gz in (("train", N_TRAIN_PER_CLASS, gz_train),
                         ("t10k", N_TEST_PER_CLASS, gz_test)):
    labels = np.tile(np.arange(10, dtype=np.uint8), per)
    images = (labels + 10 * (np.arange(labels.size) % 20)).astype(np.uint8)
    images = np.broadcast_to(images[:, None, None], (labels.size, 28, 28)).copy()
    ext = ".gz" if gz else ""
    _write(os.path.join(folder, f"{split}-images-idx3-ubyte{ext}"), _idx_bytes(2051, images))
    _write(os.path.join(folder, f"{split}-labels-idx1-ubyte{ext}"), _idx_bytes(2049, labels))
    out[split] = (images, labels)
  return out


def _cfg(folder, **overrides):
  c = data.default_data_config()
  c.name, c.data_dir, c.meta_per_class = "fashion_mnist", str(folder), 2
  for k, v in overrides.items():
    c[k] = v
  return c


# ------------------------------------------------------------------ IDX reader


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_gz_and_plain(tmp_path, gz):
  images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
  labels = np.array([7, 0, 255], np.uint8)
  ext = ".gz" if gz else ""
  _write(str(tmp_path / f"im{ext}"), _idx_bytes(2051, images))
  _write(str(tmp_path / f"lab{ext}"), _idx_bytes(2049, labels))
  got = idx.read_idx(str(tmp_path / f"im{ext}"), idx.IMAGES_MAGIC)
  assert got.dtype == np.uint8 and got.shape == (3, 4, 5)
  np.testing.assert_array_equal(got, images)
  np.testing.assert_array_equal(idx.read_idx(str(tmp_path / f"lab{ext}"), idx.LABELS_MAGIC),
                                labels)


def test_write_idx_round_trip_and_byte_layout(tmp_path):
  a = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
  idx.write_idx(str(tmp_path / "a.gz"), a)
  np.testing.assert_array_equal(idx.read_idx(str(tmp_path / "a.gz")), a)
  u = np.arange(6, dtype=np.uint8).reshape(2, 3)
  idx.write_idx(str(tmp_path / "u"), u)
  assert (tmp_path / "u").read_bytes() == _idx_bytes(0x0802, u)


def test_wrong_magic_is_a_clear_error(tmp_path):
  labels = np.arange(5, dtype=np.uint8)
  path = str(tmp_path / "labels.gz")
  _write(path, _idx_bytes(2049, labels))
  with pytest.raises(idx.IdxFormatError) as e:
    idx.read_idx(path, idx.IMAGES_MAGIC)  # labels where images were expected
  msg = str(e.value)
  assert path in msg and "0x00000801" in msg and "0x00000803" in msg
  assert "\n" not in msg
  bad = str(tmp_path / "notidx")
  _write(bad, b"PK\x03\x04 something else entirely")
  with pytest.raises(idx.IdxFormatError, match="magic number"):
    idx.read_idx(bad)
  short = str(tmp_path / "short")
  _write(short, _idx_bytes(2049, labels)[:-2])
  with pytest.raises(idx.IdxFormatError, match="truncated"):
    idx.read_idx(short, idx.LABELS_MAGIC)


# ------------------------------------------------------------------ data set


def test_fashion_mnist_from_idx_files(tmp_path):
  arrays = _fake_set(tmp_path / "fm", gz_train=True, gz_test=False)
  s = data.load_dataset(_cfg(tmp_path / "fm", noise_type="symmetric", noise_rate=0.4),
                        seed=3, workdir=str(tmp_path / "run"))
  n = 10 * N_TRAIN_PER_CLASS
  assert s.num_classes == 10 and s.image_shape == (28, 28, 1)
  assert (len(s.train), len(s.meta), len(s.test)) == (n - 20, 20, 10 * N_TEST_PER_CLASS)
  assert s.train.images.dtype == np.uint8 and s.info["source"] == "idx"
  # test split: exactly the t10k files, in order
  te_im, te_lab = arrays["t10k"]
  np.testing.assert_array_equal(s.test.images[..., 0], te_im)
  np.testing.assert_array_equal(s.test.labels, te_lab)
  # meta: 2 clean images per class, removed from training
  assert np.bincount(s.meta.labels, minlength=10).tolist() == [2] * 10
  assert np.intersect1d(s.meta.source_index, s.train.source_index).size == 0
  tr_im, tr_lab = arrays["train"]
  np.testing.assert_array_equal(s.meta.labels, tr_lab[s.meta.source_index])
  np.testing.assert_array_equal(s.train.images[..., 0], tr_im[s.train.source_index])
  np.testing.assert_array_equal(s.train.true_labels, tr_lab[s.train.source_index])
  assert 0 < s.info["realised_noise_rate"] < 0.6
  saved = np.load(tmp_path / "run" / "noisy_labels.npz")
  np.testing.assert_array_equal(saved["noisy_labels"], s.train.labels)
  assert os.path.exists(tmp_path / "run" / "noise_report.json")
  # same seed -> same split and noise; the test split never depends on it
  again = data.load_dataset(_cfg(tmp_path / "fm", noise_type="symmetric"), seed=3)
  np.testing.assert_array_equal(again.train.labels, s.train.labels)
  other = data.load_dataset(_cfg(tmp_path / "fm", noise_type="symmetric"), seed=4)
  assert not np.array_equal(other.meta.source_index, s.meta.source_index)
  np.testing.assert_array_equal(other.test.labels, s.test.labels)


def test_plain_and_gz_files_give_the_same_data(tmp_path):
  _fake_set(tmp_path / "a", gz_train=True, gz_test=True)
  _fake_set(tmp_path / "b", gz_train=False, gz_test=False)
  a = data.load_dataset(_cfg(tmp_path / "a"), seed=0)
  b = data.load_dataset(_cfg(tmp_path / "b"), seed=0)
  for split in ("train", "meta", "test"):
    np.testing.assert_array_equal(getattr(a, split).images, getattr(b, split).images)
    np.testing.assert_array_equal(getattr(a, split).labels, getattr(b, split).labels)


def test_corrupt_file_names_the_file(tmp_path):
  _fake_set(tmp_path / "fm")
  _write(str(tmp_path / "fm" / "t10k-images-idx3-ubyte"), _idx_bytes(2049, np.zeros(3)))
  with pytest.raises(idx.IdxFormatError, match="t10k-images-idx3-ubyte"):
    data.load_dataset(_cfg(tmp_path / "fm"), seed=0)


def test_missing_files_one_line_error(tmp_path):
  folder = tmp_path / "empty"
  folder.mkdir()
  with pytest.raises(data.DatasetMissingError) as e:
    data.load_dataset(_cfg(folder), seed=0)
  msg = str(e.value)
  assert "\n" not in msg and isinstance(e.value, FileNotFoundError)
  assert "apt-get install dataset-fashion-mnist" in msg
  assert str(folder) in msg and datasets.FASHION_MNIST_DIR in msg
  assert "train-images-idx3-ubyte" in msg and "--config.data.data_dir=" in msg
  assert e.value.__cause__ is None


def test_default_data_dir_is_the_debian_package():
  assert datasets.FASHION_MNIST_DIR == "/usr/share/datasets/fashion-mnist"
  assert data.default_data_config().data_dir is None  # -> FASHION_MNIST_DIR


def test_tfds_fallback_when_no_idx_files(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  (tmp_path / "empty").mkdir()
  with tfds.testing.mock_data(num_examples=60, policy=tfds.testing.MockPolicy.USE_CODE):
    s = data.load_dataset(_cfg(tmp_path / "empty", meta_per_class=1, noise_type="none"),
                          seed=0)
  assert s.info["source"] == "tfds" and s.image_shape == (28, 28, 1)
  assert len(s.test) == 60 and len(s.train) + len(s.meta) == 60


# ------------------------------------------------------------------ noise


def test_asymmetric_map():
  m = noise.FASHION_MNIST_ASYMMETRIC
  # T-shirt/top <-> shirt, pullover -> coat, sandal -> sneaker, sneaker -> ankle boot
  assert m == {0: 6, 6: 0, 2: 4, 5: 7, 7: 9}
  targets = list(m.values())
  assert len(targets) == len(set(targets))  # each class receives from at most one
  t = noise.transition_matrix("asymmetric", 10, 0.4, mapping=m)
  np.testing.assert_allclose(t.sum(1), 1.0)
  for c in range(10):
    if c in m:
      assert t[c, c] == pytest.approx(0.6) and t[c, m[c]] == pytest.approx(0.4)
    else:
      assert t[c, c] == 1.0
  # below 50 % every noisy class keeps a clean majority
  assert all(t[c, c] > t[:, c].sum() - t[c, c] for c in range(10))


def test_asymmetric_noise_flips_only_along_the_map(tmp_path):
  _fake_set(tmp_path / "fm")
  s = data.load_dataset(_cfg(tmp_path / "fm", noise_type="asymmetric", noise_rate=0.4,
                             meta_per_class=0), seed=0)
  changed = s.train.labels != s.train.true_labels
  assert changed.any()
  m = noise.FASHION_MNIST_ASYMMETRIC
  np.testing.assert_array_equal(s.train.labels[changed],
                                [m[t] for t in s.train.true_labels[changed]])
  np.testing.assert_allclose(s.info["nominal_transition_matrix"],
                             noise.transition_matrix("asymmetric", 10, 0.4, mapping=m))


def test_asymmetric_is_refused_where_no_map_exists():
  c = data.default_data_config()
  c.noise_type = "asymmetric"
  with pytest.raises(ValueError, match="fashion_mnist"):
    data.validate_data_config(c)  # digits
  c.name = "fashion_mnist"
  data.validate_data_config(c)


# ------------------------------------------------------------------ train_split / subset


def test_train_on_clean_meta_only(tmp_path):
  _fake_set(tmp_path / "fm")
  full = data.load_dataset(_cfg(tmp_path / "fm", meta_per_class=3), seed=1)
  s = data.load_dataset(_cfg(tmp_path / "fm", meta_per_class=3, train_split="meta"),
                        seed=1, workdir=str(tmp_path / "run"))
  np.testing.assert_array_equal(s.train.source_index, full.meta.source_index)
  np.testing.assert_array_equal(s.train.labels, s.train.true_labels)
  np.testing.assert_array_equal(s.meta.labels, full.meta.labels)
  assert s.info["num_train"] == 30 and s.info["realised_noise_rate"] == 0.0
  with pytest.raises(ValueError, match="train_split"):
    data.load_dataset(_cfg(tmp_path / "fm", meta_per_class=0, train_split="meta"), seed=1)
  with pytest.raises(ValueError, match="'noisy', 'meta'"):
    data.validate_data_config(_cfg(tmp_path / "fm", train_split="clean"))


def test_train_per_class_subset(tmp_path):
  _fake_set(tmp_path / "fm")
  s = data.load_dataset(_cfg(tmp_path / "fm", meta_per_class=2, train_per_class=4,
                             noise_type="symmetric"), seed=5)
  assert np.bincount(s.train.true_labels, minlength=10).tolist() == [4] * 10
  assert np.intersect1d(s.meta.source_index, s.train.source_index).size == 0
  with pytest.raises(data.DataConfigError, match=r"^config\.data\.train_per_class=11: the "
                     r"smallest class has only 10 training examples .*; must be <= 10"):
    data.load_dataset(_cfg(tmp_path / "fm", meta_per_class=2, train_per_class=11), seed=5)
  with pytest.raises(ValueError, match="train_per_class"):
    data.validate_data_config(_cfg(tmp_path / "fm", train_per_class=-1))


# ------------------------------------------------------------------ model


def test_fashion_resnet_structure_and_forward():
  model = models.get_model("fashion_resnet", num_classes=10)
  x = jnp.linspace(0, 1, 2 * 28 * 28).reshape(2, 28, 28, 1)
  # jitted: one compile each instead of one per operation
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0), x)
  assert models.param_count(variables["params"]) == 78_042
  logits = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  layers = models.model_layers(model, variables["params"], x)
  assert models.num_blocks(variables["params"]) == 3
  assert [l.block for l in layers] == [0] * 2 + [1] * 6 + [2] * 6 + [3] * 6 + [4]
  assert layers[0].name == "stem/conv" and layers[-1].name == "head/fc"
  # two blocks in the first stage: 4 blocks, the second at stride 1 (no projection)
  deeper = models.get_model("fashion_resnet", num_classes=10, width=4, stage_sizes=(2, 1, 1))
  v = jax.eval_shape(functools.partial(deeper.init, train=False), jax.random.PRNGKey(0), x)
  assert models.num_blocks(v["params"]) == 4 and "shortcut_conv" not in v["params"]["block2"]
  with pytest.raises(ValueError, match="stage_sizes"):
    models.get_model("fashion_resnet", num_classes=10, stage_sizes=())


# ------------------------------------------------------------------ configs


def test_fashion_mnist_config():
  c = config_lib.load_config(os.path.join(CONFIG_DIR, "fashion_mnist.py"))
  config_lib.validate_config(c)
  assert (c.data.name, c.data.noise_type, c.data.noise_rate, c.data.meta_per_class) == (
      "fashion_mnist", "symmetric", 0.4, 100)
  assert (c.meta.method, c.meta.sampler, c.meta.lambda1) == ("mwnet", "famus", 0.1)
  assert c.model.name == "fashion_resnet" and c.data.data_dir is None
  # lr ÷10 at 90 % and 95 % of the run
  assert c.optim.unit == "epoch" and c.optim.decay_factor == 0.1
  assert [b / c.optim.num_epochs for b in c.optim.boundaries] == pytest.approx([0.9, 0.95])
  c.data.noise_type = "asymmetric"
  config_lib.validate_config(c)
  c.data.train_split = "all"
  with pytest.raises(ConfigError, match="train_split"):
    config_lib.validate_config(c)


def test_fashion_mnist_alg2_config():
  from famus_jax.alg2 import config as alg2_config  # pylint: disable=g-import-not-at-top
  c = config_lib.load_config(os.path.join(CONFIG_DIR, "fashion_mnist_alg2.py"))
  alg2_config.validate(c)
  base = config_lib.load_config(os.path.join(CONFIG_DIR, "fashion_mnist.py"))
  assert c.data.meta_per_class == 0 and c.algorithm == 'alg2'
  assert c.alg2.warmup_epochs < c.optim.num_epochs
  for field in ("data.name", "data.noise_rate", "data.batch_size", "model.name",
                "optim.lr", "optim.num_epochs", "optim.boundaries", "meta.k",
                "meta.lambda1", "meta.lambda2"):
    a, b = field.split(".")
    assert c[a][b] == base[a][b], field
  c.data.meta_per_class = 100
  with pytest.raises(ConfigError, match="meta_per_class"):
    alg2_config.validate(c)
