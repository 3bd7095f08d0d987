"""A drop-in `lax.conv_general_dilated` that is fast on XLA:CPU.

Why: on the project's 2-core CPU, XLA's gradient of a 3x3 convolution with respect to
its *kernel* costs about 3x PyTorch's (docs/benchmarks.md, "One convolution's
gradients"), and convolutions dominate a U-Net training step.

What runs on CPU:
- float32 3x3 stride-1 "SAME" convolutions of at least 8x8 outputs (every 3x3 layer of
  the U-Nets but the smallest) take Winograd's F(4x4, 3x3) (t2i/nn/winograd.py):
  a quarter of the multiply-adds in the forward pass and both gradients, 1.5-2.8x
  faster than XLA's convolution with the banded kernel gradient below, per layer
  (`benchmarks/conv_gradients.py`).
- every other plain convolution keeps XLA's forward pass and input gradient, which are
  on par with PyTorch, and replaces only the kernel gradient by a banded matrix product.
  The kernel gradient of a k x k convolution is one matrix product,
  dW[(i, j, c), o] = sum over output pixels p of x_patch[p, (i, j, c)] * dy[p, o].
  Materialising every patch of the batch at once (im2col) writes k*k times the input,
  tens of MB for a 32x32 batch, which overflows the last-level cache and runs at memory
  speed. So the product runs over bands of output rows (`lax.scan`), each band's patches
  a few MB, accumulating dW in the scan's carry. Banding over rows, not over the batch,
  leaves a batch-sharded input sharded (no gather on a data-parallel mesh).

Where: `lax.platform_dependent` picks these when the program is lowered for CPU and
XLA's own convolution everywhere else (GPU, TPU, and TPU programs compiled ahead of time
on a CPU host). `T2I_CONV` chooses on CPU, for A/B measurements
(`benchmarks/unet_throughput.py --conv auto,banded,xla`): `auto` (the default) as
above, `banded` without Winograd, `xla` XLA's convolution and gradients. Only 2-D
NHWC/HWIO convolutions without dilation or feature groups take these paths; any other
call is `lax.conv_general_dilated` unchanged.
"""

from __future__ import annotations

import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from t2i.nn import winograd

# Patch bytes per band: small enough to stay in the 32 MiB L3 of the reference machine
# with the band's dy and the product's workspace beside it (4 MiB measured fastest of
# 1-16 MiB on the 64-channel 32x32 convolution).
BAND_BYTES = 4 << 20
_NHWC = ("NHWC", "HWIO", "NHWC")


MODES = ("auto", "banded", "xla")


def _mode() -> str:
    mode = os.environ.get("T2I_CONV", "auto")
    if mode not in MODES:
        raise ValueError(f"T2I_CONV must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def _is_nhwc(dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return dimension_numbers == lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), _NHWC)
    return tuple(dimension_numbers) == _NHWC


def conv_general_dilated(
    lhs,
    rhs,
    window_strides: Sequence[int],
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
):
    """`lax.conv_general_dilated`'s signature (what flax's `nn.Conv` calls)."""
    plain = (
        lhs.ndim == 4
        and _is_nhwc(dimension_numbers)
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and feature_group_count == 1
        and batch_group_count == 1
        and preferred_element_type is None
    )
    mode = _mode()
    if not plain or mode == "xla":
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            batch_group_count,
            precision,
            preferred_element_type,
        )
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    strides, padding = tuple(window_strides), tuple(tuple(p) for p in padding)
    if mode == "auto" and _winograd_applies(lhs, rhs, strides, padding):
        return lax.platform_dependent(
            lhs,
            rhs,
            cpu=winograd.conv3x3,
            default=lambda x, w: _xla_conv(x, w, strides, padding, precision),
        )
    return _conv(lhs, rhs, strides, padding, precision)


def _winograd_applies(x, w, strides, padding) -> bool:
    return (
        w.shape[:2] == (3, 3)
        and strides == (1, 1)
        and padding == ((1, 1), (1, 1))
        and x.dtype == w.dtype == jnp.float32
        and min(x.shape[1:3]) >= winograd.MIN_SIDE
    )


def _xla_conv(x, w, strides, padding, precision):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, padding, precision):
    return _xla_conv(x, w, strides, padding, precision)


def _conv_fwd(x, w, strides, padding, precision):
    return _xla_conv(x, w, strides, padding, precision), (x, w)


def _conv_bwd(strides, padding, precision, residuals, dy):
    x, w = residuals
    dx = jax.vjp(lambda x: _xla_conv(x, w, strides, padding, precision), x)[1](dy)[0]

    def xla_kernel_grad(x, dy):
        return jax.vjp(lambda w: _xla_conv(x, w, strides, padding, precision), w)[1](dy)[0]

    def banded_kernel_grad(x, dy):
        # In w's dtype, as XLA's branch is (platform_dependent's branches must agree).
        return banded_kernel_gradient(x, dy, w.shape, strides, padding).astype(w.dtype)

    dw = lax.platform_dependent(x, dy, cpu=banded_kernel_grad, default=xla_kernel_grad)
    return dx, dw.astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def band_rows(batch: int, out_rows: int, row_bytes: int, budget: int = BAND_BYTES) -> int:
    """The most output rows per band (a divisor of `out_rows`) whose patches fit in
    `budget` bytes; at least one."""
    best = 1
    for rows in range(1, out_rows + 1):
        if out_rows % rows == 0 and batch * rows * row_bytes <= budget:
            best = rows
    return best


def banded_kernel_gradient(x, dy, kernel_shape, strides, padding):
    """d(loss)/d(kernel) of `conv(x, kernel)` (NHWC/HWIO) given dy = d(loss)/d(output),
    as a scan over bands of output rows of patches^T @ dy, accumulated in float32."""
    kh, kw, cin, cout = kernel_shape
    sh, sw = strides
    batch, out_h, out_w, _ = dy.shape
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    rows = band_rows(batch, out_h, out_w * kh * kw * cin * x.dtype.itemsize)
    num_bands = out_h // rows
    in_rows = (rows - 1) * sh + kh  # input rows one band of output rows reads

    def band(dw, index):
        # The band's rows of the input and of dy, sliced inside the loop: stacking the
        # overlapping input windows up front was a copy of the input per convolution,
        # 3-6% of a U-Net step on XLA:CPU, and putting dy's bands first a transposed
        # copy of dy (docs/benchmarks.md).
        xb = lax.dynamic_slice_in_dim(xp, index * rows * sh, in_rows, axis=1)
        dyb = lax.dynamic_slice_in_dim(dy, index * rows, rows, axis=1)
        patches = jnp.concatenate(
            [
                xb[:, i : i + (rows - 1) * sh + 1 : sh, j : j + (out_w - 1) * sw + 1 : sw, :]
                for i in range(kh)
                for j in range(kw)
            ],
            axis=-1,
        ).reshape(-1, kh * kw * cin)
        product = jnp.matmul(patches.T, dyb.reshape(-1, cout), preferred_element_type=jnp.float32)
        return dw + product, None

    dw, _ = lax.scan(band, jnp.zeros((kh * kw * cin, cout), jnp.float32), jnp.arange(num_bands))
    return dw.reshape(kernel_shape)
