"""Images <-> sequences of non-overlapping patches (the ViT-VQGAN, CLIP's image tower)."""

from __future__ import annotations

import jax


def patchify(images: jax.Array, patch: int) -> jax.Array:
    """[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C], patches in row-major order."""
    b, h, w, c = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {patch}")
    x = images.reshape(b, h // patch, patch, w // patch, patch, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(tokens: jax.Array, patch: int, grid: int) -> jax.Array:
    """[B, grid*grid, p*p*C] -> [B, grid*p, grid*p, C]; the inverse of `patchify`."""
    b, _, d = tokens.shape
    c = d // (patch * patch)
    x = tokens.reshape(b, grid, grid, patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, grid * patch, grid * patch, c)
