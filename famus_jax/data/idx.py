"""Reader and writer for the IDX format of the (Fashion-)MNIST files.

An IDX file is a 4-byte big-endian magic number ``0x0000TTDD`` (``TT`` the
element type, ``DD`` the number of dimensions), ``DD`` big-endian uint32
dimension sizes, then the elements in C order. MNIST-style files use type
``0x08`` (uint8): images have magic 2051 (``0x00000803``: N x rows x cols),
labels 2049 (``0x00000801``: N). Files may be gzipped (``*.gz``).
"""

from __future__ import annotations

import gzip
import os

import numpy as np

from famus_jax.data.sources import DataFileError

# IDX type byte -> numpy big-endian dtype.
_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
           0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
IMAGES_MAGIC = 2051  # uint8, 3 dimensions
LABELS_MAGIC = 2049  # uint8, 1 dimension


class IdxFormatError(DataFileError):
  """A file is not the IDX file it should be; str() names the file and what to do."""


def _open(path):
  with open(path, "rb") as f:
    gz = f.read(2) == b"\x1f\x8b"
  return gzip.open(path, "rb") if gz else open(path, "rb")


def read_idx(path: str, expected_magic: int | None = None) -> np.ndarray:
  """The array stored in the IDX file ``path`` (gzipped or not), native byte order.

  Args:
    path: the file.
    expected_magic: e.g. ``IMAGES_MAGIC``; a file with another magic number
      raises ``IdxFormatError`` (a wrong or corrupted file).
  Returns:
    an array of the stored dtype and shape (uint8 ``(N, 28, 28)`` for
    MNIST-style images, ``(N,)`` for labels).
  """
  try:
    with _open(path) as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise IdxFormatError(f"{path}: cannot be read as an IDX file ({e}); "
                         "replace it with the original file") from None
  magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else -1
  type_byte, ndim = (magic >> 8) & 0xFF, magic & 0xFF
  if (len(raw) < 4 or magic >> 16 != 0 or type_byte not in _DTYPES
      or (expected_magic is not None and magic != expected_magic)):
    want = (f"0x{expected_magic:08x}" if expected_magic is not None
            else "0x0000TTDD with a known type TT")
    raise IdxFormatError(
        f"{path}: not the expected IDX file (magic number 0x{max(magic, 0):08x}, "
        f"expected {want}); replace it with the original file")
  header = 4 + 4 * ndim
  dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  dtype = _DTYPES[type_byte]
  size = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
  if len(raw) != header + size:
    raise IdxFormatError(
        f"{path}: truncated or padded IDX file ({len(raw) - header} data bytes for "
        f"shape {dims}, expected {size}); replace it with the original file")
  data = np.frombuffer(raw, dtype, offset=header).reshape(dims)
  return data.astype(dtype.newbyteorder("="))


def write_idx(path: str, array: np.ndarray) -> None:
  """Writes ``array`` as an IDX file (gzipped when ``path`` ends in .gz)."""
  array = np.asarray(array)
  codes = {v.newbyteorder("="): k for k, v in _DTYPES.items()}
  type_byte = codes[array.dtype.newbyteorder("=")]
  header = ((type_byte << 8) | array.ndim).to_bytes(4, "big") + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  body = header + array.astype(_DTYPES[type_byte]).tobytes()
  opener = gzip.open if path.endswith(".gz") else open
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with opener(path, "wb") as f:
    f.write(body)
