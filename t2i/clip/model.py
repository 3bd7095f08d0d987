"""CLIP (Radford et al. 2021): a ViT image tower and a Transformer text tower trained
contrastively into one embedding space, on the shared blocks of `t2i.nn`.

Image tower: non-overlapping p x p patches (`t2i.nn.patches.patchify`) -> linear
embedding -> + learned positions (or fixed 2-d sine-cosine ones, `positions="sincos"`)
-> pre-LN Transformer blocks -> final LayerNorm -> the mean over patches (or, with
`pool="token"`, a learned class token prepended to the patches, as OpenAI's CLIP) ->
linear projection without bias.

Text tower: token embedding + learned positions -> causal pre-LN blocks that also get
the padding mask -> final LayerNorm -> the features at the last real token (the
tokenizer's EOS, `t2i.text.tokenizer`) -> linear projection without bias. Causal
attention makes that token the only one that has read the whole prompt; padding sits
after it, so it never sees padding either way.

Both embeddings are l2-normalised (in f32). A learned log temperature starts at
log(1 / 0.07), and the logit scale exp(log temperature) is clipped at 100, as in CLIP;
here by clipping at use (beyond the ceiling the parameter gets no gradient) rather
than by clamping the parameter after each step.

`VARIANTS` is the size table: `tiny` (tests), `shapes` (the CPU run) and OpenAI's
ViT-B/32 layout (`vit-b/32`; 224 px, a 49,408-piece vocabulary and 77 tokens in
OpenAI's model, which are the config's `image_size`, `vocab_size`, `text_length`).

Every weight carries logical axis names. The joint embedding's axis is `joint_embed`
(not in `t2i.parallel.mesh.LOGICAL_AXIS_RULES`, so it is replicated: the projections
are small; their `embed` side is FSDP-sharded as usual).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2i.nn.layers import Dense, named
from t2i.nn.patches import patchify
from t2i.nn.transformer import LayerNorm, sincos_2d, transformer_stack

Dtype = Any

JOINT_AXIS = "joint_embed"
INIT_LOG_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = 100.0


class CLIPSize(NamedTuple):
    embed_dim: int  # the joint embedding space
    patch_size: int
    image_width: int
    image_layers: int
    image_heads: int
    image_mlp: int
    text_width: int
    text_layers: int
    text_heads: int
    text_mlp: int


VARIANTS: dict[str, CLIPSize] = {
    # tests
    "tiny": CLIPSize(16, 8, 32, 1, 2, 64, 32, 1, 2, 64),
    # Shapes on a 2-core CPU: 32 px in 4 x 4 patches, about 0.8M parameters per tower
    "shapes": CLIPSize(128, 4, 128, 4, 4, 512, 128, 4, 4, 512),
    # OpenAI's ViT-B/32 (151M parameters with its 49,408-piece vocabulary and 77 tokens)
    "vit-b/32": CLIPSize(512, 32, 768, 12, 12, 3072, 512, 12, 8, 2048),
}


def clip_size(name: str) -> CLIPSize:
    if name not in VARIANTS:
        raise ValueError(f"unknown CLIP variant {name!r}; variants are {sorted(VARIANTS)}")
    return VARIANTS[name]


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class ImageTower(nn.Module):
    """images [B, S, S, 3] in [-1, 1] -> features [B, embed_dim] (not normalised)."""

    size: CLIPSize
    image_size: int
    positions: str = "learned"  # or "sincos"
    pool: str = "mean"  # or "token"
    scan: bool = False
    remat: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images):
        size = self.size
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"the image tower takes {self.image_size} px images, got {images.shape[1:3]}")
        grid = self.image_size // size.patch_size
        x = Dense(size.image_width, axes=("patch_pixels", "embed"), **kw, name="patch_embed")(
            patchify(images.astype(self.dtype), size.patch_size)
        )
        if self.positions == "learned":
            table = self.param(
                "position_embedding",
                named(nn.initializers.normal(0.01), (None, "embed")),
                (grid * grid, size.image_width),
                self.param_dtype,
            )
        elif self.positions == "sincos":
            table = sincos_2d(grid, size.image_width)
        else:
            raise ValueError(f"unknown image positions {self.positions!r}; choose learned or sincos")
        x = x + jnp.asarray(table, self.dtype)[None]
        if self.pool == "token":
            token = self.param(
                "class_token", named(nn.initializers.normal(0.02), ("embed",)), (size.image_width,), self.param_dtype
            )
            x = jnp.concatenate([jnp.broadcast_to(token.astype(self.dtype), (x.shape[0], 1, x.shape[2])), x], axis=1)
        elif self.pool != "mean":
            raise ValueError(f"unknown image pooling {self.pool!r}; choose mean or token")
        x = transformer_stack(
            x,
            size.image_layers,
            scan=self.scan,
            remat=self.remat,
            heads=size.image_heads,
            mlp_dim=size.image_mlp,
            **kw,
        )
        x = LayerNorm(**kw, name="final_norm")(x)
        pooled = x[:, 0] if self.pool == "token" else jnp.mean(x.astype(jnp.float32), axis=1).astype(self.dtype)
        return Dense(size.embed_dim, axes=("embed", JOINT_AXIS), use_bias=False, **kw, name="projection")(pooled)


class TextTower(nn.Module):
    """tokens int [B, L], mask bool [B, L] (True at real tokens, EOS last) -> features
    [B, embed_dim] (not normalised), read at the last real token."""

    size: CLIPSize
    vocab_size: int
    text_length: int
    scan: bool = False
    remat: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens, mask):
        size = self.size
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        length = tokens.shape[1]
        if length > self.text_length:
            raise ValueError(f"the text tower takes at most {self.text_length} tokens, got {length}")
        embedding = self.param(
            "token_embedding",
            named(nn.initializers.normal(0.02), ("vocab", "embed")),
            (self.vocab_size, size.text_width),
            self.param_dtype,
        )
        positions = self.param(
            "position_embedding",
            named(nn.initializers.normal(0.01), (None, "embed")),
            (self.text_length, size.text_width),
            self.param_dtype,
        )
        x = jnp.take(embedding, tokens, axis=0).astype(self.dtype) + positions[:length].astype(self.dtype)[None]
        mask = mask.astype(bool)
        x = transformer_stack(
            x,
            size.text_layers,
            self_mask=mask,
            scan=self.scan,
            remat=self.remat,
            heads=size.text_heads,
            mlp_dim=size.text_mlp,
            causal=True,
            **kw,
        )
        x = LayerNorm(**kw, name="final_norm")(x)
        # The last real token (EOS); an empty prompt (no real token) reads position 0.
        last = jnp.maximum(jnp.sum(mask, axis=1) - 1, 0)
        pooled = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
        return Dense(size.embed_dim, axes=("embed", JOINT_AXIS), use_bias=False, **kw, name="projection")(pooled)


class CLIP(nn.Module):
    """`__call__(images, tokens, mask) -> (image embeddings [B, D], text embeddings
    [B, D], logit scale [])`, embeddings unit-norm f32. `encode_image(images)` and
    `encode_text(tokens, mask)` are the towers alone (for `apply(..., method=...)`),
    `logit_scale()` the clipped scale."""

    variant: str = "shapes"
    image_size: int = 32
    vocab_size: int = 128
    text_length: int = 24
    positions: str = "learned"
    pool: str = "mean"
    scan: bool = False  # each tower's blocks as one nn.scan (t2i.nn.transformer)
    remat: str = "none"  # t2i.nn.transformer.REMAT_POLICIES
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        size = clip_size(self.variant)
        if self.image_size % size.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of the patch size {size.patch_size}")
        kw = dict(scan=self.scan, remat=self.remat, dtype=self.dtype, param_dtype=self.param_dtype)
        self.image = ImageTower(size, self.image_size, self.positions, self.pool, **kw)
        self.text = TextTower(size, self.vocab_size, self.text_length, **kw)
        self.log_scale = self.param(
            "log_logit_scale", named(nn.initializers.constant(INIT_LOG_SCALE), ()), (), self.param_dtype
        )

    def encode_image(self, images: jax.Array) -> jax.Array:
        return l2_normalize(self.image(images))

    def encode_text(self, tokens: jax.Array, mask: jax.Array) -> jax.Array:
        return l2_normalize(self.text(tokens, mask))

    def logit_scale(self) -> jax.Array:
        return jnp.exp(jnp.minimum(self.log_scale.astype(jnp.float32), math.log(MAX_LOGIT_SCALE)))

    def __call__(self, images, tokens, mask):
        return self.encode_image(images), self.encode_text(tokens, mask), self.logit_scale()
