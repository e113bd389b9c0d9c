"""grain input pipeline: exact resume, epoch coverage, sampler, augmentation."""

import json

import jax
import numpy as np
import pytest

from famus_jax import data
from famus_jax.data import augment as augment_lib


@pytest.fixture(scope="module")
def digits():
  cfg = data.default_data_config()
  return data.load_dataset(cfg, seed=0)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def _sampler_for(src):
  return data.NoiseBalancedSampler(src.labels, 10, num_batches=7)


@pytest.mark.parametrize("augment,use_sampler", [
    ("crop_flip", False), ("none", True)])
def test_resume_mid_epoch_is_exact(digits, augment, use_sampler):
  src = digits.train  # 1247 examples: 38 batches of 32 per epoch
  kw = dict(batch_size=32, seed=5, augment=augment,
            sampler=_sampler_for(src) if use_sampler else None)
  full = _take(data.make_loader(src, **kw), 60)  # crosses epoch boundaries
  it = data.make_loader(src, **kw)
  first = _take(it, 23)  # mid-epoch
  state = json.loads(json.dumps(it.get_state()))  # serialisable
  rest_same_it = _take(it, 37)
  resumed = data.make_loader(src, **kw)
  resumed.set_state(state)
  rest = _take(resumed, 37)
  _assert_same(full, first + rest_same_it)
  _assert_same(full, first + rest)
  with pytest.raises(ValueError, match="seed"):
    data.make_loader(src, **{**kw, "seed": 6}).set_state(state)


def test_epochs_cover_each_example_once(digits):
  src = digits.train
  n = len(src)
  loader = data.make_loader(src, batch_size=100, seed=1, num_epochs=2,
                            drop_remainder=False)
  batches = list(loader)
  per_epoch = -(-n // 100)
  assert len(batches) == 2 * per_epoch == len(loader)
  epochs = [np.concatenate([b["index"] for b in batches[e * per_epoch:(e + 1) * per_epoch]])
            for e in range(2)]
  for idx in epochs:
    assert sorted(idx.tolist()) == list(range(n))  # nothing dropped or repeated
  assert not np.array_equal(epochs[0], epochs[1])  # fresh shuffle each epoch
  # with drop_remainder: full batches only, still no repeat within an epoch
  loader = data.make_loader(src, batch_size=100, seed=1, num_epochs=1)
  idx = np.concatenate([b["index"] for b in loader])
  assert idx.size == (n // 100) * 100 == np.unique(idx).size
  # records travel with their index
  b = batches[0]
  np.testing.assert_array_equal(b["label"], src.labels[b["index"]])
  np.testing.assert_array_equal(b["true_label"], src.true_labels[b["index"]])
  np.testing.assert_array_equal(b["image"], src.images[b["index"]])
  # shuffle=False keeps the split's order; seeds matter
  ordered = next(data.make_loader(src, batch_size=10, seed=0, shuffle=False))
  assert ordered["index"].tolist() == list(range(10))
  a = next(data.make_loader(src, batch_size=10, seed=0))["index"]
  assert not np.array_equal(a, next(data.make_loader(src, batch_size=10, seed=1))["index"])


def test_noise_balanced_sampler_deterministic_and_balanced():
  labels = np.repeat(np.arange(5), [100, 50, 30, 3, 0])  # class 4 absent
  s = data.NoiseBalancedSampler(labels, 5, num_batches=10)
  e0 = s.epoch_indices(0, seed=1, batch_size=8)
  np.testing.assert_array_equal(e0, s.epoch_indices(0, seed=1, batch_size=8))
  assert not np.array_equal(e0, s.epoch_indices(1, seed=1, batch_size=8))
  assert not np.array_equal(e0, s.epoch_indices(0, seed=2, batch_size=8))
  counts = np.bincount(labels[e0], minlength=5)
  assert counts.sum() == 80 and counts[4] == 0 and counts[:4].tolist() == [20] * 4
  # only the class with too few examples repeats, and all its examples appear
  for c in range(3):
    sel = e0[labels[e0] == c]
    assert np.unique(sel).size == sel.size
  assert set(e0[labels[e0] == 3].tolist()) == set(np.flatnonzero(labels == 3).tolist())


def _is_crop_flip_of(out, img, pad):
  h, w = img.shape[:2]
  padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
  for y in range(2 * pad + 1):
    for x in range(2 * pad + 1):
      crop = padded[y:y + h, x:x + w]
      if np.array_equal(out, crop) or np.array_equal(out, crop[:, ::-1]):
        return True
  return False


def test_crop_flip_numpy_and_jax_are_valid_crops():
  rng = np.random.default_rng(0)
  images = rng.random((16, 8, 8, 3)).astype(np.float32)
  out_np = augment_lib.crop_flip_numpy(rng, images, pad=2)
  out_jx = np.asarray(data.augment_batch_jax(jax.random.PRNGKey(0), images, pad=2))
  for out in (out_np, out_jx):
    assert out.shape == images.shape
    assert all(_is_crop_flip_of(out[i], images[i], 2) for i in range(16))
  assert not np.array_equal(out_np, images)
  crop = augment_lib.random_crop_flip_numpy(rng, images, 6)
  assert crop.shape == (16, 6, 6, 3)
  np.testing.assert_array_equal(augment_lib.center_crop_numpy(images, 6),
                                images[:, 1:7, 1:7])


def test_split_loaders_meta_cycles_independently(digits):
  cfg = data.default_data_config()
  cfg.meta_batch_size = 32  # meta set: 100 images -> 3 batches per epoch
  loaders = data.make_split_loaders(digits, cfg, seed=0)
  meta = _take(loaders["meta"], 7)  # > 2 epochs of the meta set
  assert all(b["image"].shape == (32, 8, 8, 1) for b in meta)
  np.testing.assert_array_equal(meta[0]["label"], meta[0]["true_label"])
  train = next(loaders["train"])
  assert train["image"].shape == (64, 8, 8, 1)
  test = list(loaders["test"])
  assert sum(len(b["index"]) for b in test) == 450


def test_as_arrays_and_loader_on_plain_source(digits):
  class Plain:  # only __len__/__getitem__, like any grain data source
    def __init__(self, src):
      self.src = src
    def __len__(self):
      return len(self.src)
    def __getitem__(self, i):
      return self.src[i]

  plain = Plain(digits.test)
  arr = data.as_arrays(plain, batch_size=100)
  np.testing.assert_array_equal(arr["image"], digits.test.images)
  np.testing.assert_array_equal(arr["index"], np.arange(450))
  b = next(data.make_loader(plain, batch_size=16, seed=0, prefetch=0))
  np.testing.assert_array_equal(b["image"], digits.test.images[b["index"]])


def test_worker_processes_give_the_same_batches(digits):
  kw = dict(batch_size=64, seed=2, augment="crop_flip")
  ref = _take(data.make_loader(digits.train, **kw), 6)
  it = data.make_loader(digits.train, num_workers=1, **kw)
  try:
    first = _take(it, 3)
    state = it.get_state()
  finally:
    it.close()
  it = data.make_loader(digits.train, num_workers=1, **kw)
  try:
    it.set_state(json.loads(json.dumps(state)))
    _assert_same(ref, first + _take(it, 3))
  finally:
    it.close()
