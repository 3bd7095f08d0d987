"""Pre-LayerNorm Transformer blocks: one library for the ViT-VQGAN, Parti's encoder and
decoder and the CLIP towers.

A block is x + SelfAttn(LN(x)) [+ CrossAttn(LN(x), context)] + Mlp(LN(x)), with
optional causal self-attention, dropout, and a KV cache for decoding (`decode`, see
`t2i.nn.attention`). `transformer_stack` runs `num_layers` of them either as a Python
loop (parameters `block_0`, `block_1`, ...) or as one `nn.scan` over a stacked layer
(parameters under `layers`, with a leading `layers` axis), so that compile time does
not grow with depth; either way optionally rematerialised (`nn.remat`) with a named
policy (`REMAT_POLICIES`). Both are config switches: the same weights, two layouts.

Every weight carries logical axis names (`embed`, `heads`, `kv`, `mlp`, `norm`);
activations are constrained at block boundaries; softmax and LayerNorm run in f32
whatever the compute dtype.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t2i.nn.attention import MultiHeadAttention, key_mask
from t2i.nn.layers import ACTIVATION_TOKENS, Dense, named

Dtype = Any

# What a rematerialised block keeps from its forward pass for the backward pass.
REMAT_POLICIES = {
    "none": None,  # no remat: keep every activation
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole block
    "dots": jax.checkpoint_policies.checkpoint_dots,  # keep matmul outputs
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,  # keep weight-like matmuls
}


class LayerNorm(nn.Module):
    """LayerNorm in f32 with named scale and bias, returned in the compute dtype."""

    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm(
            epsilon=self.epsilon,
            dtype=jnp.float32,
            param_dtype=self.param_dtype,
            scale_init=named(nn.initializers.ones, ("norm",)),
            bias_init=named(nn.initializers.zeros, ("norm",)),
        )(x.astype(jnp.float32))
        return y.astype(self.dtype)


class MlpBlock(nn.Module):
    """Dense -> activation -> Dense, `hidden` wide."""

    hidden: int
    activation: str = "gelu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = getattr(nn, self.activation)(Dense(self.hidden, axes=("embed", "mlp"), **kw)(x))
        h = nn.with_logical_constraint(h, ("activation_batch", "activation_length", "activation_mlp"))
        return Dense(x.shape[-1], axes=("mlp", "embed"), **kw)(h)


class TransformerBlock(nn.Module):
    """One pre-LN block. `self_mask` [B, L] marks real (non-padding) inputs,
    `context_mask` [B, S] real context tokens; either may be None (all real).

    `scanned=True` makes the call `(x, ...) -> (x, None)`, the carry form `nn.scan`
    wants; `transformer_stack` sets it.
    """

    heads: int
    mlp_dim: int
    head_dim: int | None = None  # default: width // heads
    cross_attention: bool = False
    causal: bool = False
    decode: bool = False
    dropout_rate: float = 0.0
    deterministic: bool = True
    activation: str = "gelu"
    scanned: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, self_mask=None, context=None, context_mask=None):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        head_dim = self.head_dim or x.shape[-1] // self.heads
        attention = dict(heads=self.heads, head_dim=head_dim, decode=self.decode, **kw)

        def dropout(h):
            return nn.Dropout(self.dropout_rate)(h, deterministic=self.deterministic) if self.dropout_rate else h

        x = nn.with_logical_constraint(x, ACTIVATION_TOKENS)
        normed = LayerNorm(**kw, name="pre_self_attention_norm")(x)
        mask = None if self_mask is None else key_mask(self_mask)
        x = x + dropout(MultiHeadAttention(causal=self.causal, **attention, name="self_attention")(normed, mask=mask))
        if self.cross_attention:
            normed = LayerNorm(**kw, name="pre_cross_attention_norm")(x)
            mask = None if context_mask is None else key_mask(context_mask)
            x = x + dropout(
                MultiHeadAttention(cross=True, **attention, name="cross_attention")(normed, context, mask=mask)
            )
        mlp = MlpBlock(self.mlp_dim, self.activation, **kw, name="mlp")
        x = x + dropout(mlp(LayerNorm(**kw, name="pre_mlp_norm")(x)))
        x = nn.with_logical_constraint(x, ACTIVATION_TOKENS)
        return (x, None) if self.scanned else x


def transformer_stack(
    x: jax.Array,
    num_layers: int,
    *,
    self_mask=None,
    context=None,
    context_mask=None,
    scan: bool = False,
    remat: str = "none",
    **block,
) -> jax.Array:
    """Runs `num_layers` TransformerBlocks(**block) over x. Call it inside a parent's
    `@nn.compact` method: the blocks become the parent's children (`block_<i>`, or
    `layers` when scanned)."""
    if remat not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {remat!r}; policies are {sorted(REMAT_POLICIES)}")
    block_class = TransformerBlock
    if remat != "none" and not block.get("decode"):
        # prevent_cse only matters outside scan (scan already keeps XLA from merging
        # the recomputation into the forward pass).
        block_class = nn.remat(block_class, policy=REMAT_POLICIES[remat], prevent_cse=not scan)
    if not scan:
        for index in range(num_layers):
            x = block_class(**block, name=f"block_{index}")(x, self_mask, context, context_mask)
        return x
    stacked = nn.scan(
        block_class,
        variable_axes={"params": 0, "cache": 0, "intermediates": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
        length=num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    x, _ = stacked(**block, scanned=True, name="layers")(x, self_mask, context, context_mask)
    return x


def sincos_2d(grid: int, dim: int) -> np.ndarray:
    """Fixed 2-d sine-cosine position embeddings [grid * grid, dim] (row-major), as in
    MAE: half the channels encode the row, half the column."""
    if dim % 4:
        raise ValueError(f"sincos position embeddings need a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")

    def encode(pos):
        angles = pos.reshape(-1, 1) * omega[None]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([encode(rows), encode(cols)], axis=1).astype(np.float32)
