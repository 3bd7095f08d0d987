"""The one dot-product attention of t2i, and the multi-head layer with a KV cache.

`dot_product_attention` is what every model attends with: the ViT-VQGAN, Parti's
encoder and decoder, the CLIP towers, the U-Net's attention blocks, T5 and MiniLM.
Each keeps its own projections (their parameter names are fixed by converters and
committed weights) and hands queries, keys and values to this function. Logits and
softmax run in f32 whatever the compute dtype; masked keys get exactly zero weight,
and a query whose keys are all masked (the empty prompt in cross-attention) attends
to nothing: its output is zero, not an average over padding.

`MultiHeadAttention` is the projections-plus-attention layer of the Transformer
blocks (`t2i.nn.transformer`). With `decode=True` it keeps a KV cache in the flax
`cache` collection so a decoder generates one token per call:

- self-attention: keys and values of every position so far, [B, L, H, D] each, and
  the next position to write; a call with T new tokens writes them at that position
  and lets them attend to everything before them (and causally among themselves);
- cross-attention: the encoder's keys and values, computed once by the first call
  (the one that passes `context`, the prefill) and read by every later call, which
  passes `context=None`.

The cache is created by `init` (or `jax.eval_shape(init)`) with `decode=True` on
inputs of the full length, and is sharded by its logical axes (`cache_batch`,
`cache_length`, `cache_heads`, `cache_kv`) like any other array.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2i.nn.layers import NamedProjection

Dtype = Any

CACHE_AXES = ("cache_batch", "cache_length", "cache_heads", "cache_kv")
HEAD_AXES = ("activation_batch", "activation_length", "activation_heads", None)


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    scale: float | None = None,
    dtype: Dtype | None = None,
    precision: Any = None,
) -> tuple[jax.Array, jax.Array]:
    """softmax(q k^T * scale + bias, masked) v, per head.

    query [B, Q, H, D], key and value [B, K, H, D]; `mask` bool and `bias` float
    broadcast to [B, H, Q, K]; `scale` defaults to 1/sqrt(D) (T5 passes 1.0).
    Returns (output [B, Q, H, D], weights [B, H, Q, K]), both in `dtype` (default:
    the query's).
    """
    dtype = dtype or query.dtype
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, precision=precision, preferred_element_type=jnp.float32)
    if scale is None:
        logits = logits / math.sqrt(query.shape[-1])
    elif scale != 1.0:
        logits = logits * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)
    if mask is not None:
        # Exact zeros for masked keys; a row with no visible key (the empty prompt)
        # would otherwise be a uniform average over padding.
        weights = jnp.where(mask, weights, 0.0)
    weights = weights.astype(dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, value.astype(dtype), precision=precision)
    return out, weights


def key_mask(mask: jax.Array) -> jax.Array:
    """[B, K] bool (which keys exist) -> [B, 1, 1, K], broadcastable over heads and queries."""
    return mask[:, None, None, :].astype(bool)


def causal_mask(length: int) -> jax.Array:
    """[1, 1, L, L] bool: query i sees keys 0..i."""
    positions = jnp.arange(length)
    return (positions[None, :] <= positions[:, None])[None, None]


class MultiHeadAttention(nn.Module):
    """Projections (query, key, value, out; with biases by default) around
    `dot_product_attention`, with an optional KV cache (`decode`, see the module doc).

    `cross=False`: self-attention over `inputs`, causal when `causal`. `cross=True`:
    attention of `inputs` over `context` (None in decode steps after the prefill).
    `mask` (bool, broadcastable to [B, H, Q, K]) marks visible keys: a key-padding
    mask (`key_mask`) for cross-attention or a padded encoder.
    """

    heads: int
    head_dim: int
    cross: bool = False
    causal: bool = False
    decode: bool = False
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()
    out_init: Any = nn.initializers.lecun_normal()

    def _project(self, name, x):
        return NamedProjection(
            (self.heads, self.head_dim),
            ("embed", "heads", "kv"),
            use_bias=self.use_bias,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )(x)

    @nn.compact
    def __call__(self, inputs, context=None, mask=None, bias=None):
        query = nn.with_logical_constraint(self._project("query", inputs), HEAD_AXES)
        if self.cross:
            key, value = self._cross_keys_values(context)
        else:
            key = nn.with_logical_constraint(self._project("key", inputs), HEAD_AXES)
            value = nn.with_logical_constraint(self._project("value", inputs), HEAD_AXES)
            if self.decode:
                key, value, mask = self._update_self_cache(key, value, mask)
            elif self.causal:
                causal = causal_mask(inputs.shape[1])
                mask = causal if mask is None else mask & causal
        out, _ = dot_product_attention(query, key, value, mask=mask, bias=bias, dtype=self.dtype)
        out = nn.with_logical_constraint(out, HEAD_AXES)
        return NamedProjection(
            (inputs.shape[-1],),
            ("heads", "kv", "embed"),
            use_bias=self.use_bias,
            kernel_init=self.out_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="out",
        )(out)

    def _cross_keys_values(self, context):
        """Keys and values of the encoder output; in decode mode computed by the prefill
        call and read from the cache afterwards."""
        if context is not None:
            key = nn.with_logical_constraint(self._project("key", context), HEAD_AXES)
            value = nn.with_logical_constraint(self._project("value", context), HEAD_AXES)
            if self.decode:
                cached_key = self.variable("cache", "cross_key", jnp.zeros, key.shape, key.dtype)
                cached_value = self.variable("cache", "cross_value", jnp.zeros, value.shape, value.dtype)
                cached_key.value = nn.with_logical_constraint(key, CACHE_AXES)
                cached_value.value = nn.with_logical_constraint(value, CACHE_AXES)
            return key, value
        if not (self.decode and self.has_variable("cache", "cross_key")):
            raise ValueError("cross-attention without context needs a decode cache filled by a prefill call")
        return self.get_variable("cache", "cross_key"), self.get_variable("cache", "cross_value")

    def _update_self_cache(self, key, value, mask):
        """Writes this call's keys/values at the cache position; returns the whole cache
        and the mask of what the new queries may see (the past and themselves, causally)."""
        initialised = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        if not initialised:  # `init` sizes the cache from full-length inputs
            causal = causal_mask(key.shape[1])
            return key, value, causal if mask is None else mask & causal
        steps = key.shape[1]
        position = index.value
        zero = jnp.zeros((), jnp.int32)
        keys = jax.lax.dynamic_update_slice(
            cached_key.value, key.astype(cached_key.value.dtype), (zero, position, zero, zero)
        )
        values = jax.lax.dynamic_update_slice(
            cached_value.value, value.astype(cached_value.value.dtype), (zero, position, zero, zero)
        )
        cached_key.value = nn.with_logical_constraint(keys, CACHE_AXES)
        cached_value.value = nn.with_logical_constraint(values, CACHE_AXES)
        index.value = position + steps
        query_positions = position + jnp.arange(steps)
        visible = (jnp.arange(keys.shape[1])[None, :] <= query_positions[:, None])[None, None]
        return keys, values, visible if mask is None else mask & visible
