"""3x3 convolutions by Winograd's minimal filtering F(4x4, 3x3), for XLA:CPU.

Why: a U-Net training step on the project's 2-core CPU is mostly 3x3 convolutions, and
XLA:CPU runs them (forward, input gradient and kernel gradient) at 120-160 GFLOP/s.
Winograd's algorithm (Lavin & Gray, "Fast Algorithms for Convolutional Neural
Networks", 2016) computes each 4x4 output tile from a 6x6 input tile with 36
multiplications per channel pair instead of 144: the convolution becomes 36 independent
matrix products [tiles, C_in] @ [C_in, C_out] between linear transforms of the input
tiles, of the kernel and of the products. The gradients are the same three kinds of
pieces transposed, so all three passes do a quarter of the multiply-adds
(docs/benchmarks.md has the per-layer and whole-step measurements).

How it is made fast on XLA:CPU: every transform is separable (rows, then columns), and
each half is written as sums of strided slices scaled by the transform's constants with
its zeros skipped, a few multiply-adds per element that XLA fuses into one loop at about
memory speed. An `optimization_barrier` between the halves keeps XLA from fusing them
into one loop that recomputes the row half for every output (3x slower). Tensors keep
the channels last and the 36 tile positions first, `[36, tiles, C]`, so the products
are one batched matmul. The gradient is written by hand (`custom_vjp`): autodiff of the
strided slices gives padded scatters that were 3-4x slower than the forward.

Accuracy: F(4x4, 3x3) in float32 matches a direct convolution to about 1e-5 of the
output's scale (the transforms' constants reach 8 and 1/24); tests/test_conv.py holds it
to that. Lower precisions would lose too much, so only float32 takes this path
(`t2i.nn.conv.conv_general_dilated` decides).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# F(4x4, 3x3): Y = A^T [(G g G^T) * (B^T d B)] A for a 6x6 input tile d and 3x3 kernel g.
B_T = np.array(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    np.float32,
)
G = np.array(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    np.float32,
)
A_T = np.array(
    [
        [1, 1, 1, 1, 1, 0],
        [0, 1, -1, 2, -2, 0],
        [0, 1, 1, 4, 4, 0],
        [0, 1, -1, 8, -8, 1],
    ],
    np.float32,
)
OUT, IN = A_T.shape  # 4x4 output tiles from 6x6 input tiles
# Below this many output rows or columns the tiles are mostly padding: at 4x4 the
# Winograd form measured 0.8x XLA's convolution with the banded kernel gradient (forward
# + both gradients), at 8x8 1.6-2.1x (benchmarks/conv_gradients.py).
MIN_SIDE = 8


def _combine(coefficients, arrays):
    """sum_i coefficients[i] * arrays[i], skipping zeros (one fused loop in XLA)."""
    total = None
    for c, array in zip(coefficients, arrays):
        if c == 0:
            continue
        term = array if c == 1 else -array if c == -1 else array * np.float32(c)
        total = term if total is None else total + term
    return jnp.zeros_like(arrays[0]) if total is None else total


def _apply(matrix, arrays):
    """[sum_i matrix[k, i] * arrays[i] for each row k], stacked on a new first axis."""
    return jnp.stack([_combine(row, arrays) for row in matrix])


def _tiles(side: int) -> int:
    return -(-side // OUT)


def _taps(x, axis: int, tiles: int):
    """The IN taps of `tiles` input tiles along `axis`: tap i of tile t is element
    OUT*t + i - 1 of x (the convolution's padding of 1), zero outside x. Slices with a
    small pad each, which XLA fuses into their consumer; padding x first was a
    separate copy as slow as a whole transform half."""
    size = x.shape[axis]
    taps = []
    for i in range(IN):
        first = 1 if i == 0 else 0  # tile 0's tap 0 is the padding row
        last = min(tiles - 1, (size - i) // OUT)  # the last tile whose tap i is inside x
        if last < first:
            shape = list(x.shape)
            shape[axis] = tiles
            taps.append(jnp.zeros(shape, x.dtype))
            continue
        piece = lax.slice_in_dim(x, OUT * first + i - 1, OUT * last + i, stride=OUT, axis=axis)
        pad = [(0, 0)] * x.ndim
        pad[axis] = (first, tiles - 1 - last)
        taps.append(jnp.pad(piece, pad))
    return taps


def _overlap_add(parts, axis: int):
    """The transpose of `_taps` without its crop: parts[i] holds tap i of each tile
    along `axis`; returns [..., tiles + 1, OUT, ...] (blocks of OUT positions) where
    position OUT*t + i sums parts[i][t]. Neighbouring tiles overlap by IN - OUT."""
    blocks = []
    for s in range(OUT):
        after = [(0, 0)] * parts[0].ndim
        after[axis] = (0, 1)
        block = jnp.pad(parts[s], after)
        if s + OUT < IN:  # the previous tile's tail lands here too
            before = [(0, 0)] * parts[0].ndim
            before[axis] = (1, 0)
            block = block + jnp.pad(parts[s + OUT], before)
        blocks.append(block)
    return jnp.stack(blocks, axis=axis + 1)


def input_transform(x):
    """x [N, H, W, C] -> V [36, N*th*tw, C], V[(b, a)] = (B^T d B)[a, b] per tile d."""
    n, h, w, c = x.shape
    th, tw = _tiles(h), _tiles(w)
    rows = lax.optimization_barrier(_apply(B_T, _taps(x, 1, th)))  # [a, N, th, W, C]
    return _apply(B_T, _taps(rows, 3, tw)).reshape(IN * IN, n * th * tw, c)


def input_transform_transpose(dv, shape):
    """The transpose of `input_transform`: dV [36, N*th*tw, C] -> dx of `shape`."""
    n, h, w, c = shape
    th, tw = _tiles(h), _tiles(w)
    dv = dv.reshape(IN, IN, n, th, tw, c)  # [b, a, ...]
    cols = _apply(B_T.T, [dv[b] for b in range(IN)])  # [j, a, N, th, tw, C]
    rows = _overlap_add(list(cols), axis=3).reshape(IN, n, th, (tw + 1) * OUT, c)
    rows = lax.optimization_barrier(rows)  # [a, N, th, W', C]
    full = _overlap_add(list(_apply(B_T.T, list(rows))), axis=1)  # [N, th+1, OUT, W', C]
    full = full.reshape(n, (th + 1) * OUT, (tw + 1) * OUT, c)
    return full[:, 1 : h + 1, 1 : w + 1]  # drop the padding row and column


def kernel_transform(kernel):
    """kernel [3, 3, Cin, Cout] -> U [36, Cin, Cout], U[(b, a)] = (G g G^T)[a, b]."""
    rows = _apply(G, list(kernel))  # [a, 3 (j), Cin, Cout]
    return _apply(G, [rows[:, j] for j in range(3)]).reshape(IN * IN, *kernel.shape[2:])


def kernel_transform_transpose(du):
    """The transpose of `kernel_transform`: dU [36, Cin, Cout] -> [3, 3, Cin, Cout]."""
    du = du.reshape(IN, IN, *du.shape[1:])  # [b, a, ...]
    cols = _apply(G.T, list(du))  # [j, a, ...]
    return _apply(G.T, [cols[:, a] for a in range(IN)])  # [i, j, ...]


def output_transform(m, shape):
    """M [36, N*th*tw, C] -> y [N, H, W, C] (`shape` is the input's), tile A^T M A."""
    n, h, w = shape[:3]
    c = m.shape[-1]
    th, tw = _tiles(h), _tiles(w)
    m = m.reshape(IN, IN, n, th, tw, c)  # [b, a, ...]
    half = lax.optimization_barrier(_apply(A_T, list(m)))  # [q, a, ...]
    # y[p][q] = sum_a A_T[p, a] half[q, a], written straight into the interleaved
    # [N, th, p, tw, q, C] layout (a separate transpose was another pass).
    per_q = [_apply(A_T, list(half[q])) for q in range(OUT)]  # [q] -> [p, N, th, tw, C]
    y = jnp.stack([jnp.stack([per_q[q][p] for q in range(OUT)], axis=3) for p in range(OUT)], axis=2)
    return y.reshape(n, th * OUT, tw * OUT, c)[:, :h, :w]


def output_transform_transpose(dy):
    """The transpose of `output_transform`: dy [N, H, W, C] -> dM [36, N*th*tw, C]."""
    n, h, w, c = dy.shape
    th, tw = _tiles(h), _tiles(w)
    dy = jnp.pad(dy, ((0, 0), (0, th * OUT - h), (0, tw * OUT - w), (0, 0)))
    dy = dy.reshape(n, th, OUT, tw, OUT, c)
    per_p = [_apply(A_T.T, [dy[:, :, p, :, q] for q in range(OUT)]) for p in range(OUT)]  # [p] -> [b, ...]
    half = lax.optimization_barrier(jnp.stack([per_p[p] for p in range(OUT)], axis=1))  # [b, p, ...]
    return jnp.stack([_apply(A_T.T, list(half[b])) for b in range(IN)]).reshape(IN * IN, n * th * tw, c)


@jax.custom_vjp
def conv3x3(x, kernel):
    """`lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)))`, NHWC/HWIO."""
    return _forward(x, kernel)[0]


def _forward(x, kernel):
    v, u = input_transform(x), kernel_transform(kernel)
    return output_transform(jnp.matmul(v, u), x.shape), (v, u)


def _backward(residuals, dy):
    v, u = residuals
    shape = (*dy.shape[:3], u.shape[1])  # x's: the output keeps the input's size
    dm = output_transform_transpose(dy)
    dv = jnp.matmul(dm, jnp.swapaxes(u, 1, 2))
    du = jnp.matmul(jnp.swapaxes(v, 1, 2), dm)
    return input_transform_transpose(dv, shape), kernel_transform_transpose(du)


conv3x3.defvjp(_forward, _backward)
