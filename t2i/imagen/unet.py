"""Imagen's Efficient U-Net, for the base model and the super-resolution stages.

Reads top-down: conditioning embeddings, the residual block, the attention block, the
down (DBlock) and up (UBlock) blocks, then the whole U-Net. What makes it Imagen's
"Efficient U-Net" (Saharia et al. 2022, appendix B):
- more residual blocks at lower resolutions (`num_res_blocks` per level), where they
  are cheap, fewer at high resolution;
- skip connections scaled by 1/sqrt(2);
- a DBlock downsamples *before* its convolutions and a UBlock upsamples *after* them,
  so the convolutions run at the lower resolution;
- conditioning on the noise level (log-SNR) plus a pooled text embedding, added into
  every residual block as a scale and shift of its normalised activations;
- cross-attention to the (layer-normed) text embeddings at chosen levels, optional
  self-attention; a learned null key/value so an empty prompt (all tokens masked, the
  classifier-free guidance case) still has something to attend to.
The super-resolution variant takes the noisy image concatenated with the upsampled
low-resolution image and is told the noise-conditioning augmentation level.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2i.nn.attention import dot_product_attention, key_mask
from t2i.nn.layers import ACTIVATION_IMAGE, ACTIVATION_TOKENS, Conv, Dense, GroupNorm, NamedProjection, named

Dtype = Any


def logsnr_embedding(logsnr: jax.Array, dim: int) -> jax.Array:
    """Sinusoidal features of the log-SNR (scaled into a timestep-like range)."""
    half = dim // 2
    frequencies = jnp.exp(-math.log(10_000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = (jnp.clip(logsnr, -20.0, 20.0) * 50.0)[:, None] * frequencies[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def pixel_coordinates(batch: int, height: int, width: int, dtype) -> jax.Array:
    """[batch, height, width, 2]: each pixel centre's (x, y), from -1 to 1 across the image."""
    ys = (jnp.arange(height, dtype=jnp.float32) + 0.5) / height * 2.0 - 1.0
    xs = (jnp.arange(width, dtype=jnp.float32) + 0.5) / width * 2.0 - 1.0
    grid = jnp.stack(jnp.meshgrid(xs, ys, indexing="xy"), axis=-1)
    return jnp.broadcast_to(grid, (batch, height, width, 2)).astype(dtype)


class ResBlock(nn.Module):
    """GN -> SiLU -> conv -> GN * (1 + scale) + shift -> SiLU -> conv, plus the skip."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, conditioning):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = Conv(self.features, **kw)(nn.silu(GroupNorm(32, **kw)(x)))
        scale_shift = Dense(2 * self.features, axes=("embed", "mlp"), **kw)(nn.silu(conditioning))
        scale, shift = jnp.split(scale_shift[:, None, None, :], 2, axis=-1)
        h = GroupNorm(32, **kw)(h) * (1.0 + scale) + shift
        h = Conv(self.features, kernel_init=nn.initializers.zeros, **kw)(nn.silu(h))
        if x.shape[-1] != self.features:
            x = Conv(self.features, kernel_size=1, **kw)(x)
        return nn.with_logical_constraint(x + h, ACTIVATION_IMAGE)


class Attention(nn.Module):
    """Multi-head attention of queries over keys/values, softmax in f32.

    A learned null key/value is always attendable, so fully masked context (an empty
    prompt) yields a defined output instead of NaN.
    """

    heads: int
    head_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, queries, context, context_mask=None):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        batch = queries.shape[0]

        def project(name, x):
            return NamedProjection((self.heads, self.head_dim), ("embed", "heads", "kv"), name=name, **kw)(x)

        q, k, v = project("query", queries), project("key", context), project("value", context)
        null_kv = self.param(
            "null_kv",
            named(nn.initializers.normal(1.0), (None, "heads", "kv")),
            (2, self.heads, self.head_dim),
            self.param_dtype,
        )
        k = jnp.concatenate([jnp.broadcast_to(null_kv[0].astype(k.dtype), (batch, 1) + k.shape[2:]), k], axis=1)
        v = jnp.concatenate([jnp.broadcast_to(null_kv[1].astype(v.dtype), (batch, 1) + v.shape[2:]), v], axis=1)
        mask = None
        if context_mask is not None:
            mask = key_mask(jnp.concatenate([jnp.ones((batch, 1), bool), context_mask.astype(bool)], axis=1))
        out, weights = dot_product_attention(q, k, v, mask=mask, dtype=self.dtype)
        # Kept only when the caller asks (`apply(..., mutable=["intermediates"])`):
        # attention-map losses and diagnostics read it; ordinary calls pay nothing.
        self.sow("intermediates", "weights", weights)
        return NamedProjection(
            (queries.shape[-1],), ("heads", "kv", "embed"), kernel_init=nn.initializers.zeros, name="out", **kw
        )(out)


class AttentionBlock(nn.Module):
    """Optional self-attention, then cross-attention to the text, then an optional
    feed-forward layer (a Transformer block when `ff_mult` > 0), on a feature map."""

    heads: int
    head_dim: int
    self_attention: bool
    cross_attention: bool
    ff_mult: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, text, text_mask):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, h, w, c = x.shape
        tokens = x.reshape(b, h * w, c)
        if self.self_attention:
            normed = GroupNorm(32, **kw)(x).reshape(b, h * w, c)
            tokens = tokens + Attention(self.heads, self.head_dim, **kw, name="self_attention")(normed, normed)
        if self.cross_attention:
            normed = GroupNorm(32, **kw)(tokens.reshape(b, h, w, c)).reshape(b, h * w, c)
            tokens = tokens + Attention(self.heads, self.head_dim, **kw, name="cross_attention")(
                normed, text, text_mask
            )
        if self.ff_mult:
            normed = GroupNorm(32, **kw)(tokens.reshape(b, h, w, c)).reshape(b, h * w, c)
            hidden = nn.gelu(Dense(self.ff_mult * c, axes=("embed", "mlp"), **kw)(normed))
            tokens = tokens + Dense(c, axes=("mlp", "embed"), kernel_init=nn.initializers.zeros, **kw)(hidden)
        return nn.with_logical_constraint(tokens.reshape(b, h, w, c), ACTIVATION_IMAGE)


class DBlock(nn.Module):
    """Downsample first (strided conv), then residual blocks, then attention."""

    features: int
    num_res_blocks: int
    downsample: bool
    attention: dict | None = None  # AttentionBlock fields, or None for no attention
    attention_every_block: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, conditioning, text, text_mask):
        """Returns the block's output and each residual block's output (the skips an
        ADM-style U-Net hands from every down block to its up path)."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.downsample:
            x = Conv(x.shape[-1], strides=2, **kw)(x)
        outputs = []
        for index in range(self.num_res_blocks):
            x = ResBlock(self.features, **kw)(x, conditioning)
            last = index == self.num_res_blocks - 1
            if self.attention is not None and (self.attention_every_block or last):
                x = AttentionBlock(**self.attention, **kw)(x, text, text_mask)
            outputs.append(x)
        return x, outputs


