"""What Algorithm 2 does in one epoch: the GMM split of each network, the plan
built from the other network's split, and the batches of a network's epoch
(its validation batches from the plan's pseudo-clean set, the SSL step's
labelled and unlabelled batches).

Pure pieces, each with one job; `famus_jax.alg2.cotrain.CoTraining` puts them
into the trainer.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np

from famus_jax.alg2 import gmm as gmm_lib
from famus_jax.alg2 import sampling
from famus_jax.alg2 import steps as steps_lib
from famus_jax.training import metrics as metrics_lib
from famus_jax.training.run import padded_batches

NETS = ('net1', 'net2')
OTHER = {'net1': 'net2', 'net2': 'net1'}
# Seed streams (with config.seed) of the per-epoch draws.
_STREAM_VAL, _STREAM_LAB, _STREAM_UNL, _STREAM_POOL = 0xA1, 0xA2, 0xA3, 0xA4


@dataclasses.dataclass
class EpochPlan:
  """What one network trains on in an epoch (indices into the training split),
  all from the *other* network's GMM split.

  Attributes:
    meta: meta validation set (the other's pseudo-clean set).
    labeled: SSL labelled set (the same pseudo-clean set).
    unlabeled: SSL unlabelled set (the other's pseudo-noisy set).
    prob: (N,) the other network's clean probability per training example
      (0 outside the pool).
    source: the network whose split this is.
    fallback: which sets were too small and were filled by rank.
  """
  meta: np.ndarray
  labeled: np.ndarray
  unlabeled: np.ndarray
  prob: np.ndarray
  source: str
  fallback: dict


def plan_epoch(split: gmm_lib.GmmSplit, pool: np.ndarray, num_train: int, *,
               source: str, min_clean: int, min_noisy: int) -> EpochPlan:
  """The epoch plan of the network trained against `split` (the other's GMM).

  Sets smaller than `min_clean` / `min_noisy` (degenerate splits) are replaced
  by the examples of highest / lowest clean probability.
  """
  clean, fb_clean = sampling.ensure_min_size(split.clean_indices, split.prob, min_clean)
  noisy, fb_noisy = sampling.ensure_min_size(split.noisy_indices, -split.prob, min_noisy)
  prob = np.zeros((num_train,), np.float32)
  prob[pool] = split.prob
  return EpochPlan(meta=pool[clean], labeled=pool[clean], unlabeled=pool[noisy],
                   prob=prob, source=source,
                   fallback={'clean': bool(fb_clean), 'noisy': bool(fb_noisy)})


def plan_cotraining(splits: dict, pool: np.ndarray, num_train: int, *,
                    min_clean: int, min_noisy: int) -> dict:
  """{'net1': plan from net2's split, 'net2': plan from net1's split}."""
  return {net: plan_epoch(splits[OTHER[net]], pool, num_train, source=OTHER[net],
                          min_clean=min_clean, min_noisy=min_noisy) for net in NETS}


def validation_batch(val: dict) -> dict:
  """The meta step's validation batch: a pseudo-clean batch with its labels as
  given (the true labels and indices stay on the host)."""
  return {'image': val['image'], 'label': val['label']}


def ssl_setup(config, num_classes: int) -> steps_lib.SslSetup:
  s = config.alg2.ssl
  return steps_lib.SslSetup(
      num_classes=num_classes, temperature=float(s.temperature), alpha=float(s.alpha),
      mixup=bool(s.mixup), co_guess=bool(s.co_guess), label_refine=bool(s.label_refine),
      labeled_weight=float(s.labeled_weight), prior_weight=float(s.prior_weight),
      momentum=float(config.optim.momentum))


# ---------------------------------------------------------------------- the split

def pool(seed: int, epoch: int, size: int, num_train: int) -> np.ndarray:
  """The examples whose losses the epoch's GMM splits (`alg2.gmm.pool`; 0: all)."""
  if not size or size >= num_train:
    return np.arange(num_train)
  rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, _STREAM_POOL]))
  return np.sort(rng.choice(num_train, size=size, replace=False))


