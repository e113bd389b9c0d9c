"""Tests for famus_jax.models (the backbones).

Kept fast on a 2-core CPU: parameter counts and block structure of the
full-size models use ``jax.eval_shape`` (tracing only, nothing is compiled or
allocated); everything that runs for real uses tiny widths and inputs, and
each test compiles at most two small functions.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
import flax.linen as nn

from famus_jax.models import (EXPECTED_NUM_BLOCKS, MODELS,
                              REFERENCE_PARAM_COUNTS, Layer, block_index,
                              get_model, model_layers, num_blocks, param_count)

# Full-size input shapes for abstract (eval_shape) checks.
FULL_INPUT = {
    "preact_resnet18": (2, 32, 32, 3), "wide_resnet": (2, 32, 32, 3),
    "wrn28_10": (2, 32, 32, 3), "wrn40_2": (2, 32, 32, 3),
    "resnet32": (2, 32, 32, 3), "resnet50": (2, 224, 224, 3),
    "inception_resnet_v2": (2, 299, 299, 3),
    "digits_mlp": (2, 8, 8, 1), "digits_cnn": (2, 8, 8, 1),
    "fashion_resnet": (2, 28, 28, 1),
}

# Tiny versions of every registry entry: (kwargs, input shape).
TINY = {
    "preact_resnet18": (dict(width=4), (3, 8, 8, 3)),
    "wide_resnet": (dict(depth=10, width=2, base_width=4, dropout=0.5),
                    (3, 8, 8, 3)),
    "wrn28_10": (dict(width=1, base_width=2), (3, 8, 8, 3)),
    "wrn40_2": (dict(base_width=2), (3, 8, 8, 3)),
    "resnet32": (dict(width=4, depth=8), (3, 8, 8, 3)),
    "resnet50": (dict(width=4, stage_sizes=(1, 1, 1, 1)), (3, 16, 16, 3)),
    "inception_resnet_v2": (dict(width_mult=1 / 16, repeats=(1, 1, 1)),
                            (2, 75, 75, 3)),
    "digits_mlp": (dict(width=16), (3, 8, 8, 1)),
    "digits_cnn": (dict(width=4), (3, 8, 8, 1)),
    "fashion_resnet": (dict(width=4), (3, 28, 28, 1)),
}
# One tiny model per family is actually run (compiled).
FAMILIES = ["preact_resnet18", "wide_resnet", "resnet32", "resnet50",
            "inception_resnet_v2", "digits_mlp", "digits_cnn"]
NUM_CLASSES = 5
# XLA's default backend optimisation level, for programs that run many times
# (tests/conftest.py compiles everything else at level 0).
OPTIMIZED = {"xla_backend_optimization_level": 3}


def test_registry_covers_tables():
  assert set(MODELS) == {
      "preact_resnet18", "wrn28_10", "wrn40_2", "wide_resnet", "resnet32",
      "resnet50", "inception_resnet_v2", "digits_mlp", "digits_cnn",
      "fashion_resnet"}
  assert set(TINY) == set(MODELS) == set(FULL_INPUT)


# --------------------------------------------------------------------------
# Registry / get_model errors.


def test_unknown_name_lists_known_models():
  with pytest.raises(ValueError, match="known models:.*preact_resnet18"):
    get_model("resnet1001", num_classes=10)


def test_unknown_kwarg_is_type_error():
  with pytest.raises(TypeError, match="widht"):
    get_model("wrn28_10", num_classes=10, widht=3)
  # Attributes of another family are rejected too.
  with pytest.raises(TypeError, match="width_mult"):
    get_model("resnet50", num_classes=10, width_mult=0.5)


@pytest.mark.parametrize("kwargs,message", [
    (dict(name="wide_resnet", depth=27), r"WRN depth must be 6N\+4 with N >= 1, got 27"),
    (dict(name="resnet32", depth=33), r"CIFAR ResNet depth must be 6n\+2, got 33"),
    (dict(name="wide_resnet", dropout=1.5), r"dropout must be in \[0, 1\), got 1.5"),
    (dict(name="digits_cnn", dtype="int8"),
     r"dtype must be float32, bfloat16 or float16, got 'int8'"),
    (dict(name="digits_mlp", num_classes=0), r"num_classes must be a positive int, got 0"),
])
def test_invalid_values_are_value_errors(kwargs, message):
  kwargs = dict(kwargs)
  name = kwargs.pop("name")
  kwargs.setdefault("num_classes", 10)
  with pytest.raises(ValueError, match=message):
    get_model(name, **kwargs)


def test_presets_are_overridable():
  m = get_model("wrn28_10", num_classes=100, dropout=0.3)
  assert (m.depth, m.width, m.dropout, m.num_classes) == (28, 10, 0.3, 100)


# --------------------------------------------------------------------------
# Abstract (eval_shape) helpers, cached per worker.


def _abstract_init(model, shape):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.eval_shape(
      lambda x: model.init({"params": jax.random.key(0)}, x, train=False), x)


@functools.lru_cache(maxsize=None)
def full_abstract(name: str, num_classes: int = 10):
  model = get_model(name, num_classes=num_classes)
  return model, _abstract_init(model, FULL_INPUT[name])


# --------------------------------------------------------------------------
# Parameter counts (published numbers, eval_shape only).


def _published_to_int(s: str) -> tuple[float, int]:
  """'11.17M' -> (11.17e6, number of decimals)."""
  digits = s.rstrip("M")
  decimals = len(digits.split(".")[1]) if "." in digits else 0
  return float(digits) * 1e6, decimals


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAM_COUNTS))
def test_param_counts_match_published(name):
  num_classes, exact, published = REFERENCE_PARAM_COUNTS[name]
  _, variables = full_abstract(name, num_classes)
  n = param_count(variables["params"])
  # Within 0.5 % of the reference implementation's exact count ...
  assert abs(n - exact) / exact < 0.005, (name, n, exact)
  # ... and equal to the paper's figure at the precision it is quoted
  # (0.46M / 2.2M are rounded figures, so "within 0.5 %" of them would be
  # stricter than the papers themselves).
  value, decimals = _published_to_int(published)
  assert round(n / 1e6, decimals) == pytest.approx(value / 1e6), (n, published)


def test_small_model_counts():
  # Documented in famus_jax/models/digits.py.
  assert param_count(full_abstract("digits_mlp")[1]["params"]) == 8_970
  assert param_count(full_abstract("digits_cnn")[1]["params"]) == 77_754
  # Documented in famus_jax/models/fashion.py and the registry table.
  assert param_count(full_abstract("fashion_resnet")[1]["params"]) == 78_042


@pytest.mark.parametrize("name", sorted(MODELS))
def test_params_are_float32_with_bfloat16_compute(name):
  kwargs, shape = TINY[name]
  model = get_model(name, num_classes=NUM_CLASSES, dtype="bfloat16", **kwargs)
  variables = _abstract_init(model, shape)
  for leaf in jax.tree_util.tree_leaves(variables):
    assert leaf.dtype == jnp.float32


# --------------------------------------------------------------------------
# Output shapes and dtypes of every registry entry (abstract, both dtypes).


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_shape_and_dtype(name, dtype):
  kwargs, shape = TINY[name]
  model = get_model(name, num_classes=NUM_CLASSES, dtype=dtype, **kwargs)
  variables = _abstract_init(model, shape)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  has_bn = name != "digits_mlp"
  assert ("batch_stats" in variables) == has_bn
  logits = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False), variables, x)
  chex.assert_shape(logits, (shape[0], NUM_CLASSES))
  assert logits.dtype == jnp.float32
  logits, updates = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                               rngs={"dropout": jax.random.key(1)}),
      variables, x)
  chex.assert_shape(logits, (shape[0], NUM_CLASSES))
  assert logits.dtype == jnp.float32
  if has_bn:
    chex.assert_trees_all_equal_shapes_and_dtypes(updates["batch_stats"],
                                                  variables["batch_stats"])


def test_bfloat16_forward_runs_and_is_close():
  kwargs, shape = TINY["digits_cnn"]
  x = jax.random.uniform(jax.random.key(0), shape)
  f32 = get_model("digits_cnn", num_classes=NUM_CLASSES, **kwargs)
  bf16 = get_model("digits_cnn", num_classes=NUM_CLASSES, dtype="bfloat16",
                   **kwargs)
  variables = materialize(_abstract_init(f32, shape))
  out32 = jax.jit(lambda v, x: f32.apply(v, x, train=False))(variables, x)
  out16 = jax.jit(lambda v, x: bf16.apply(v, x, train=False))(variables, x)
  assert out16.dtype == jnp.float32
  chex.assert_trees_all_close(out16, out32, atol=0.1, rtol=0.1)


# --------------------------------------------------------------------------
# Real (tiny) runs: BN behaviour, dropout, per-example gradients.


def materialize(abstract, seed=0):
  """Concrete random variables for abstract ones, without ``model.init``.

  ``model.init`` of the deeper tiny models compiles the threefry PRNG once per
  parameter tensor (~25 s for the tiny Inception-ResNet-v2 on 2 CPU cores), so
  the runtime tests fill the (eval_shape) variables with NumPy draws instead:
  He-normal kernels, small random biases and BN scales around 1, and running
  statistics mean 0 / var 1 (as after init). ``model.init`` itself is run for
  real by the digits tests. NumPy fills them and ``jax.device_put`` moves them:
  unjitted jnp operations (``jnp.asarray`` with a dtype included) compile once
  per tensor shape.
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if path[0].key == "batch_stats":
      return jax.device_put(np.full(leaf.shape, 1.0 if name == "var" else 0.0, leaf.dtype))
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      value = rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in)
    elif name == "scale":
      value = 1.0 + 0.1 * rng.normal(size=leaf.shape)
    else:
      value = 0.1 * rng.normal(size=leaf.shape)
    return jax.device_put(np.asarray(value, leaf.dtype))

  return jax.tree_util.tree_map_with_path(fill, abstract)


