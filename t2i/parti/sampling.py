"""Parti's sampler: the whole decode loop as one jitted function.

`sample_tokens` encodes the prompts, fills the decoder's KV cache with a prefill step
(the cross-attention keys/values of the encoder output and the begin-of-image token's
self-attention keys/values), then runs a `lax.scan` over the remaining positions,
each step one token for every row: no Python loop over tokens, no host round trip.

- Classifier-free guidance on the logits (Parti, section 2.4): the conditional and the
  unconditional rows run in one batch of 2B (the unconditional rows encode the empty
  prompt: all padding, an all-False mask), and the sampled logits are
  `null + w * (cond - null)`. Weight 1 skips the unconditional rows.
- Temperature (0: greedy), top-k, top-p (nucleus) on the guided logits.
- Each row draws from its own key (`row_keys`), folded with the position, so a
  prompt's samples do not depend on which other prompts share its batch.

`sample_tokens_uncached` is the same loop with a full forward pass over the prefix at
every step (no cache): the reference that the cached sampler must reproduce token
for token, and the baseline of the KV-cache benchmark.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from t2i.errors import UsageError
from t2i.parti.model import Parti


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    guidance_weight: float = 1.0
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off

    def check(self) -> "DecodeSettings":
        if not self.temperature >= 0:
            raise UsageError(f"--temperature must be at least 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"--top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise UsageError(f"--top_k must be at least 0 (0: off), got {self.top_k}")
        if not self.guidance_weight >= 0:
            raise UsageError(f"--guidance must be at least 0, got {self.guidance_weight}")
        return self


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Sets to -inf every logit outside the top k and outside the smallest set whose
    probability reaches top_p (the most likely token always stays)."""
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the tokens ranked above
        keep_sorted = before < top_p
        keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
        logits = jnp.where(keep, logits, -jnp.inf)
    return logits


def choose_tokens(logits: jax.Array, keys: jax.Array, settings: DecodeSettings) -> jax.Array:
    """[B, V] f32 logits, [B] keys -> [B] int32 tokens."""
    if settings.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = filter_logits(logits / settings.temperature, settings.top_k, settings.top_p)
    return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


def _with_null_rows(text_tokens, text_mask, settings: DecodeSettings, force: bool):
    if settings.guidance_weight == 1.0 and not force:
        return text_tokens, text_mask, False
    tokens = jnp.concatenate([text_tokens, jnp.zeros_like(text_tokens)])
    mask = jnp.concatenate([text_mask, jnp.zeros_like(text_mask)])
    return tokens, mask, True


def _guide(logits: jax.Array, guided: bool, weight: float) -> jax.Array:
    if not guided:
        return logits
    cond, null = jnp.split(logits, 2)
    return null + weight * (cond - null)


def init_cache(model: Parti, params, text_tokens, text_mask):
    """Zeros of the decode cache for a batch of these shapes (nothing is run)."""
    decoder = model.clone(decode=True)
    length = model.grid * model.grid
    image = jnp.zeros((text_tokens.shape[0], length), jnp.int32)
    shapes = jax.eval_shape(lambda: decoder.init(jax.random.key(0), text_tokens, text_mask, image))["cache"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def sample_tokens(
    model: Parti,
    params,
    text_tokens: jax.Array,
    text_mask: jax.Array,
    row_keys: jax.Array,
    settings: DecodeSettings,
    *,
    force_null_rows: bool = False,
) -> jax.Array:
    """Image tokens [B, grid * grid] for text [B, L]; trace it under jit (one call)."""
    batch = text_tokens.shape[0]
    length = model.grid * model.grid
    decoder = model.clone(decode=True)
    tokens, mask, guided = _with_null_rows(text_tokens, text_mask, settings, force_null_rows)
    rows = tokens.shape[0]
    encoded = decoder.apply(params, tokens, mask, method=Parti.encode)
    cache = init_cache(model, params, tokens, mask)

    def step(cache, inputs, position, context):
        logits, updated = decoder.apply(
            {**params, "cache": cache},
            inputs[:, None],
            position[None],
            context,
            mask,
            method=Parti.decode_tokens,
            mutable=["cache"],
        )
        return updated["cache"], _guide(logits[:, 0], guided, settings.guidance_weight)

    # Prefill: the cross-attention cache from the encoder, and the BOS token at 0.
    bos = jnp.full((rows,), model.bos, jnp.int32)
    cache, logits = step(cache, bos, jnp.zeros((), jnp.int32), encoded)

    def body(carry, position):
        cache, logits = carry
        token = choose_tokens(logits, jax.vmap(jax.random.fold_in, (0, None))(row_keys, position), settings)
        feed = jnp.concatenate([token, token]) if guided else token
        cache, logits = step(cache, feed, position + 1, None)
        return (cache, logits), token

    (_, logits), tokens_out = jax.lax.scan(body, (cache, logits), jnp.arange(length - 1, dtype=jnp.int32))
    last = choose_tokens(logits, jax.vmap(jax.random.fold_in, (0, None))(row_keys, length - 1), settings)
    out = jnp.concatenate([tokens_out.T, last[:, None]], axis=1)
    return out[:batch]


def sample_tokens_uncached(
    model: Parti,
    params,
    text_tokens: jax.Array,
    text_mask: jax.Array,
    row_keys: jax.Array,
    settings: DecodeSettings,
    num_positions: int | None = None,
) -> jax.Array:
    """`sample_tokens` without a cache: every step runs the decoder over the whole
    prefix (the later positions are masked off by causality). O(N^2) work.
    `num_positions`: only the first that many (the rest stay 0), for timing a prefix of
    a long grid; every step costs the same full pass."""
    length = model.grid * model.grid
    tokens, mask, guided = _with_null_rows(text_tokens, text_mask, settings, False)
    encoded = model.apply(params, tokens, mask, method=Parti.encode)
    inputs = jnp.full((tokens.shape[0], length), model.bos, jnp.int32)

    def body(position, carry):
        inputs, out = carry
        logits = model.apply(params, inputs, jnp.arange(length), encoded, mask, method=Parti.decode_tokens)
        logits = _guide(
            jax.lax.dynamic_index_in_dim(logits, position, axis=1, keepdims=False), guided, settings.guidance_weight
        )
        token = choose_tokens(logits, jax.vmap(jax.random.fold_in, (0, None))(row_keys, position), settings)
        out = out.at[:, position].set(token)
        feed = jnp.concatenate([token, token]) if guided else token
        inputs = jax.lax.dynamic_update_slice_in_dim(
            inputs, feed[:, None], jnp.minimum(position + 1, length - 1), axis=1
        )
        return inputs, out

    out = jnp.zeros((text_tokens.shape[0], length), jnp.int32)
    _, out = jax.lax.fori_loop(0, length if num_positions is None else num_positions, body, (inputs, out))
    return out
