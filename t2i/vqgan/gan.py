"""The tokenizer's adversary: a StyleGAN2-style residual discriminator, its logistic
(non-saturating) losses and the R1 gradient penalty (Karras et al. 2020; Mescheder et
al. 2018), as ViT-VQGAN trains with.

Differences from StyleGAN2, on purpose: downsampling is a 2x2 average pool rather than
a blur followed by a strided convolution, and there is no equalized learning rate
(Adam's per-parameter scaling makes it matter little at these sizes). The residual
sum is scaled by 1/sqrt(2) and the last block sees the minibatch standard deviation,
as in StyleGAN2.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2i.nn.layers import Conv, Dense

Dtype = Any


def leaky_relu(x):
    return nn.leaky_relu(x, 0.2)


def downsample(x):
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def minibatch_stddev(x: jax.Array, group_size: int = 4) -> jax.Array:
    """Appends one channel: the mean over features of the per-feature standard
    deviation within groups of `group_size` examples (whole batch if smaller)."""
    b, h, w, c = x.shape
    group = min(group_size, b)
    while b % group:
        group -= 1
    y = x.astype(jnp.float32).reshape(group, b // group, h, w, c)
    std = jnp.sqrt(jnp.var(y, axis=0) + 1e-8)  # [b/g, h, w, c]
    stat = jnp.mean(std, axis=(1, 2, 3))  # [b/g]
    stat = jnp.tile(stat, (group,))[:, None, None, None]
    return jnp.concatenate([x, jnp.broadcast_to(stat, (b, h, w, 1)).astype(x.dtype)], axis=-1)


class DiscriminatorBlock(nn.Module):
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        skip = Conv(self.features, kernel_size=1, use_bias=False, **kw)(downsample(x))
        h = leaky_relu(Conv(x.shape[-1], **kw)(x))
        h = leaky_relu(Conv(self.features, **kw)(downsample(h)))
        return (h + skip) / math.sqrt(2.0)


class Discriminator(nn.Module):
    """images [B, S, S, C] -> logits [B]; `channels[i]` is the width after block i, and
    each block halves the resolution, so S / 2**len(channels) is the final grid."""

    channels: Sequence[int] = (64, 128, 256, 256)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = leaky_relu(Conv(self.channels[0], kernel_size=1, **kw)(images.astype(self.dtype)))
        for features in self.channels:
            x = DiscriminatorBlock(features, **kw)(x)
        x = leaky_relu(Conv(self.channels[-1], **kw)(minibatch_stddev(x)))
        x = leaky_relu(Dense(self.channels[-1], axes=("embed", "mlp"), **kw)(x.reshape(x.shape[0], -1)))
        return Dense(1, axes=("mlp", None), **kw)(x)[:, 0].astype(jnp.float32)


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """Logistic loss: softplus(-D(real)) + softplus(D(fake)), batch mean."""
    return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def generator_loss(fake_logits: jax.Array) -> jax.Array:
    """Non-saturating: softplus(-D(fake)), batch mean."""
    return jnp.mean(jax.nn.softplus(-fake_logits))


def r1_penalty(discriminate, real_images: jax.Array) -> jax.Array:
    """Mean over the batch of ||d D(x) / d x||^2 at the real images (without gamma / 2)."""
    grads = jax.grad(lambda x: jnp.sum(discriminate(x)))(real_images)
    return jnp.mean(jnp.sum(jnp.square(grads.astype(jnp.float32)), axis=(1, 2, 3)))
