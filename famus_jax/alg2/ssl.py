"""Semi-supervised terms of the Algorithm 2 training step (MixMatch, as DivideMix).

Pure functions on arrays. Shapes: B labelled (pseudo-clean) examples, U
unlabelled (pseudo-noisy) ones, C classes; probabilities are rows summing to 1.

The official FaMUS code trains on the pseudo-noisy part semi-supervised the way
DivideMix does; these are its terms, each switchable in `config.alg2.ssl`:

- co-guessing: the label guess of an unlabelled example is the mean of the
  two networks' softmax outputs on two augmentations (`co_guess`), sharpened
  with temperature T = 0.5 (`sharpen`);
- label refinement of a pseudo-clean example: `c·onehot(ỹ) + (1 − c)·p̄` with
  its clean probability c and the network's own mean prediction p̄, then
  sharpened (`refine_labels`);
- mixup of inputs and targets with λ ~ Beta(α, α), λ ← max(λ, 1 − λ), α = 4
  (`mixup`);
- losses on the mixed batch: soft cross-entropy on the labelled part
  (`soft_cross_entropy`), mean squared error between predictions and guessed
  targets on the unlabelled part (`unlabeled_mse`), weighted by λ_u with a
  linear ramp-up after warm-up (`linear_rampup`), and the uniform class-prior
  regulariser KL(π ‖ p̄_batch) (`prior_penalty`).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def sharpen(p: jax.Array, temperature: float) -> jax.Array:
  """`p^(1/T) / Σ_c p_c^(1/T)` row-wise. (n, C) -> (n, C)."""
  q = jnp.power(p, 1.0 / temperature)
  return q / jnp.sum(q, axis=-1, keepdims=True)


def co_guess(probs: Sequence[jax.Array], temperature: float) -> jax.Array:
  """Label guess: mean of the given (n, C) predictions, sharpened. -> (n, C).

  With both networks on two augmentations, `probs` holds four arrays; with
  co-guessing off, the own network's two.
  """
  mean = sum(probs) / len(probs)
  return sharpen(mean, temperature)


def refine_labels(labels_onehot: jax.Array, clean_prob: jax.Array,
                  own_probs: Sequence[jax.Array], temperature: float) -> jax.Array:
  """Refined targets of pseudo-clean examples.

  Args:
    labels_onehot: (B, C) one-hot observed labels ỹ.
    clean_prob: (B,) clean probability c from the GMM.
    own_probs: the training network's (B, C) predictions (one per augmentation).
    temperature: sharpening T.

  Returns:
    (B, C) `sharpen(c·ỹ + (1 − c)·mean(own_probs))`.
  """
  mean = sum(own_probs) / len(own_probs)
  c = clean_prob[:, None]
  return sharpen(c * labels_onehot + (1.0 - c) * mean, temperature)


def mixup_lambda(rng: jax.Array, alpha: float) -> jax.Array:
  """λ ~ Beta(α, α), then max(λ, 1 − λ) (the mix leans to the first input)."""
  lam = jax.random.beta(rng, alpha, alpha)
  return jnp.maximum(lam, 1.0 - lam)


def mixup(x: jax.Array, targets: jax.Array, lam: jax.Array, perm: jax.Array
          ) -> tuple[jax.Array, jax.Array]:
  """`λ·a + (1 − λ)·a[perm]` for inputs (n, ...) and targets (n, C)."""
  lam = jnp.asarray(lam, x.dtype)
  mixed_x = lam * x + (1 - lam) * x[perm]
  mixed_t = lam * targets + (1 - lam) * targets[perm]
  return mixed_x, mixed_t


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean over rows of `−Σ_c t_c log softmax(z)_c`. (n, C), (n, C) -> scalar."""
  return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits, axis=-1) * targets, axis=-1))


def unlabeled_mse(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """`mean_{n,c} (softmax(z) − t)²` (DivideMix's L_u). (n, C), (n, C) -> scalar."""
  return jnp.mean((jax.nn.softmax(logits, axis=-1) - targets) ** 2)


def prior_penalty(logits: jax.Array) -> jax.Array:
  """Uniform class-prior regulariser `Σ_c π_c log(π_c / p̄_c)`, π = 1/C and
  p̄ the batch-mean softmax. (n, C) -> scalar ≥ 0 (0 iff p̄ is uniform)."""
  mean = jnp.mean(jax.nn.softmax(logits, axis=-1), axis=0)
  num_classes = logits.shape[-1]
  prior = jnp.full((num_classes,), 1.0 / num_classes, mean.dtype)
  return jnp.sum(prior * jnp.log(prior / mean))


def linear_rampup(epoch: float, warmup_epochs: float, rampup_epochs: float) -> float:
  """Weight multiplier of L_u: `clip((epoch − warm-up) / ramp-up length, 0, 1)`.

  `epoch` is fractional (epoch + iteration / iterations per epoch), as in
  DivideMix (ramp-up length 16 epochs there); a length ≤ 0 means no ramp.
  """
  if rampup_epochs <= 0:
    return 1.0 if epoch >= warmup_epochs else 0.0
  return float(min(max((epoch - warmup_epochs) / rampup_epochs, 0.0), 1.0))
