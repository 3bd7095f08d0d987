"""Shapes attribute classifier: a small CenterNet-style detector on a coarse grid.

Why a grid and not "object slots": objects have no canonical order (two objects can
share an x or a y), so slot targets would be ambiguous. On a G x G grid (8 x 8 at
32 px with the default stride-2 stem and two stages: cells of 0.125) the spec's
separation rule (centres at least r1 + r2 + 0.06 >= 0.28 apart on some axis) puts two
centres at least two cells apart, so each cell holds at most one centre and a 3x3
local-maximum test separates objects.

Per cell the head predicts: objectness (is an object centre in this cell), colour,
shape, size, and the centre's offset from the cell's corner (in cells). The pooled
backbone features are the embedding used for a Frechet distance on Shapes.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t2i.data import shapes
from t2i.nn.layers import Conv, GroupNorm, ResBlock

NUM_COLORS = len(shapes.COLORS)
NUM_SHAPES = len(shapes.SHAPES)
NUM_SIZES = len(shapes.SIZES)
HEAD_CHANNELS = 1 + NUM_COLORS + NUM_SHAPES + NUM_SIZES + 2


class ShapesClassifier(nn.Module):
    widths: tuple[int, ...] = (32, 64)  # one stage per width; stride 2 between stages
    blocks_per_stage: int = 1
    stem_stride: int = 2  # a 2x2 patchify stem: full-resolution convs cost most and add little
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        """images: uint8 [B, S, S, 3] -> dict of per-cell logits [B, G, G, ...] and features."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = images.astype(self.dtype) / 127.5 - 1.0
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_height", "activation_width", None))
        x = Conv(self.widths[0], kernel_size=max(3, self.stem_stride), strides=self.stem_stride, **kw)(x)
        for i, width in enumerate(self.widths):
            if i > 0:
                x = Conv(width, strides=2, **kw)(nn.silu(GroupNorm(**kw)(x)))
            for _ in range(self.blocks_per_stage):
                x = ResBlock(width, **kw)(x)
        x = nn.silu(GroupNorm(**kw)(x))
        features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        head = Conv(HEAD_CHANNELS, kernel_size=1, **kw)(x).astype(jnp.float32)
        splits = np.cumsum([1, NUM_COLORS, NUM_SHAPES, NUM_SIZES]).tolist()
        objectness, color, shape, size, offset = jnp.split(head, splits, axis=-1)
        # A prior of about 2% objectness per cell (CenterNet's bias init), so the
        # first steps are not dominated by the many empty cells.
        return dict(
            objectness=objectness[..., 0] - 4.0, color=color, shape=shape, size=size, offset=offset, features=features
        )


def grid_targets(cx: jax.Array, cy: jax.Array, valid: jax.Array, grid: int) -> dict[str, jax.Array]:
    """Per-cell targets from padded object centres [B, N].

    `centre` [B, G, G]: 1 where an object's centre lies in the cell.
    `owner` [B, G, G]: index of the object whose centre is within one cell (Chebyshev,
    from the cell centre) of this cell, or -1; such regions never overlap (see module
    docstring), and attribute and offset losses are taken over them, which makes the
    attributes readable at whichever neighbouring cell a detection peaks in.
    """
    coords = jnp.arange(grid, dtype=jnp.float32) + 0.5
    gx = cx[:, :, None] * grid - coords[None, None, :]  # [B, N, G] (x distance in cells)
    gy = cy[:, :, None] * grid - coords[None, None, :]
    near = (jnp.abs(gy)[:, :, :, None] < 1.0) & (jnp.abs(gx)[:, :, None, :] < 1.0) & valid[:, :, None, None]
    inside = ((jnp.abs(gy) <= 0.5)[:, :, :, None] & (jnp.abs(gx) <= 0.5)[:, :, None, :]) & valid[:, :, None, None]
    owner = jnp.where(jnp.any(near, axis=1), jnp.argmax(near, axis=1), -1)  # [B, G, G]
    centre = jnp.any(inside, axis=1).astype(jnp.float32)
    return dict(centre=centre, owner=owner)


def decode(outputs: dict[str, jax.Array], threshold: float = 0.5) -> dict[str, jax.Array]:
    """Per-cell detections: peaks of objectness (3x3 local maxima above threshold)."""
    prob = jax.nn.sigmoid(outputs["objectness"])
    pooled = jax.lax.reduce_window(prob, -jnp.inf, jax.lax.max, (1, 3, 3), (1, 1, 1), "SAME")
    peak = (prob >= threshold) & (prob >= pooled)
    grid = prob.shape[-1]
    rows = jnp.arange(grid, dtype=jnp.float32)
    pred_cx = (rows[None, None, :] + outputs["offset"][..., 0]) / grid
    pred_cy = (rows[None, :, None] + outputs["offset"][..., 1]) / grid
    return dict(
        peak=peak,
        prob=prob,
        color=jnp.argmax(outputs["color"], -1),
        shape=jnp.argmax(outputs["shape"], -1),
        size=jnp.argmax(outputs["size"], -1),
        cx=pred_cx,
        cy=pred_cy,
    )
