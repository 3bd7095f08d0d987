"""ViT-VQGAN image tokenizer (Yu et al. 2022, "Vector-quantized Image Modeling with
Improved VQGAN"), the image tokenizer of Parti.

Encoder: non-overlapping p x p patches -> linear embedding + fixed 2-d sine-cosine
positions -> pre-LN Transformer blocks -> LayerNorm -> a two-layer feed-forward head
with tanh in the middle (the paper's fix for training stability). The factorized,
l2-normalised quantizer (`t2i.vqgan.quantizer`) turns each token into a code.
Decoder: the mirror image, ending in a tanh feed-forward head that predicts each
patch's pixels (3 channels, or 6 for the logit-Laplace loss: a location and a log
scale per channel). Encoder and decoder sizes are chosen separately (Parti pairs a
Small encoder with a Large decoder).

`VARIANTS` is the size table (blocks, heads, width, MLP width); the paper's Small, Base
and Large are there beside the CPU-sized ones.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2i.nn.layers import Dense
from t2i.nn.patches import patchify, unpatchify
from t2i.nn.transformer import LayerNorm, sincos_2d, transformer_stack
from t2i.vqgan.quantizer import FactorizedQuantizer

Dtype = Any


class ViTSize(NamedTuple):
    blocks: int
    heads: int
    width: int
    mlp_dim: int


VARIANTS: dict[str, ViTSize] = {
    "tiny": ViTSize(blocks=1, heads=2, width=32, mlp_dim=64),  # tests
    "shapes": ViTSize(blocks=4, heads=4, width=192, mlp_dim=768),  # Shapes on a CPU (2.1M per stack)
    "small": ViTSize(blocks=8, heads=8, width=512, mlp_dim=2048),  # the paper's Small
    "base": ViTSize(blocks=12, heads=12, width=768, mlp_dim=3072),  # Base
    "large": ViTSize(blocks=32, heads=16, width=1280, mlp_dim=5120),  # Large
}


def vit_size(name: str) -> ViTSize:
    if name not in VARIANTS:
        raise ValueError(f"unknown ViT size {name!r}; sizes are {sorted(VARIANTS)}")
    return VARIANTS[name]


class TanhHead(nn.Module):
    """Dense -> tanh -> Dense: the output head of the encoder and of the decoder."""

    hidden: int
    features: int
    axes_out: str = "embed"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = jnp.tanh(Dense(self.hidden, axes=("embed", "mlp"), **kw)(x))
        return Dense(self.features, axes=("mlp", self.axes_out), **kw)(h)


class ViTStack(nn.Module):
    """Position embeddings + blocks + final LayerNorm over a [B, grid*grid, width] sequence."""

    size: ViTSize
    grid: int
    scan: bool = False  # one scanned layer instead of `blocks` named ones (t2i.nn.transformer)
    remat: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = x + jnp.asarray(sincos_2d(self.grid, self.size.width), self.dtype)[None]
        x = transformer_stack(
            x,
            self.size.blocks,
            scan=self.scan,
            remat=self.remat,
            heads=self.size.heads,
            mlp_dim=self.size.mlp_dim,
            **kw,
        )
        return LayerNorm(**kw, name="final_norm")(x)


class ViTVQGAN(nn.Module):
    """images [B, S, S, 3] in [-1, 1] -> (decoder output [B, S, S, output_channels], aux).

    Methods for the other uses: `encode` (images -> pre-quantization tokens),
    `tokenize` (images -> code grid [B, g, g] int32), `decode_codes` (code grid ->
    decoder output), `decode` (quantized tokens -> decoder output).
    """

    image_size: int = 64
    patch_size: int = 8
    encoder: str = "shapes"
    decoder: str = "shapes"
    num_codes: int = 1024
    code_dim: int = 32
    beta: float = 0.25
    codebook_learning: str = "gradient"
    output_channels: int = 3
    scan: bool = False  # Transformer layers as one nn.scan (paper sizes), not named blocks
    remat: str = "none"  # t2i.nn.transformer.REMAT_POLICIES
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        enc, dec = vit_size(self.encoder), vit_size(self.decoder)
        self.grid = self.image_size // self.patch_size
        self.patch_embed = Dense(enc.width, axes=("patch_pixels", "embed"), **kw)
        self.encoder_stack = ViTStack(enc, self.grid, self.scan, self.remat, **kw)
        self.encoder_head = TanhHead(enc.mlp_dim, enc.width, **kw)
        self.quantizer = FactorizedQuantizer(
            features=dec.width,
            num_codes=self.num_codes,
            code_dim=self.code_dim,
            beta=self.beta,
            codebook_learning=self.codebook_learning,
            **kw,
        )
        self.decoder_stack = ViTStack(dec, self.grid, self.scan, self.remat, **kw)
        pixels = self.patch_size * self.patch_size * self.output_channels
        self.decoder_head = TanhHead(dec.mlp_dim, pixels, axes_out="patch_pixels", **kw)

    def encode(self, images: jax.Array) -> jax.Array:
        tokens = self.patch_embed(patchify(images.astype(self.dtype), self.patch_size))
        return self.encoder_head(self.encoder_stack(tokens))

    def decode(self, quantized: jax.Array) -> jax.Array:
        pixels = self.decoder_head(self.decoder_stack(quantized))
        return unpatchify(pixels, self.patch_size, self.grid).astype(jnp.float32)

    def tokenize(self, images: jax.Array) -> jax.Array:
        _, indices = self.quantizer.encode(self.encode(images))
        return indices.reshape(images.shape[0], self.grid, self.grid)

    def decode_codes(self, codes: jax.Array) -> jax.Array:
        unit = self.quantizer.lookup(codes.reshape(codes.shape[0], -1))
        return self.decode(self.quantizer.up(unit.astype(self.dtype)))

    def __call__(self, images: jax.Array):
        quantized, aux = self.quantizer(self.encode(images))
        aux = dict(aux, indices=aux["indices"].reshape(images.shape[0], self.grid, self.grid))
        return self.decode(quantized), aux
