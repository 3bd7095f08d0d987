"""Pre-LayerNorm Transformer blocks shared by the ViT-VQGAN tokenizer and Parti.

Every weight carries logical axis names (`embed`, `heads`, `kv`, `mlp`); activations
are constrained at block boundaries; softmax and LayerNorm run in f32 whatever the
compute dtype.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t2i.models.layers import Dense, NamedProjection, named

Dtype = Any

ACTIVATION_TOKENS = ("activation_batch", "activation_length", "activation_embed")


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


class MultiHeadAttention(nn.Module):
    """Queries attend over keys/values; `mask` [B, Q or 1, K] marks what may be seen."""

    heads: int
    head_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, queries, context, mask=None):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        def project(name):
            return NamedProjection(
                (self.heads, self.head_dim), ("embed", "heads", "kv"), name=name, use_bias=True, **kw
            )

        q, k, v = project("query")(queries), project("key")(context), project("value")(context)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(self.head_dim)
        if mask is not None:
            logits = jnp.where(mask[:, None].astype(bool), logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return NamedProjection((queries.shape[-1],), ("heads", "kv", "embed"), name="out", use_bias=True, **kw)(out)


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
        return Dense(x.shape[-1], axes=("mlp", "embed"), **kw)(h)


class TransformerBlock(nn.Module):
    """x + SelfAttn(LN(x)) [+ CrossAttn(LN(x), context)] + Mlp(LN(x)), pre-LN."""

    heads: int
    mlp_dim: int
    cross_attention: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, self_mask=None, context=None, context_mask=None):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        head_dim = x.shape[-1] // self.heads
        normed = LayerNorm(**kw, name="pre_self_attention_norm")(x)
        x = x + MultiHeadAttention(self.heads, head_dim, **kw, name="self_attention")(normed, normed, self_mask)
        if self.cross_attention:
            normed = LayerNorm(**kw, name="pre_cross_attention_norm")(x)
            mask = None if context_mask is None else context_mask[:, None, :]
            x = x + MultiHeadAttention(self.heads, head_dim, **kw, name="cross_attention")(normed, context, mask)
        x = x + MlpBlock(self.mlp_dim, **kw, name="mlp")(LayerNorm(**kw, name="pre_mlp_norm")(x))
        return nn.with_logical_constraint(x, ACTIVATION_TOKENS)


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