def example_losses(losses_fn: Callable, state, source, batch_size: int,
                   data_config) -> np.ndarray:
  """(len(source),) eval-mode CE of the observed labels, one compiled shape."""
  out = np.zeros((len(source),), np.float32)
  pending = []
  for b, n in padded_batches(source, batch_size, data_config):
    pending.append((b['index'][:n], n, losses_fn(state.params, state.batch_stats,
                                                 b['image'], b['label'])))
  for index, n, values in pending:
    out[index] = np.asarray(values)[:n]
  return out


def split_report(losses: np.ndarray, labels: np.ndarray, true_labels: np.ndarray,
                 gmm_config, seed: int) -> tuple[gmm_lib.GmmSplit, dict]:
  """The GMM split of `losses` and its report against the true labels."""
  g = gmm_config
  split = gmm_lib.split_by_loss(losses, threshold=float(g.threshold),
                                max_iter=int(g.max_iter), tol=float(g.tol),
                                reg_covar=float(g.reg_covar), seed=seed)
  report = gmm_lib.precision_recall(split.clean, labels, true_labels)
  known = true_labels >= 0
  is_clean = (labels == true_labels)[known]
  if is_clean.any() and (~is_clean).any():
    report['auc'] = metrics_lib.auc(split.prob[known][is_clean],
                                    split.prob[known][~is_clean])
  report.update(threshold=float(g.threshold), pool=int(losses.size),
                mean_loss=float(np.mean(losses)),
                means=None if split.means is None else split.means.tolist(),
                mix_weights=None if split.weights is None else split.weights.tolist(),
                warning=split.warning)
  return split, report


# -------------------------------------------------------------------- the batches

class EpochStreams:
  """One network's batches of an epoch from its plan: validation (one view,
  the data's augmentation) and, with the SSL term, labelled and unlabelled
  (two views, `ssl_augment`), each prefetched; fixed shapes, seeded by
  (seed, stream, epoch, network)."""

  def __init__(self, source, data_config, *, seed: int, epoch: int, net_index: int,
               ssl_augment: str):
    self.source, self.data_config, self.ssl_augment = source, data_config, ssl_augment
    self.key = (seed, epoch, net_index)
    self.validation = self.labeled = self.unlabeled = None

  def open(self, plan: Optional[EpochPlan], *, meta_batch: Optional[int],
           ssl_batch: Optional[int]) -> 'EpochStreams':
    """The streams of `plan` (none without a plan; validation with
    `meta_batch`, the SSL pair with `ssl_batch`)."""
    if plan is not None and meta_batch:
      self.validation = self._stream(plan.meta, meta_batch, _STREAM_VAL, 1)
    if plan is not None and ssl_batch:
      self.labeled = self._stream(plan.labeled, ssl_batch, _STREAM_LAB, 2, plan.prob)
      self.unlabeled = self._stream(plan.unlabeled, ssl_batch, _STREAM_UNL, 2)
    return self

  def _stream(self, indices, batch_size, stream, views, extra=None):
    seed, epoch, net_index = self.key
    seed = int(np.random.SeedSequence([seed, stream, epoch, net_index])
               .generate_state(1)[0])
    idx_stream = sampling.IndexStream(indices, batch_size, seed)
    augment = self.data_config.augment if views == 1 else self.ssl_augment
    fetch = sampling.BatchFetcher(self.source, augment, seed)

    def make(k):
      b = fetch(next(idx_stream), k, views)
      if extra is not None:
        b['prob'] = extra[b['index']]
      return b
    return sampling.Prefetcher(make, depth=int(self.data_config.prefetch))

  def validation_batches(self):
    """The meta step's validation batches (None without a plan)."""
    if self.validation is None:
      return None
    return (validation_batch(b) for b in self.validation)

  def close(self) -> None:
    for pf in (self.validation, self.labeled, self.unlabeled):
      if pf is not None:
        pf.close()
