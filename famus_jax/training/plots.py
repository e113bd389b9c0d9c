"""The end-of-run figure: learning curves and meta-weight distributions."""

from __future__ import annotations

from etils import epy
import numpy as np

with epy.lazy_imports():  # imported when a run plots
  import matplotlib
  import matplotlib.pyplot as plt

from famus_jax.training.writes import writing


def _series(rows, key):
  pts = [(r['step'], r[key]) for r in rows
         if isinstance(r.get(key), (int, float)) and np.isfinite(r[key])]
  if not pts:
    return None, None
  s, v = zip(*pts)
  return np.asarray(s), np.asarray(v)


def subplots(*args, **kwargs):
  """`plt.subplots` on the file-only Agg backend."""
  matplotlib.use('Agg')
  return plt.subplots(*args, **kwargs)


def save(fig, path: str, dpi: int = 100, rect=(0, 0, 1, 1)) -> str:
  """Lays `fig` out within `rect`, writes it to `path` (`WriteError` on a
  failed write) and closes it."""
  fig.tight_layout(rect=rect)
  try:
    with writing(path):
      fig.savefig(path, dpi=dpi)
  finally:
    plt.close(fig)
  return path


def plot_run(path: str, train_rows: list[dict], eval_rows: list[dict],
             clean_weights: np.ndarray, noisy_weights: np.ndarray,
             title: str = '') -> str:
  """Writes a PNG with three panels: losses, test accuracy, weight histograms."""
  fig, axes = subplots(1, 3, figsize=(15, 4))
  ax = axes[0]
  for key, label in (('loss', 'train CE (noisy labels)'),
                     ('weighted_loss', 'weighted train loss'),
                     ('val_loss', 'meta (validation) loss')):
    s, v = _series(train_rows, key)
    if s is not None:
      ax.plot(s, v, label=label)
  ax.set_xlabel('iteration')
  ax.set_ylabel('loss')
  ax.set_title('Losses')
  ax.legend(fontsize=8)

  ax = axes[1]
  for key, label in (('test_accuracy', 'test accuracy'),
                     ('train_weight_auc', 'weight AUC (clean vs noisy)')):
    s, v = _series(eval_rows, key)
    if s is not None:
      ax.plot(s, v, marker='o', label=label)
  ax.set_xlabel('iteration')
  ax.set_ylim(0, 1)
  ax.set_title('Evaluation')
  ax.legend(fontsize=8)

  ax = axes[2]
  clean_weights = np.asarray(clean_weights)
  noisy_weights = np.asarray(noisy_weights)
  if clean_weights.size or noisy_weights.size:
    both = np.concatenate([clean_weights, noisy_weights])
    hi = max(float(np.quantile(both, 0.995)), 1e-6) if both.size else 1.0
    bins = np.linspace(0.0, hi * 1.05, 40)
    if clean_weights.size:
      ax.hist(np.clip(clean_weights, 0, bins[-1]), bins=bins, alpha=0.6, density=True,
              label=f'clean labels (n={clean_weights.size})')
    if noisy_weights.size:
      ax.hist(np.clip(noisy_weights, 0, bins[-1]), bins=bins, alpha=0.6, density=True,
              label=f'noisy labels (n={noisy_weights.size})')
    ax.legend(fontsize=8)
  else:
    ax.text(0.5, 0.5, 'no meta-weights\n(CE, or no noisy labels known)',
            ha='center', va='center', transform=ax.transAxes)
  ax.set_xlabel('relative meta-weight (batch size × V_i)')
  ax.set_title('Meta-weights, recent training batches')
  if title:
    fig.suptitle(title)
  return save(fig, path)
