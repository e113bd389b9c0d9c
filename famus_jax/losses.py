"""Per-example losses. Shapes: logits (n, C) float, labels (n,) int."""

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy, (n, C), (n,) -> (n,) float32."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def mean_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean cross-entropy over the batch, a scalar."""
  return jnp.mean(cross_entropy(logits, labels))


def corrected_cross_entropy(logits: jax.Array, labels: jax.Array,
                            log_transition: jax.Array) -> jax.Array:
  """Loss correction `CE(Tᵀ softmax(f(x)), ỹ)` in log space.

  Args:
    logits: (n, C) network outputs.
    labels: (n,) observed (noisy) labels ỹ.
    log_transition: (C, C) row-wise log-probabilities, `T[i, j] = p(ỹ=j | y=i)`.

  Returns:
    (n,) `−log Σ_i softmax(f(x))_i T[i, ỹ]`.
  """
  log_p = jax.nn.log_softmax(logits, axis=-1)                  # (n, C)
  log_q = jax.nn.logsumexp(log_p[:, :, None] + log_transition[None], axis=1)
  return -jnp.take_along_axis(log_q, labels[:, None], axis=1)[:, 0]


def normalize_by_sum(weights: jax.Array) -> jax.Array:
  """`w / Σw`; an all-zero vector stays zero (no division by zero)."""
  total = jnp.sum(weights)
  return weights / jnp.where(total == 0, jnp.ones_like(total), total)
