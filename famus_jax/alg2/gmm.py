"""The GMM split of Algorithm 2 (supplement §E; DivideMix's `eval_train`).

Per-example training losses of the whole training set -> min-max normalised
-> a two-component 1-D Gaussian mixture (scikit-learn, EM with at most
`max_iter` iterations, tolerance `tol`, `reg_covar` added to the variances)
-> clean probability c_i = posterior of the component with the smaller mean
-> pseudo-clean set {i : c_i > threshold}, pseudo-noisy set the rest.

Degenerate inputs never raise: all losses equal (nothing to separate), fewer
than two examples, non-finite losses, or a fit that fails all produce a
`GmmSplit` with `warning` set (and a `warnings.warn`); a split with one set
empty is returned as it is, flagged, and the caller decides (the co-training
loop falls back to the most / least likely clean examples).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Optional

from etils import epy
import numpy as np

with epy.lazy_imports():  # imported at the first split
  from sklearn import mixture


class GmmWarning(UserWarning):
  """A degenerate GMM split (see `GmmSplit.warning`)."""


@dataclasses.dataclass
class GmmSplit:
  """Result of `split_by_loss` over N examples.

  Attributes:
    prob: (N,) float64 clean probability c_i in [0, 1].
    clean: (N,) bool, c_i > threshold.
    means: (2,) component means (normalised loss scale; low mean first), or
      None when no mixture was fitted.
    weights: (2,) mixing weights in the same order, or None.
    warning: None, or why the split is degenerate (one line).
  """
  prob: np.ndarray
  clean: np.ndarray
  means: Optional[np.ndarray] = None
  weights: Optional[np.ndarray] = None
  warning: Optional[str] = None

  @property
  def clean_indices(self) -> np.ndarray:
    return np.flatnonzero(self.clean)

  @property
  def noisy_indices(self) -> np.ndarray:
    return np.flatnonzero(~self.clean)


def normalize_losses(losses) -> tuple[np.ndarray, Optional[str]]:
  """Min-max normalisation to [0, 1]: `(l - min) / (max - min)`.

  Non-finite losses are set to the largest finite one (they look noisy); if
  all losses are equal the result is all zeros and a reason is returned.

  Args:
    losses: (N,) per-example losses.

  Returns:
    ((N,) float64 in [0, 1], None or a one-line reason).
  """
  x = np.asarray(losses, np.float64).reshape(-1)
  reason = None
  bad = ~np.isfinite(x)
  if bad.any():
    finite = x[~bad]
    fill = finite.max() if finite.size else 0.0
    x = np.where(bad, fill, x)
    reason = f'{int(bad.sum())} non-finite losses set to the largest finite one'
  if x.size == 0:
    return x, 'no losses'
  lo, hi = float(x.min()), float(x.max())
  if not hi > lo:
    return np.zeros_like(x), 'all losses are equal (nothing to separate)'
  return (x - lo) / (hi - lo), reason


def split_by_loss(losses, *, threshold: float = 0.5, max_iter: int = 10,
                  tol: float = 1e-2, reg_covar: float = 5e-4,
                  seed: int = 0) -> GmmSplit:
  """Fits the two-component GMM on the normalised losses; see the module doc.

  Args:
    losses: (N,) per-example training losses (noisy labels, eval mode).
    threshold: pseudo-clean iff clean probability > threshold.
    max_iter, tol, reg_covar: scikit-learn `GaussianMixture` EM settings
      (paper: 10, 1e-2; DivideMix: reg_covar 5e-4).
    seed: `random_state` of the k-means initialisation.

  Returns:
    A `GmmSplit`. Degenerate cases (warning set):
    - all losses equal / fewer than 2 examples: c_i = 1 for everyone (no
      evidence against any label), so every example is pseudo-clean;
    - the fit fails: c_i = 1 - normalised loss (a monotone fallback);
    - one set empty after thresholding: returned as fitted, flagged.
  """
  x, reason = normalize_losses(losses)
  n = x.size
  if n < 2 or reason in ('all losses are equal (nothing to separate)', 'no losses'):
    why = reason if n >= 2 else f'{n} example(s): cannot fit two components'
    return _warn(GmmSplit(np.ones(n), np.ones(n, bool), warning=why))
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # ConvergenceWarning at max_iter=10 is expected
      gmm = mixture.GaussianMixture(n_components=2, max_iter=int(max_iter), tol=float(tol),
                            reg_covar=float(reg_covar), random_state=int(seed))
      gmm.fit(x[:, None])
      post = gmm.predict_proba(x[:, None])
  except Exception as e:  # pylint: disable=broad-except
    prob = 1.0 - x
    return _warn(GmmSplit(prob, prob > threshold,
                          warning=f'GMM fit failed ({type(e).__name__}: {e}); '
                          'clean probability = 1 - normalised loss'))
  means = gmm.means_[:, 0]
  order = np.argsort(means)
  prob = post[:, order[0]]
  clean = prob > threshold
  split = GmmSplit(prob, clean, means[order], gmm.weights_[order], reason)
  if not clean.any() or clean.all():
    which = 'pseudo-clean' if not clean.any() else 'pseudo-noisy'
    split.warning = ((reason + '; ') if reason else '') + (
        f'the {which} set is empty at threshold {threshold}')
  return _warn(split) if split.warning else split


def _warn(split: GmmSplit) -> GmmSplit:
  warnings.warn(f'GMM split: {split.warning}', GmmWarning, stacklevel=3)
  return split


def precision_recall(predicted_clean, labels, true_labels) -> dict:
  """Quality of a pseudo-clean set against the true labels kept aside.

  Args:
    predicted_clean: (N,) bool, the pseudo-clean set.
    labels: (N,) observed (noisy) labels.
    true_labels: (N,) clean labels, -1 where unknown (left out).

  Returns:
    {'precision', 'recall', 'f1', 'clean_fraction' (share of correct labels
    among the known: the precision of choosing at random), 'num_selected',
    'num_known'}; precision/recall None when undefined (nothing selected,
    no clean example, no known label).
  """
  pred = np.asarray(predicted_clean, bool)
  labels, true_labels = np.asarray(labels), np.asarray(true_labels)
  known = true_labels >= 0
  is_clean = known & (labels == true_labels)
  sel = pred & known
  tp = int((sel & is_clean).sum())
  precision = tp / int(sel.sum()) if sel.any() else None
  recall = tp / int(is_clean.sum()) if is_clean.any() else None
  f1 = (2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and precision + recall > 0
        else None)
  return {'precision': precision, 'recall': recall, 'f1': f1,
          'clean_fraction': float(is_clean.sum() / known.sum()) if known.any() else None,
          'num_selected': int(pred.sum()), 'num_known': int(known.sum())}
