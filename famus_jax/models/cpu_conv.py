"""A 2-D convolution whose derivatives take the forms XLA:CPU runs fast.

`conv_nhwc(x, w, strides, padding)` computes exactly
`lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=('NHWC',
'HWIO', 'NHWC'))`, and is evaluated by XLA's own convolution (also in forward
mode: it is a bilinear primitive like XLA's). Only its two transposes, the
gradients, are written differently, as ordinary JAX code (so `jax.jvp`,
`jax.grad` and any nesting of them work), in the forms XLA:CPU runs fast:

* filter gradient: per kernel tap (a, b) one matrix product
  `x_flatᵀ (C × M) @ G_ab (M × O)`, with `M = N·H·W` and `G_ab` the output
  cotangent shifted by the tap (and, for strides, dilated), so the input is
  read by matrix products only. XLA's own form transposes the input to `[C, H, W, N]`
  first, and XLA:CPU fuses the whole elementwise producer chain of the input
  (batch norm, ReLU, the residual stream since the stem) into that
  cache-hostile transpose, once per layer;
* input gradient of strided convolutions: a stride-1 convolution of the
  zero-dilated cotangent (XLA's own form, an input-dilated convolution, is
  not handled by XLA:CPU's fast convolution library).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

_DN = ('NHWC', 'HWIO', 'NHWC')
Pads = tuple[tuple[int, int], ...]


def _xla_conv(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_DN)


def _shifted_cotangents(g, in_hw: Sequence[int], kernel: Sequence[int],
                        strides: Sequence[int], padding: Pads) -> list:
  """[G_ab] with G_ab[n, i, j, o] = g[n, (i + p - a)/s, (j + q - b)/s, o] (0 off-grid).

  g: (N, Ho, Wo, O) -> kh·kw arrays (N, H, W, O), linear in g.
  """
  config = [(0, 0, 0)]
  for size, k, s, (lo_pad, _), out in zip(in_hw, kernel, strides, padding, g.shape[1:3]):
    lo = k - 1 - lo_pad
    hi = k - 1 + size - lo - (s * (out - 1) + 1)
    config.append((lo, hi, s - 1))
  config.append((0, 0, 0))
  gp = lax.pad(g, jnp.zeros((), g.dtype), config)
  n, o = g.shape[0], g.shape[3]
  return [lax.slice(gp, (0, kernel[0] - 1 - a, kernel[1] - 1 - b, 0),
                    (n, kernel[0] - 1 - a + in_hw[0], kernel[1] - 1 - b + in_hw[1], o))
          for a in range(kernel[0]) for b in range(kernel[1])]


def _filter_tangent(x, dw, strides, padding, out_hw):
  """conv(x, dw) as `x @ dw[a, b]` per tap, then the adjoint of the shifts (linear in dw)."""
  kh, kw, c, o = dw.shape
  n, h, w, _ = x.shape
  x_flat = jnp.reshape(x, (n * h * w, c))
  z = [jnp.reshape(x_flat @ dw[a, b], (n, h, w, o)) for a in range(kh) for b in range(kw)]
  shift = functools.partial(_shifted_cotangents, in_hw=(h, w), kernel=(kh, kw),
                            strides=strides, padding=padding)
  g_shape = jax.ShapeDtypeStruct((n, *out_hw, o), x.dtype)
  return jax.linear_transpose(shift, g_shape)(z)[0]


def _data_tangent(dx, w, strides, padding):
  """conv(dx, w); strided ones as a stride-1 convolution then subsampling."""
  if all(s == 1 for s in strides):
    return _xla_conv(dx, w, (1, 1), padding)
  full = _xla_conv(dx, w, (1, 1), padding)
  return full[:, ::strides[0], ::strides[1], :]


def _conv_abstract_eval(x, w, *, strides, padding):
  out = jax.eval_shape(functools.partial(_xla_conv, strides=strides, padding=padding),
                       jax.ShapeDtypeStruct(x.shape, x.dtype),
                       jax.ShapeDtypeStruct(w.shape, w.dtype))
  return jax.core.ShapedArray(out.shape, out.dtype)


def _aval(v):
  """Shape and dtype of a primal or of an undefined (linear) one."""
  return v.aval if hasattr(v, 'aval') else jax.typeof(v)


def _transpose_x(ct, x, w, *, strides, padding):
  """Input gradient: XLA's own form for stride 1, else a stride-1 conv of dilated ct."""
  x_aval = _aval(x)
  shape = jax.ShapeDtypeStruct(x_aval.shape, x_aval.dtype)
  return jax.linear_transpose(lambda dx: _data_tangent(dx, w, strides, padding), shape)(ct)[0]


def _transpose_w(ct, x, w, *, strides, padding):
  """Filter gradient: per tap `x_flatᵀ @ shifted ct` (x is read by the dots only)."""
  w_aval = _aval(w)
  shape = jax.ShapeDtypeStruct(w_aval.shape, w_aval.dtype)
  out_hw = ct.shape[1:3]
  return jax.linear_transpose(
      lambda dw: _filter_tangent(x, dw, strides, padding, out_hw), shape)(ct)[0]


def _batched(args, dims, *, strides, padding):
  """Under vmap: XLA's own convolution (correct values, XLA's derivatives)."""
  fn = functools.partial(_xla_conv, strides=strides, padding=padding)
  return jax.vmap(fn, in_axes=dims)(*args), 0


conv_p = Primitive('cpu_conv_nhwc')
conv_p.def_impl(lambda x, w, *, strides, padding: _xla_conv(x, w, strides, padding))
conv_p.def_abstract_eval(_conv_abstract_eval)
ad.defbilinear(conv_p, _transpose_x, _transpose_w)
batching.primitive_batchers[conv_p] = _batched
mlir.register_lowering(conv_p, mlir.lower_fun(
    lambda x, w, *, strides, padding: _xla_conv(x, w, strides, padding),
    multiple_results=False))


def conv_nhwc(x, w, strides: tuple[int, int], padding: Pads):
  """NHWC × HWIO -> NHWC convolution, no dilation, one feature group.

  Evaluated (also in forward mode) by XLA's own convolution; its transposes
  are `_transpose_x` and `_transpose_w`, ordinary JAX code, so any nesting
  of `jax.jvp` / `jax.grad` works.

  Args:
    x: (N, H, W, C) input.
    w: (kh, kw, C, O) kernel.
    strides: (sh, sw).
    padding: ((top, bottom), (left, right)) explicit padding.
  Returns:
    (N, Ho, Wo, O), identical to XLA's convolution.
  """
  return conv_p.bind(x, w, strides=tuple(strides), padding=tuple(map(tuple, padding)))


def _is_nhwc(dimension_numbers, lhs, rhs) -> bool:
  want = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _DN)
  return (dimension_numbers is not None and
          lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == want)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, precision=None, **kwargs):
  """Drop-in for `lax.conv_general_dilated` (Flax's `nn.Conv(conv_general_dilated=)`).

  2-D NHWC/HWIO convolutions without dilation or groups go through
  `conv_nhwc`; anything else is passed to `lax.conv_general_dilated` unchanged.
  """
  plain = (lhs.ndim == 4 and feature_group_count == 1 and not kwargs
           and precision is None
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and all(d == 1 for d in (rhs_dilation or (1, 1)))
           and _is_nhwc(dimension_numbers, lhs, rhs))
  if not plain:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision, **kwargs)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  return conv_nhwc(lhs, rhs, tuple(int(s) for s in window_strides), pads)