@functools.lru_cache(maxsize=None)
def tiny(name: str):
  kwargs, shape = TINY[name]
  model = get_model(name, num_classes=NUM_CLASSES, **kwargs)
  x = jax.random.normal(jax.random.key(0), shape)
  y = jnp.arange(shape[0]) % NUM_CLASSES
  variables = materialize(_abstract_init(model, shape))
  return model, variables, x, y


def _perturb_stats(batch_stats):
  """Running stats different from the init (mean 0, var 1), in NumPy."""
  return jax.tree_util.tree_map_with_path(
      lambda p, v: np.asarray(v) + 0.5 if p[-1].key == "mean" else np.asarray(v) * 2.0,
      batch_stats)


@pytest.mark.parametrize("name", FAMILIES)
def test_train_and_eval_batch_norm(name):
  model, variables, x, _ = tiny(name)
  eval_fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
  train_fn = jax.jit(lambda v, x, key: model.apply(
      v, x, train=True, mutable=["batch_stats"], rngs={"dropout": key}))
  # Another batch that shares the first example only.
  x2 = x.at[1:].set(3.0 * jax.random.normal(jax.random.key(7), x[1:].shape))

  out = eval_fn(variables, x)
  chex.assert_tree_all_finite(out)
  # train=False is deterministic and per-example (running statistics).
  chex.assert_trees_all_equal(out, eval_fn(variables, x))
  chex.assert_trees_all_close(eval_fn(variables, x2)[0], out[0], atol=1e-5,
                              rtol=1e-5)

  key = jax.random.key(3)
  out_t, upd = train_fn(variables, x, key)
  out_t2, _ = train_fn(variables, x2, key)
  chex.assert_tree_all_finite(out_t)
  if name == "digits_mlp":  # no BN: no batch_stats at all
    assert "batch_stats" not in variables and not upd
    chex.assert_trees_all_close(out_t, out, atol=1e-6)
    return
  # train=True uses batch statistics: example 0 depends on the others ...
  assert not np.allclose(out_t2[0], out_t[0], atol=1e-4)
  # ... and updates every running statistic.
  chex.assert_trees_all_equal_structs(upd["batch_stats"],
                                      variables["batch_stats"])
  changed = jax.tree_util.tree_map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                                   upd["batch_stats"], variables["batch_stats"])
  assert all(jax.tree_util.tree_leaves(changed))
  # train=False reads the running statistics.
  moved = {**variables, "batch_stats": _perturb_stats(variables["batch_stats"])}
  assert not np.allclose(eval_fn(moved, x), out, atol=1e-4)


