"""`label_issues.png`: the top suspected label errors as a grid of images."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import matplotlib
import numpy as np

from famus_jax.training.writes import writing

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

PNG_FILE = 'label_issues.png'
# Class names by config data.name (other data sets show class ids).
CLASS_NAMES = {
    'fashion_mnist': ('T-shirt/top', 'trouser', 'pullover', 'dress', 'coat', 'sandal',
                      'shirt', 'sneaker', 'bag', 'ankle boot'),
    'cifar10': ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse',
                'ship', 'truck'),
}


def class_namer(data_name: str):
  """label id -> text: the class name where known, else the id."""
  names = CLASS_NAMES.get(data_name)
  return lambda c: names[c] if names is not None and 0 <= c < len(names) else str(c)


def unit_range(images: np.ndarray) -> np.ndarray:
  """Images as float32 in [0, 1]: uint8 sources (Fashion-MNIST, CIFAR) ÷ 255 as
  the input pipeline does, float ones as they are."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255.0
  return images.astype(np.float32)


def caption(rank: int, index: int, given: int, predicted: int, score: float,
            true: Optional[int], name=str) -> str:
  """'#1 idx 746 (0.97)', 'given → predicted' and, when known, 'true ...'."""
  text = f'#{rank} idx {index} ({score:.2f})\n{name(given)} → {name(predicted)}'
  if true is not None and true >= 0:
    text += f'\ntrue {name(true)}'
  return text


def plot_label_issues(path: str, images: np.ndarray, table, top: int,
                      title: str = '', class_names: Optional[Sequence[str]] = None,
                      data_name: str = '') -> str:
  """Writes a grid of `images` (the first `top` rows of `table`, in its order,
  (k, H, W, C), uint8 or floats in [0, 1]) captioned with rank, index, score, given →
  predicted label and, when known, the true label."""
  name = (class_namer(data_name) if class_names is None
          else lambda c: class_names[c] if 0 <= c < len(class_names) else str(c))
  k = min(int(top), images.shape[0], len(table))
  cols = min(8, max(k, 1))
  rows = max(1, math.ceil(k / cols))
  fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.3 * rows + 0.6),
                           squeeze=False)
  for i, ax in enumerate(axes.flat):
    ax.axis('off')
    if i >= k:
      continue
    image = np.clip(unit_range(images[i]), 0.0, 1.0)
    grey = image.shape[-1] == 1
    ax.imshow(image[..., 0] if grey else image, cmap='gray' if grey else None,
              vmin=0.0, vmax=1.0, interpolation='nearest')
    true = None if table.true_label is None else int(table.true_label[i])
    wrong = true is not None and true >= 0 and true != int(table.given_label[i])
    ax.set_title(caption(int(table.rank[i]), int(table.index[i]),
                         int(table.given_label[i]), int(table.predicted_label[i]),
                         float(table.score[i]), true, name),
                 fontsize=7, color='darkred' if wrong else 'black')
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  try:
    with writing(path):  # a full disk: one line naming the file
      fig.savefig(path, dpi=110)
  finally:
    plt.close(fig)
  return path
