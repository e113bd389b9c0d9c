"""Label noise, long tail, meta split and config validation."""

import numpy as np
import pytest

from famus_jax import data
from famus_jax.data import noise as noise_lib


def _balanced(num_classes, per_class):
  return np.repeat(np.arange(num_classes), per_class).astype(np.int32)


@pytest.mark.parametrize("include_true", [True, False])
@pytest.mark.parametrize("rate", [0.2, 0.6])
def test_symmetric_rate_within_sampling_error(include_true, rate):
  c, labels = 10, _balanced(10, 2000)
  noisy = data.symmetric_noise(labels, c, rate, seed=3, include_true=include_true)
  expected = rate * (c - 1) / c if include_true else rate
  sd = np.sqrt(expected * (1 - expected) / labels.size)
  report = data.noise_report(labels, noisy, c)
  assert abs(report["realised_noise_rate"] - expected) < 4 * sd
  m = np.asarray(report["transition_matrix"])
  np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-12)
  off = m[~np.eye(c, dtype=bool)]
  per = rate / c if include_true else rate / (c - 1)
  # every off-diagonal cell is a binomial proportion over 2000 examples
  assert np.all(np.abs(off - per) < 5 * np.sqrt(per * (1 - per) / 2000))
  nominal = noise_lib.transition_matrix("symmetric", c, rate, include_true)
  np.testing.assert_allclose(nominal.sum(1), 1.0)
  assert nominal[0, 0] == pytest.approx(1 - rate + (rate / c if include_true else 0))


def test_symmetric_exclude_true_always_changes_at_rate_one():
  labels = _balanced(10, 100)
  noisy = data.symmetric_noise(labels, 10, 1.0, seed=0, include_true=False)
  assert np.all(noisy != labels)


def test_seed_determinism():
  labels = _balanced(10, 500)
  for fn in (lambda s: data.symmetric_noise(labels, 10, 0.5, s),
             lambda s: data.asymmetric_noise(labels, 10, 0.5, s),
             lambda s: data.pairflip_noise(labels, 10, 0.5, s)):
    a, b, other = fn(7), fn(7), fn(8)
    np.testing.assert_array_equal(a, b)
    assert np.any(a != other)
  np.testing.assert_array_equal(labels, _balanced(10, 500))  # input untouched


def test_asymmetric_cifar10_mapping_exact():
  labels = _balanced(10, 300)
  full = data.asymmetric_noise(labels, 10, 1.0, seed=0)
  expected = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
  for c in range(10):
    np.testing.assert_array_equal(full[labels == c], expected.get(c, c))
  part = data.asymmetric_noise(labels, 10, 0.4, seed=1)
  for c in range(10):
    got = set(np.unique(part[labels == c]).tolist())
    assert got <= {c, expected.get(c, c)}
  flipped = np.isin(labels, list(expected))
  rate = np.mean(part[flipped] != labels[flipped])
  assert abs(rate - 0.4) < 4 * np.sqrt(0.24 / flipped.sum())


def test_asymmetric_cifar100_next_class_in_superclass():
  labels = np.arange(100, dtype=np.int32)
  noisy = data.asymmetric_noise(labels, 100, 1.0, seed=0)
  coarse = noise_lib.CIFAR100_COARSE
  assert np.bincount(coarse).tolist() == [5] * 20
  for f in range(100):
    members = np.flatnonzero(coarse == coarse[f])
    nxt = members[(np.flatnonzero(members == f)[0] + 1) % 5]
    assert noisy[f] == nxt and coarse[noisy[f]] == coarse[f] and noisy[f] != f
  # e.g. aquatic mammals {beaver 4, dolphin 30, otter 55, seal 72, whale 95}
  assert [noisy[i] for i in (4, 30, 55, 72, 95)] == [30, 55, 72, 95, 4]


def test_pairflip():
  labels = _balanced(5, 400)
  noisy = data.pairflip_noise(labels, 5, 0.3, seed=0)
  changed = noisy != labels
  np.testing.assert_array_equal(noisy[changed], (labels[changed] + 1) % 5)
  assert abs(changed.mean() - 0.3) < 4 * np.sqrt(0.21 / labels.size)