def test_dropout_only_in_train_mode():
  model, variables, x, _ = tiny("wide_resnet")  # dropout=0.5
  assert model.dropout > 0
  train_fn = jax.jit(lambda v, x, key: model.apply(
      v, x, train=True, mutable=["batch_stats"], rngs={"dropout": key})[0])
  a = train_fn(variables, x, jax.random.key(0))
  b = train_fn(variables, x, jax.random.key(1))
  assert not np.allclose(a, b, atol=1e-5)
  chex.assert_trees_all_equal(a, train_fn(variables, x, jax.random.key(0)))
  # train=False ignores the dropout rng (and needs none).
  eval_fn = jax.jit(lambda v, x, key: model.apply(
      v, x, train=False, rngs={"dropout": key}))
  chex.assert_trees_all_equal(eval_fn(variables, x, jax.random.key(0)),
                              eval_fn(variables, x, jax.random.key(5)))
  jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)


@pytest.mark.parametrize("name", FAMILIES)
def test_per_example_grads_sum_to_batch_grad(name):
  """vmap'd per-example gradients sum to the batch gradient.

  With train=False (running BN statistics, no dropout) examples are
  independent, so d(sum_i l_i)/dθ == sum_i dl_i/dθ. (In train mode BN couples
  the examples and the identity does not hold.)
  """
  model, variables, x, y = tiny(name)
  params = variables["params"]
  state = {k: v for k, v in variables.items() if k != "params"}

  def loss(p, state, x, y):
    logits = model.apply({"params": p, **state}, x, train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()

  batch_grad = jax.jit(jax.grad(loss))(params, state, x, y)
  # Each example as a batch of one: x[:, None] has shape (N, 1, H, W, C).
  per_example = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, None, 0, 0)))(
      params, state, x[:, None], y[:, None])
  chex.assert_trees_all_equal_structs(per_example, params)
  for leaf, p in zip(jax.tree_util.tree_leaves(per_example),
                     jax.tree_util.tree_leaves(params)):
    assert leaf.shape == (x.shape[0],) + p.shape
  # NumPy from here: unjitted jnp operations would compile once per tensor shape.
  per_example, batch_grad = jax.device_get((per_example, batch_grad))
  summed = jax.tree_util.tree_map(lambda g: g.sum(0), per_example)
  scale = max(float(np.max(np.abs(g)))
              for g in jax.tree_util.tree_leaves(batch_grad))
  chex.assert_trees_all_close(summed, batch_grad, rtol=1e-4,
                              atol=1e-5 * scale)
  # Not trivially zero.
  assert scale > 0


