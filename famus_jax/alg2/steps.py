"""Jitted steps of Algorithm 2 besides the core's meta step.

- `per_example_losses`: eval-mode CE per example on a padded batch (the GMM's
  input; one compile for the whole training-set pass).
- `ssl_train_step`: the semi-supervised step on a pseudo-clean batch (labels
  refined) and a pseudo-noisy batch (labels co-guessed with the other network),
  mixup, `w_x L_x + λ_u L_u + w_π L_π`; applied after each supervised step.
- `eval_pair`: test-set sums for both networks and their ensemble (mean of the
  softmax outputs, as DivideMix evaluates).

How the SSL term combines with the meta step (our design): each iteration is
the core's `meta_train_step` (Virtual-, Meta-, Actual-Train on a batch of the
whole training set, validation batch from the other network's pseudo-clean
set), then `ssl_train_step` on the pseudo-clean/-noisy batches at the
parameters the meta step produced. The SSL update uses its own momentum buffer
(PyTorch-style heavy ball, `m ← μ m + g`, `w ← w − α_t m`) at the same
learning rate α_t as the supervised step of that iteration and no weight decay
(the supervised optimizer applies it once). Momentum is linear, so this equals
one optimizer on the summed loss `L_meta + L_ssl` evaluated alternately
(the SSL gradient is taken after the supervised update), and it leaves the core
step and its optimizer's schedule untouched.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from famus_jax import losses as losses_lib
from famus_jax.alg2 import ssl as ssl_lib
from famus_jax.core import StepSetup, TrainState
from famus_jax.core import forward as forward_lib


@dataclasses.dataclass(frozen=True)
class SslSetup:
  """Static settings of the SSL step (from `config.alg2.ssl`; jit-static).

  Attributes:
    num_classes: C.
    temperature: sharpening T.
    alpha: mixup Beta(α, α).
    mixup: mix inputs/targets (False: λ = 1).
    co_guess: average both networks' guesses (False: own network only).
    label_refine: refine pseudo-clean targets with the clean probability
      (False: one-hot observed labels).
    labeled_weight: w_x of L_x (0: no labelled term).
    prior_weight: w_π of the uniform-prior regulariser (0: off).
    momentum: μ of the SSL momentum buffer.
  """
  num_classes: int
  temperature: float = 0.5
  alpha: float = 4.0
  mixup: bool = True
  co_guess: bool = True
  label_refine: bool = True
  labeled_weight: float = 1.0
  prior_weight: float = 1.0
  momentum: float = 0.9

  def optimizer(self) -> optax.GradientTransformation:
    """The SSL momentum buffer (the learning rate is applied in the step)."""
    return optax.trace(decay=self.momentum)


def per_example_losses(params, batch_stats, images, labels, *, apply_fn):
  """(n,) eval-mode cross-entropy of the given (noisy) labels."""
  logits, _ = forward_lib.apply_model(apply_fn, params, batch_stats, images, train=False)
  return losses_lib.cross_entropy(logits, labels)


def _probs(apply_fn, params, batch_stats, images, *, train, rng=None):
  logits, _ = forward_lib.apply_model(apply_fn, params, batch_stats, images,
                                      train=train, rng=rng)
  return jax.lax.stop_gradient(jax.nn.softmax(logits, axis=-1))


def ssl_targets(state: TrainState, other_params, other_stats, labeled: dict,
                unlabeled: dict, rng, *, apply_fn, ssl: SslSetup):
  """Targets of the labelled and unlabelled views (no gradient).

  Own guesses use a train-mode forward (batch statistics, discarded), the other
  network eval mode (as DivideMix: `net.train(); net2.eval()`).

  Returns:
    (targets_x (B, C), targets_u (U, C)).
  """
  r1, r2, r3, r4 = jax.random.split(rng, 4)
  own = lambda images, r: _probs(apply_fn, state.params, state.batch_stats, images,
                                 train=True, rng=r)
  other = lambda images: _probs(apply_fn, other_params, other_stats, images, train=False)
  guesses = [own(unlabeled['image'], r1), own(unlabeled['image2'], r2)]
  if ssl.co_guess:
    guesses += [other(unlabeled['image']), other(unlabeled['image2'])]
  targets_u = ssl_lib.co_guess(guesses, ssl.temperature)
  onehot = jax.nn.one_hot(labeled['label'], ssl.num_classes, dtype=targets_u.dtype)
  if ssl.label_refine:
    own_x = [own(labeled['image'], r3), own(labeled['image2'], r4)]
    targets_x = ssl_lib.refine_labels(onehot, labeled['prob'].astype(onehot.dtype),
                                      own_x, ssl.temperature)
  else:
    targets_x = onehot
  return jax.lax.stop_gradient(targets_x), jax.lax.stop_gradient(targets_u)


def ssl_train_step(state: TrainState, ssl_opt_state, other_params, other_stats,
                   labeled: dict, unlabeled: dict, lambda_u, *, setup: StepSetup,
                   ssl: SslSetup):
  """One SSL update of the network in `state`.

  Args:
    state: the network's `TrainState` (after this iteration's supervised step).
    ssl_opt_state: the SSL momentum buffer state.
    other_params, other_stats: the other network (co-guessing; not updated).
    labeled: {'image', 'image2': (B, ...) two views, 'label': (B,) observed
      labels, 'prob': (B,) clean probabilities}.
    unlabeled: {'image', 'image2': (U, ...)[, 'true_label': (U,)]}.
    lambda_u: scalar weight of L_u (ramped up by the caller; traced).
    setup: the core `StepSetup` (apply_fn, learning-rate schedule).
    ssl: static `SslSetup`.

  Returns:
    (new state, new SSL optimizer state, metrics).
  """
  rng, r_targets, r_beta, r_perm, r_fwd = jax.random.split(state.rng, 5)
  apply_fn = setup.apply_fn
  targets_x, targets_u = ssl_targets(state, other_params, other_stats, labeled,
                                     unlabeled, r_targets, apply_fn=apply_fn, ssl=ssl)
  n_x = 2 * labeled['label'].shape[0]
  inputs = jnp.concatenate([labeled['image'], labeled['image2'],
                            unlabeled['image'], unlabeled['image2']])
  targets = jnp.concatenate([targets_x, targets_x, targets_u, targets_u])
  if ssl.mixup:
    lam = ssl_lib.mixup_lambda(r_beta, ssl.alpha)
    perm = jax.random.permutation(r_perm, inputs.shape[0])
    inputs, targets = ssl_lib.mixup(inputs, targets, lam, perm)
  else:
    lam = jnp.ones((), jnp.float32)

  def loss_fn(params):
    logits, stats = forward_lib.apply_model(apply_fn, params, state.batch_stats, inputs,
                                            train=True, rng=r_fwd)
    lx = ssl_lib.soft_cross_entropy(logits[:n_x], targets[:n_x])
    lu = ssl_lib.unlabeled_mse(logits[n_x:], targets[n_x:])
    prior = ssl_lib.prior_penalty(logits)
    loss = ssl.labeled_weight * lx + lambda_u * lu + ssl.prior_weight * prior
    return loss, (stats, lx, lu, prior)

  (loss, (stats, lx, lu, prior)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  updates, ssl_opt_state = ssl.optimizer().update(grads, ssl_opt_state, state.params)
  lr = setup.lr_schedule(jnp.maximum(state.step - 1, 0))
  params = jax.tree_util.tree_map(lambda p, u: p - lr * u, state.params, updates)
  new_state = state.replace(params=params, batch_stats=stats, rng=rng)
  metrics = {'ssl_loss': loss, 'ssl_lx': lx, 'ssl_lu': lu, 'ssl_prior': prior,
             'lambda_u': jnp.asarray(lambda_u, jnp.float32), 'mixup_lambda': lam}
  if 'true_label' in unlabeled:
    known = unlabeled['true_label'] >= 0
    hit = (jnp.argmax(targets_u, -1) == unlabeled['true_label']) & known
    metrics['guess_accuracy'] = jnp.sum(hit) / jnp.maximum(jnp.sum(known), 1)
  return new_state, ssl_opt_state, metrics


def eval_pair(params1, stats1, params2, stats2, batch, *, apply_fn):
  """Sums over a padded test batch ('mask'): hits of net1, net2, the ensemble."""
  mask = batch['mask'].astype(jnp.float32)
  labels = batch['label']
  logits1, _ = forward_lib.apply_model(apply_fn, params1, stats1, batch['image'],
                                       train=False)
  logits2, _ = forward_lib.apply_model(apply_fn, params2, stats2, batch['image'],
                                       train=False)
  p1, p2 = jax.nn.softmax(logits1, -1), jax.nn.softmax(logits2, -1)
  pe = (p1 + p2) / 2
  hit = lambda p: jnp.sum((jnp.argmax(p, -1) == labels).astype(jnp.float32) * mask)
  top5 = lambda p: jnp.sum(jnp.any(jnp.argsort(-p, -1)[:, :5] == labels[:, None], -1)
                           .astype(jnp.float32) * mask)
  nll = -jnp.sum(jnp.log(jnp.take_along_axis(pe, labels[:, None], 1)[:, 0] + 1e-12) * mask)
  return {'correct_net1': hit(p1), 'correct_net2': hit(p2), 'correct': hit(pe),
          'correct5': top5(pe), 'loss': nll, 'count': jnp.sum(mask)}


def jit_steps(setup: StepSetup, ssl: SslSetup) -> dict:
  """The compiled functions of an Alg. 2 run (each must compile once)."""
  return {
      'losses': jax.jit(functools.partial(per_example_losses, apply_fn=setup.apply_fn)),
      'ssl': jax.jit(functools.partial(ssl_train_step, setup=setup, ssl=ssl),
                     donate_argnums=(0, 1)),
      'eval': jax.jit(functools.partial(eval_pair, apply_fn=setup.apply_fn)),
  }
