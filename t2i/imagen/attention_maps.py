"""Cross-attention maps of a U-Net, and a loss that ties words to image regions.

`Attention` sows its softmax weights into the "intermediates" collection; a caller that
applies the model with `mutable=["intermediates"]` gets them back and reads them here.

The token-region loss is TokenCompose's token term (Wang et al. 2024, "TokenCompose:
Text-to-Image Diffusion with Token-level Supervision"): for a word that names an object,
the share of the word's attention (over pixels) that falls outside the object's region,
squared. On Shapes the regions are the objects' bounding boxes, known from the
generator, and the words are each object's colour and shape: a colour word that
attends to its own object's pixels is exactly the binding that pair prompts lack (see
docs/results.md, "Why heldout pairs fail").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_attention_maps(intermediates) -> list[jax.Array]:
    """Every cross-attention layer's weights, averaged over heads, without the null key:
    a list of [B, Q, L] (Q = pixels of that layer's feature map, L = text tokens)."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(intermediates)[0]:
        if "cross_attention" in jax.tree_util.keystr(path):
            out.append(jnp.mean(leaf.astype(jnp.float32), axis=1)[:, :, 1:])  # [B, H, Q, 1+L] -> [B, Q, L]
    return out


def box_coverage(cx: jax.Array, cy: jax.Array, r: jax.Array, side: int) -> jax.Array:
    """[B, K, side * side]: the fraction of each pixel (row-major, the feature map's
    order) that object k's box [cx - r, cx + r] x [cy - r, cy + r] covers, in the
    unit-square coordinates of the Shapes generator (x right, y down)."""
    edges = jnp.arange(side + 1, dtype=jnp.float32) / side

    def overlap(centre, radius):  # [B, K] -> [B, K, side]
        lo, hi = (centre - radius)[..., None], (centre + radius)[..., None]
        return jnp.clip(jnp.minimum(hi, edges[1:]) - jnp.maximum(lo, edges[:-1]), 0.0, None) * side

    rows, columns = overlap(cy, r), overlap(cx, r)
    coverage = rows[..., :, None] * columns[..., None, :]  # [B, K, side(y), side(x)]
    return coverage.reshape(coverage.shape[:2] + (side * side,))


def token_region_loss(
    maps: list[jax.Array], word_tokens: jax.Array, cx: jax.Array, cy: jax.Array, r: jax.Array, valid: jax.Array
) -> jax.Array:
    """Mean over layers and over the named words of (1 - attention share inside the
    word's region)^2.

    maps: `cross_attention_maps` output ([B, Q, L] per layer, square feature maps).
    word_tokens: int [B, K, W], the token index of each object's W naming words (-1:
    none). A token that names several objects (a count caption's one colour word)
    has the union of their boxes as its region. cx, cy, r: [B, K] boxes; valid: bool
    [B] (False for an example whose text was dropped for guidance).
    """
    batch, num_objects, num_words = word_tokens.shape
    slots = word_tokens.reshape(batch, num_objects * num_words)  # [B, S]
    slot_valid = (slots >= 0) & valid[:, None]
    # object k lies in slot s's region if any of its words is slot s's token
    names = jnp.any(word_tokens[:, None, :, :] == slots[:, :, None, None], axis=-1) & (word_tokens[:, None, :, 0] >= 0)
    losses = []
    for weights in maps:
        side = round(weights.shape[1] ** 0.5)
        coverage = box_coverage(cx, cy, r, side)  # [B, K, Q]
        region = jnp.max(jnp.where(names[..., None], coverage[:, None], 0.0), axis=2)  # [B, S, Q]
        per_token = jnp.swapaxes(weights, 1, 2)  # [B, L, Q]
        per_token = per_token / jnp.maximum(jnp.sum(per_token, axis=-1, keepdims=True), 1e-12)
        chosen = jnp.take_along_axis(per_token, jnp.maximum(slots, 0)[..., None], axis=1)  # [B, S, Q]
        inside = jnp.sum(chosen * region, axis=-1)
        terms = jnp.square(1.0 - inside) * slot_valid
        losses.append(jnp.sum(terms) / jnp.maximum(jnp.sum(slot_valid), 1.0))
    return jnp.mean(jnp.stack(losses))