# --------------------------------------------------------------------------
# Block structure (full-size models, abstract).


@pytest.mark.parametrize("granularity", ["module", "tensor"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_block_structure(name, granularity):
  model, variables = full_abstract(name)
  params = variables["params"]
  x = jax.ShapeDtypeStruct(FULL_INPUT[name], jnp.float32)
  layers = model_layers(model, params, x, granularity=granularity)
  assert all(isinstance(l, Layer) for l in layers)

  # Every parameter leaf belongs to exactly one layer.
  leaves = set(traverse_util.flatten_dict(params))
  paths = [p for l in layers for p in l.paths]
  assert len(paths) == len(set(paths)) == len(leaves)
  assert set(paths) == leaves
  assert len({l.name for l in layers}) == len(layers)
  if granularity == "tensor":
    assert len(layers) == len(leaves)
    assert all(len(l.paths) == 1 and l.name == "/".join(l.paths[0])
               for l in layers)
  else:
    assert all(l.name == "/".join(l.paths[0][:-1]) for l in layers)
    assert all(p[:-1] == l.paths[0][:-1] for l in layers for p in l.paths)

  # Blocks: stem 0, 1..B, head B+1, contiguous and in forward order.
  nb = num_blocks(params)
  assert nb == EXPECTED_NUM_BLOCKS[name]
  blocks = [l.block for l in layers]
  assert blocks == sorted(blocks)
  assert sorted(set(blocks)) == list(range(nb + 2))
  for l in layers:
    assert l.block == block_index(l.paths[0], nb)
    assert l.kind in ("conv", "dense", "norm")
  assert layers[-1].name.startswith("head/")
  assert layers[-1].kind == "dense"
  assert layers[0].name.startswith("stem/")
  assert layers[0].kind in ("conv", "dense")


def test_forward_order_within_blocks():
  model, variables = full_abstract("wrn28_10")
  x = jax.ShapeDtypeStruct(FULL_INPUT["wrn28_10"], jnp.float32)
  names = [l.name for l in model_layers(model, variables["params"], x)]
  assert names[:6] == ["stem/conv", "block1/bn1", "block1/conv1", "block1/bn2",
                       "block1/conv2", "block1/shortcut"]
  assert names[-2:] == ["head/bn", "head/fc"]
  # block2 before block10 (JAX sorts dict keys as strings).
  assert names.index("block2/conv1") < names.index("block10/conv1")
  # A full variables dict is accepted too.
  assert [l.name for l in model_layers(model, variables, x)] == names


def test_resnet50_structure_matches_torchvision_layout():
  model, variables = full_abstract("resnet50")
  x = jax.ShapeDtypeStruct(FULL_INPUT["resnet50"], jnp.float32)
  layers = model_layers(model, variables["params"], x)
  convs = [l for l in layers if l.kind == "conv"]
  # 1 stem conv + 16 * 3 bottleneck convs + 4 projection shortcuts.
  assert len(convs) == 1 + 48 + 4
  assert sum(l.kind == "dense" for l in layers) == 1
  per_block = [sum(l.block == b and l.kind == "conv" for l in layers)
               for b in range(1, 17)]
  assert per_block == [4, 3, 3, 4, 3, 3, 3, 4, 3, 3, 3, 3, 3, 4, 3, 3]


def test_inception_resnet_v2_block_kinds():
  model, variables = full_abstract("inception_resnet_v2")
  params = variables["params"]
  # 10 x A, reduction A, 20 x B, reduction B, 10 x C.
  has_up = ["up" in params[f"block{b}"] for b in range(1, 43)]
  assert has_up == [True] * 10 + [False] + [True] * 20 + [False] + [True] * 10
  assert "mixed_5b" in params["stem"]
  assert "conv2d_7b" in params["head"]


# --------------------------------------------------------------------------
# block_index and non-conforming models.


def test_block_index():
  assert block_index(("stem", "conv", "kernel"), 12) == 0
  assert block_index(("block3", "conv1", "kernel"), 12) == 3
  assert block_index(("block12", "bn1", "scale"), 12) == 12
  assert block_index(("head", "fc", "bias"), 12) == 13
  assert block_index(("params", "block1", "conv1", "kernel"), 12) == 1
  assert block_index(("batch_stats", "head", "bn", "mean"), 12) == 13
  with pytest.raises(ValueError):
    block_index(("block13", "conv1", "kernel"), 12)
  with pytest.raises(ValueError):
    block_index(("Dense_0", "kernel"), 12)
  with pytest.raises(ValueError):
    block_index(("block0", "kernel"), 12)


class _MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(4)(nn.relu(nn.Dense(8)(x)))


class _Arbitrary(nn.Module):
  """Not following the convention; 'zeta' is called before 'alpha'."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    x = nn.Dense(8, name="zeta")(x * scale)
    x = nn.BatchNorm(use_running_average=not train, name="norm")(x)
    return _MLP(name="alpha")(x)


def test_model_layers_for_arbitrary_model():
  model = _Arbitrary()
  x = jnp.ones((2, 3))
  params = model.init(jax.random.key(0), x)["params"]
  layers = model_layers(model, params, x)
  # Inside 'alpha', Dense_0 (the Dense(4)) is constructed first but called
  # second: forward order, not naming/key order.
  assert [l.name for l in layers] == ["", "zeta", "norm", "alpha/Dense_1",
                                      "alpha/Dense_0"]
  assert [l.kind for l in layers] == ["other", "dense", "norm", "dense",
                                      "dense"]
  # Fallback: block = index of the top-level submodule in call order (the
  # root's own parameters first).
  assert [l.block for l in layers] == [0, 1, 2, 3, 3]
  tensors = model_layers(model, params, x, granularity="tensor")
  assert len(tensors) == len(jax.tree_util.tree_leaves(params)) == 9
  with pytest.raises(ValueError, match="granularity"):
    model_layers(model, params, x, granularity="block")


# --------------------------------------------------------------------------
# The digits CNN trains to > 95 % on the real bundled digits.


def test_digits_cnn_trains_above_95_percent():
  """Plain CE + Adam, 6 epochs of batch 64 on the 70 % split (~1.3k images).

  Execution-bound: the step is compiled at XLA's default optimisation level
  (the test session compiles at level 0, which runs this loop ~5x slower), so
  about 10 CPU seconds in all; see experiments/benchmarks/model_timing.py for
  the measured time. The training loop is a Python loop over a jitted step: on
  XLA:CPU the same step inside ``lax.scan`` ran ~10x slower per step.
  """
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  digits = load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]  # 8x8x1
  x_tr, x_te, y_tr, y_te = train_test_split(
      images, digits.target.astype(np.int32), test_size=0.3, random_state=0,
      stratify=digits.target)
  model = get_model("digits_cnn", num_classes=10)
  variables = jax.jit(lambda k: model.init(k, jnp.asarray(x_tr[:2]),
                                           train=False))(jax.random.key(0))
  tx = optax.adam(3e-3)
  batch, epochs = 64, 6

  @functools.partial(jax.jit, compiler_options=OPTIMIZED)
  def step(params, stats, opt, x, y):
    def loss(p):
      logits, upd = model.apply({"params": p, "batch_stats": stats}, x,
                                train=True, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, y).mean(), upd["batch_stats"]

    (_, stats), g = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, updates), stats, opt

  params, stats = variables["params"], variables["batch_stats"]
  opt = tx.init(params)
  rng = np.random.default_rng(0)
  for _ in range(epochs):
    perm = rng.permutation(len(x_tr))
    for i in range(len(x_tr) // batch):
      idx = perm[i * batch:(i + 1) * batch]
      params, stats, opt = step(params, stats, opt, x_tr[idx], y_tr[idx])
  logits = jax.jit(lambda p, s, x: model.apply(
      {"params": p, "batch_stats": s}, x, train=False))(params, stats, x_te)
  acc = float(np.mean(np.asarray(logits.argmax(-1)) == y_te))
  assert acc > 0.95, acc
