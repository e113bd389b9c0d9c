"""Input checks at the API boundary, before anything is compiled."""

import jax
import numpy as np

from famus_jax.core import forward


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def check_batch(batch: dict, what: str, num_classes: int | None = None) -> None:
  """Checks a {'image': (n, ...), 'label': (n,)} batch; raises ValueError."""
  if not isinstance(batch, dict) or 'image' not in batch or 'label' not in batch:
    raise ValueError(f'{what} must be a dict with keys "image" and "label", got '
                     f'{type(batch).__name__} with keys {sorted(batch) if isinstance(batch, dict) else "-"}.')
  images, labels = batch['image'], batch['label']
  if np.ndim(labels) != 1:
    raise ValueError(f'{what}: labels must have shape (n,), got {np.shape(labels)}.')
  n = np.shape(labels)[0]
  if n == 0:
    raise ValueError(f'{what} is empty: it needs at least one example '
                     '(check the meta set size and meta batch size).')
  if np.shape(images)[0] != n:
    raise ValueError(f'{what}: images have {np.shape(images)[0]} examples but '
                     f'labels have {n}; they must match.')
  if not np.issubdtype(np.asarray(labels).dtype if _is_concrete(labels) else labels.dtype,
                       np.integer):
    raise ValueError(f'{what}: labels must be integers, got dtype {labels.dtype}.')
  if num_classes is not None and _is_concrete(labels):
    values = np.asarray(labels)  # host copy: no tracing even inside a jit trace
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= num_classes:
      raise ValueError(f'{what}: labels must lie in [0, {num_classes - 1}], '
                       f'found values in [{lo}, {hi}].')


def check_labels(apply_fn, params, batch_stats, batch: dict, what: str) -> None:
  """Labels within [0, C) where C is the model's output width (concrete labels only).

  C is found by `jax.eval_shape` (tracing only, nothing runs or compiles).
  """
  if not _is_concrete(batch['label']):
    return
  logits = jax.eval_shape(
      lambda p, s, x: forward.apply_model(apply_fn, p, s, x, train=False)[0],
      params, batch_stats, batch['image'])
  check_batch(batch, what, num_classes=logits.shape[-1])