def test_apply_noise_report():
  labels = _balanced(10, 200)
  noisy, rep = data.apply_noise(labels, 10, "symmetric", 0.5, seed=0, include_true=False)
  assert rep["requested_noise_rate"] == 0.5 and rep["noise_type"] == "symmetric"
  assert rep["realised_noise_rate"] == pytest.approx(np.mean(noisy != labels))
  np.testing.assert_allclose(np.asarray(rep["nominal_transition_matrix"]).sum(1), 1)
  same, rep = data.apply_noise(labels, 10, "none", 0.0, seed=0)
  np.testing.assert_array_equal(same, labels)
  assert rep["realised_noise_rate"] == 0
  with pytest.raises(ValueError, match="noise_type"):
    data.apply_noise(labels, 10, "gaussian", 0.1, seed=0)


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("imbalance", [100, 50, 20, 10])
def test_long_tail_counts_match_formula(num_classes, imbalance):
  labels = _balanced(num_classes, 60 if num_classes == 100 else 490)
  idx = data.long_tail_indices(labels, num_classes, imbalance, seed=0)
  counts = np.bincount(labels[idx], minlength=num_classes)
  n = labels.size // num_classes
  # n_i = n * mu**i, mu = (1/IF)**(1/(C-1)), i.e. n * (1/IF)**(i/(C-1))
  assert counts.tolist() == [int(n * (1 / imbalance) ** (i / (num_classes - 1)))
                             for i in range(num_classes)]
  mu = (1 / imbalance) ** (1 / (num_classes - 1))
  assert np.all(np.abs(counts - n * mu ** np.arange(num_classes)) <= 1)
  assert counts[0] == n and counts[-1] == n // imbalance
  assert np.unique(idx).size == idx.size
  np.testing.assert_array_equal(idx, data.long_tail_indices(labels, num_classes,
                                                            imbalance, seed=0))


def test_meta_split_disjoint_and_balanced():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, size=3000)
  rest, meta = data.split_meta_set(labels, 10, 25, seed=4)
  assert np.intersect1d(rest, meta).size == 0
  assert np.union1d(rest, meta).tolist() == list(range(3000))
  assert np.bincount(labels[meta], minlength=10).tolist() == [25] * 10
  rest2, meta2 = data.split_meta_set(labels, 10, 25, seed=5)
  assert not np.array_equal(meta, meta2)
  _, none = data.split_meta_set(labels, 10, 0, seed=4)
  assert none.size == 0
  fewest = int(np.bincount(labels, minlength=10).argmin())
  with pytest.raises(data.DataConfigError, match=(
      rf"^config\.data\.meta_per_class=1000: class {fewest} has only "
      rf"{np.bincount(labels).min()} examples .*; must be <= {np.bincount(labels).min()}$")):
    data.split_meta_set(labels, 10, 1000, seed=0)


@pytest.mark.parametrize("field,value,match", [
    ("noise_rate", 1.5, r"noise_rate=1\.5.*\[0\.0, 1\.0\]"),
    ("noise_type", "gaussian", "noise_type='gaussian'.*'symmetric'"),
    ("name", "imagenet", "name='imagenet'.*known:.*cifar10.*digits"),
    ("augment", "mixup", "augment='mixup'.*'crop_flip'"),
    ("batch_size", 0, "batch_size=0"),
    ("meta_per_class", -2, "meta_per_class=-2"),
    ("imbalance_factor", 100.0, "imbalance_factor=100.0.*long-tail"),
])
def test_config_validation(field, value, match):
  cfg = data.default_data_config()
  cfg[field] = value
  with pytest.raises(ValueError, match=match):
    data.load_dataset(cfg, seed=0)


def test_config_validation_dataset_specific():
  cfg = data.default_data_config()
  cfg.name, cfg.noise_type = "digits", "asymmetric"
  with pytest.raises(ValueError, match="asymmetric"):
    data.load_dataset(cfg, seed=0)
  cfg.name, cfg.noise_type = "clothing1m", "symmetric"
  with pytest.raises(ValueError, match="real label noise.*'none'"):
    data.load_dataset(cfg, seed=0)
  cfg.name, cfg.noise_type, cfg.cnwl_noise = "cnwl", "none", 33
  with pytest.raises(ValueError, match="cnwl_noise=33.*80"):
    data.load_dataset(cfg, seed=0)
