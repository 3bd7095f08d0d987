"""Parti's encoder-decoder Transformer (Yu et al. 2022, "Scaling Autoregressive Models
for Content-Rich Text-to-Image Generation").

Text-to-image as sequence to sequence: a Transformer encoder reads the prompt's
sentencepiece tokens; a decoder predicts the image's ViT-VQGAN tokens one at a time,
in raster order, with causal self-attention and cross-attention to the encoder.

- Pre-LN blocks from the shared library (`t2i.nn.transformer`), scanned and
  rematerialised by config.
- Positions: learned 1-d positions for the text; for the image tokens, a learned row
  embedding plus a learned column embedding (2-d positions: the token at (r, c) gets
  row[r] + col[c]), so the decoder knows where in the grid each token sits.
- The decoder's input is the target shifted right behind a begin-of-image token
  (`BOS = num_codes`, one extra row in the input embedding).
- The output layer is tied to the input embedding (logits = h @ E[:num_codes]^T,
  scaled by 1/sqrt(width)) or a separate projection, by config.
- Logits in f32.

`VARIANTS` is the size table (the paper's 350M, 750M, 3B and 20B beside the CPU sizes).
Decoding with a KV cache is `model.clone(decode=True)` with the decoder's `decode`
method; `t2i.parti.sampling` runs the loop.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2i.nn.layers import ACTIVATION_TOKENS, Dense, named
from t2i.nn.transformer import LayerNorm, transformer_stack

Dtype = Any


class PartiSize(NamedTuple):
    encoder_layers: int
    decoder_layers: int
    width: int
    heads: int
    mlp_dim: int


# Parti's table 1 (encoder layers, decoder layers, model width, heads, MLP width), with
# the CPU sizes that Shapes trains.
VARIANTS: dict[str, PartiSize] = {
    "tiny": PartiSize(1, 2, 32, 2, 64),  # tests
    "shapes": PartiSize(3, 4, 192, 6, 768),  # Shapes on 2 CPU cores (4.0M parameters)
    "350M": PartiSize(12, 12, 1024, 16, 4096),
    "750M": PartiSize(12, 36, 1024, 16, 4096),
    "3B": PartiSize(12, 36, 2048, 32, 8192),
    "20B": PartiSize(16, 64, 4096, 64, 16384),
}


# The paper's text vocabulary (a 16,000-piece sentencepiece model); its parameter counts
# assume it.
PAPER_TEXT_VOCAB = 16_000


def parti_size(name: str) -> PartiSize:
    if name not in VARIANTS:
        raise ValueError(f"unknown Parti size {name!r}; sizes are {', '.join(VARIANTS)}")
    return VARIANTS[name]


def embedding(num: int, width: int, axes, name: str, stddev: float = 0.02, param_dtype=jnp.float32) -> nn.Embed:
    return nn.Embed(
        num, width, param_dtype=param_dtype, embedding_init=named(nn.initializers.normal(stddev), axes), name=name
    )


class Parti(nn.Module):
    """(text tokens [B, L], text mask [B, L], image tokens [B, N]) -> logits [B, N, num_codes].

    `decode=True` makes the decoder keep a KV cache (see `decode_step`)."""

    size: PartiSize
    text_vocab: int
    text_length: int
    num_codes: int
    grid: int
    tie_embeddings: bool = True
    dropout_rate: float = 0.0
    scan: bool = False
    remat: str = "none"
    decode: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def bos(self) -> int:
        return self.num_codes

    def setup(self):
        width = self.size.width
        kw = dict(param_dtype=self.param_dtype)
        self.text_embedding = embedding(self.text_vocab, width, ("vocab", "embed"), "text_embedding", **kw)
        self.text_positions = embedding(self.text_length, width, (None, "embed"), "text_positions", **kw)
        self.image_embedding = embedding(self.num_codes + 1, width, ("vocab", "embed"), "image_embedding", **kw)
        self.image_rows = embedding(self.grid, width, (None, "embed"), "image_rows", **kw)
        self.image_cols = embedding(self.grid, width, (None, "embed"), "image_cols", **kw)
        self.encoder = Encoder(self.size, self.dropout_rate, self.scan, self.remat, self.dtype, self.param_dtype)
        self.decoder = Decoder(
            self.size, self.dropout_rate, self.scan, self.remat, self.decode, self.dtype, self.param_dtype
        )
        if not self.tie_embeddings:
            self.output = Dense(self.num_codes, axes=("embed", "vocab"), dtype=self.dtype, param_dtype=self.param_dtype)

    def encode(self, text_tokens: jax.Array, text_mask: jax.Array, deterministic: bool = True) -> jax.Array:
        """[B, L] tokens and mask -> encoder output [B, L, width]."""
        positions = jnp.arange(text_tokens.shape[1])
        x = self.text_embedding(text_tokens) + self.text_positions(positions)[None]
        return self.encoder(x.astype(self.dtype), text_mask, deterministic)

    def _embed_image(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
        """Input tokens [B, T] at raster positions [T] -> embeddings with 2-d positions."""
        rows, cols = positions // self.grid, positions % self.grid
        x = self.image_embedding(tokens) + (self.image_rows(rows) + self.image_cols(cols))[None]
        return x.astype(self.dtype)

    def _logits(self, hidden: jax.Array) -> jax.Array:
        if self.tie_embeddings:
            table = self.image_embedding.embedding[: self.num_codes].astype(self.dtype)
            logits = jnp.einsum("btd,vd->btv", hidden, table) / jnp.sqrt(jnp.float32(hidden.shape[-1])).astype(
                self.dtype
            )
        else:
            logits = self.output(hidden)
        return logits.astype(jnp.float32)

    def decode_tokens(
        self,
        inputs: jax.Array,
        positions: jax.Array,
        encoded: jax.Array | None,
        text_mask: jax.Array,
        deterministic: bool = True,
    ) -> jax.Array:
        """Decoder inputs [B, T] (BOS, then tokens) at positions [T] -> logits [B, T, num_codes].
        In decode mode, `encoded` is given on the first call (the prefill of the
        cross-attention cache) and None afterwards."""
        hidden = self.decoder(self._embed_image(inputs, positions), encoded, text_mask, deterministic)
        return self._logits(hidden)

    def __call__(self, text_tokens, text_mask, image_tokens, deterministic: bool = True):
        """Teacher-forced logits of every image token given the ones before it."""
        batch, length = image_tokens.shape
        inputs = jnp.concatenate([jnp.full((batch, 1), self.bos, image_tokens.dtype), image_tokens[:, :-1]], axis=1)
        encoded = self.encode(text_tokens, text_mask, deterministic)
        return self.decode_tokens(inputs, jnp.arange(length), encoded, text_mask, deterministic)


class Encoder(nn.Module):
    size: PartiSize
    dropout_rate: float
    scan: bool
    remat: str
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        x = nn.with_logical_constraint(x, ACTIVATION_TOKENS)
        x = transformer_stack(
            x,
            self.size.encoder_layers,
            self_mask=mask,
            scan=self.scan,
            remat=self.remat,
            heads=self.size.heads,
            mlp_dim=self.size.mlp_dim,
            dropout_rate=self.dropout_rate,
            deterministic=deterministic,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        return LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="final_norm")(x)


class Decoder(nn.Module):
    size: PartiSize
    dropout_rate: float
    scan: bool
    remat: str
    decode: bool
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x, encoded, text_mask, deterministic: bool):
        x = nn.with_logical_constraint(x, ACTIVATION_TOKENS)
        x = transformer_stack(
            x,
            self.size.decoder_layers,
            context=encoded,
            context_mask=text_mask,
            scan=self.scan,
            remat=self.remat,
            heads=self.size.heads,
            mlp_dim=self.size.mlp_dim,
            cross_attention=True,
            causal=True,
            decode=self.decode,
            dropout_rate=self.dropout_rate,
            deterministic=deterministic,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        return LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="final_norm")(x)