class UBlock(nn.Module):
    """Join the scaled skip(s), residual blocks, attention, then upsample last."""

    features: int
    num_res_blocks: int
    upsample: bool
    attention: dict | None = None  # AttentionBlock fields, or None for no attention
    attention_every_block: bool = False
    upsample_features: int = 0  # channels after upsampling (0: unchanged)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, skips, conditioning, text, text_mask):
        """`skips`: one tensor (Efficient U-Net: the DBlock's output, joined before the
        first residual block) or a list, one per residual block (ADM-style)."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        skips = list(skips) if isinstance(skips, list) else [skips]
        for index in range(self.num_res_blocks):
            if skips:
                x = jnp.concatenate([x, skips.pop() * (1.0 / math.sqrt(2.0))], axis=-1)
            x = ResBlock(self.features, **kw)(x, conditioning)
            last = index == self.num_res_blocks - 1
            if self.attention is not None and (self.attention_every_block or last):
                x = AttentionBlock(**self.attention, **kw)(x, text, text_mask)
        if self.upsample:
            b, h, w, c = x.shape
            x = jax.image.resize(x, (b, 2 * h, 2 * w, c), method="nearest")
            # Straight to the next level's (smaller) width: this conv runs at the higher
            # resolution, and keeping c channels there cost ~20% of a small U-Net's FLOPs.
            x = Conv(self.upsample_features or c, **kw)(x)
        return x


class EfficientUNet(nn.Module):
    """The Imagen U-Net. One level per entry of `channel_mults`; level i runs at
    resolution / 2^i with `base_channels * channel_mults[i]` channels and
    `num_res_blocks[i]` residual blocks in its DBlock and its UBlock.

    Inputs: x_t [B, S, S, 3], logsnr [B], text [B, L, D], text_mask [B, L], and for
    super-resolution `low_res` [B, S, S, 3] (already upsampled) and `aug_logsnr` [B].
    Output: the prediction (eps, x0 or v) [B, S, S, 3], in f32.
    """

    base_channels: int = 128
    channel_mults: Sequence[int] = (1, 2, 4)
    num_res_blocks: Sequence[int] = (2, 2, 2)
    self_attention_levels: Sequence[bool] = (False, False, True)
    cross_attention_levels: Sequence[bool] = (False, True, True)
    heads: int = 4
    head_dim: int = 32
    embed_dim: int = 512  # conditioning (noise level + pooled text) width
    # False (Efficient U-Net): one skip per level, attention once per block.
    # True (ADM-style, Imagen's base model): a skip from every residual block of the
    # down path into one of the up path, and attention after every residual block.
    dense_skips: bool = False
    attention_every_block: bool = False  # attention after every residual block, not once per block
    ff_mult: int = 0  # feed-forward width multiple in attention blocks (0: none)
    # Add a learned projection of the pixel coordinates to the first feature map, so a
    # cross-attention query knows where it is ("in the top left", "to the left of").
    # Not in the paper, whose U-Nets see position only through zero padding; the Shapes
    # base turns it on, together with a truncated-SNR loss floor (docs/results.md).
    # Zero-initialised, so turning it on in a trained model (`train.init_from`) leaves
    # its output unchanged at the first step.
    coord_channels: bool = False
    # Add the mean-pooled text embedding to the timestep conditioning (the paper's
    # choice). False leaves cross-attention as the text's only way in: an ablation of
    # whether the pooled bag of words lets the model skip reading which colour goes
    # with which shape (docs/results.md, heldout pairs).
    pooled_text: bool = True
    super_resolution: bool = False
    out_channels: int = 3
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, logsnr, text, text_mask, low_res=None, aug_logsnr=None):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        levels = len(self.channel_mults)
        for name, value in (
            ("num_res_blocks", self.num_res_blocks),
            ("self_attention_levels", self.self_attention_levels),
            ("cross_attention_levels", self.cross_attention_levels),
        ):
            if len(value) != levels:
                raise ValueError(f"{name} has {len(value)} entries, channel_mults has {levels}")

        # Conditioning: noise level (+ augmentation level for SR) + pooled text.
        conditioning = Dense(self.embed_dim, axes=(None, "mlp"), **kw)(logsnr_embedding(logsnr, self.base_channels))
        if self.super_resolution:
            aug = Dense(self.embed_dim, axes=(None, "mlp"), **kw)(logsnr_embedding(aug_logsnr, self.base_channels))
            conditioning = conditioning + aug
        text = nn.LayerNorm(
            dtype=jnp.float32,
            param_dtype=self.param_dtype,
            scale_init=named(nn.initializers.ones, ("norm",)),
            bias_init=named(nn.initializers.zeros, ("norm",)),
            name="text_norm",
        )(text.astype(jnp.float32))
        if self.pooled_text:
            mask = text_mask.astype(jnp.float32)[..., None]
            pooled = jnp.sum(text * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
            conditioning = conditioning + Dense(self.embed_dim, axes=(None, "mlp"), **kw)(pooled)
        conditioning = Dense(self.embed_dim, axes=("mlp", "embed"), **kw)(nn.silu(conditioning))
        text = nn.with_logical_constraint(text.astype(self.dtype), ACTIVATION_TOKENS)

        def attention(level):
            if not (self.self_attention_levels[level] or self.cross_attention_levels[level]):
                return None
            return dict(
                heads=self.heads,
                head_dim=self.head_dim,
                self_attention=self.self_attention_levels[level],
                cross_attention=self.cross_attention_levels[level],
                ff_mult=self.ff_mult,
            )

        h = x.astype(self.dtype)
        if self.super_resolution:
            h = jnp.concatenate([h, low_res.astype(self.dtype)], axis=-1)
        h = Conv(self.base_channels, **kw)(h)
        if self.coord_channels:
            h = h + Conv(
                self.base_channels,
                kernel_size=1,
                use_bias=False,
                kernel_init=nn.initializers.zeros,
                name="coord_proj",
                **kw,
            )(pixel_coordinates(h.shape[0], h.shape[1], h.shape[2], self.dtype))
        h = nn.with_logical_constraint(h, ACTIVATION_IMAGE)
        skips = []
        for level, mult in enumerate(self.channel_mults):
            h, outputs = DBlock(
                self.base_channels * mult,
                self.num_res_blocks[level],
                downsample=level > 0,
                attention=attention(level),
                attention_every_block=self.attention_every_block,
                **kw,
            )(h, conditioning, text, text_mask)
            skips.append(outputs if self.dense_skips else h)
        for level in reversed(range(levels)):
            h = UBlock(
                self.base_channels * self.channel_mults[level],
                self.num_res_blocks[level],
                upsample=level > 0,
                attention=attention(level),
                attention_every_block=self.attention_every_block,
                upsample_features=self.base_channels * self.channel_mults[level - 1] if level > 0 else 0,
                **kw,
            )(h, skips.pop(), conditioning, text, text_mask)
        h = nn.silu(GroupNorm(32, **kw)(h))
        out = Conv(self.out_channels, kernel_init=nn.initializers.zeros, **kw)(h)
        return out.astype(jnp.float32)
