"""Reconstruction losses of the image tokenizer: l2, logit-Laplace, perceptual.

Images are in [-1, 1] throughout. The logit-Laplace loss (Ramesh et al. 2021, DALL-E,
section A.3) models each pixel on (0, 1) with a Laplace distribution in logit space;
the decoder then predicts 6 channels, a location mu and a log scale per colour, and
the reconstruction is sigmoid(mu) mapped back. As DALL-E does, pixels are squeezed
into [eps, 1 - eps] (eps = 0.1) first so that the logit stays finite.

The perceptual distance is LPIPS-shaped (Zhang et al. 2018): features from a frozen
network, unit-normalised along channels, squared differences, an optional learned
non-negative weight per channel, spatial mean, summed over layers. Which network
gives the features is the caller's: a VGG16 with user-supplied weights at scale,
nothing on Shapes.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

LOGIT_LAPLACE_EPS = 0.1


def l2_loss(reconstruction: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error over all pixels and channels."""
    return jnp.mean(jnp.square(reconstruction.astype(jnp.float32) - target.astype(jnp.float32)))


def _squeeze(images: jax.Array, eps: float) -> jax.Array:
    """[-1, 1] -> [eps, 1 - eps]."""
    unit = (images.astype(jnp.float32) + 1.0) / 2.0
    return (1.0 - 2.0 * eps) * unit + eps


def logit_laplace_nll(outputs: jax.Array, target: jax.Array, eps: float = LOGIT_LAPLACE_EPS) -> jax.Array:
    """Mean negative log-likelihood per pixel channel; outputs [..., 2C] = (mu, log b)."""
    mu, log_b = jnp.split(outputs.astype(jnp.float32), 2, axis=-1)
    x = _squeeze(target, eps)
    logit = jnp.log(x) - jnp.log1p(-x)
    nll = jnp.log(2.0) + log_b + jnp.log(x) + jnp.log1p(-x) + jnp.abs(logit - mu) * jnp.exp(-log_b)
    return jnp.mean(nll)


def logit_laplace_image(outputs: jax.Array, eps: float = LOGIT_LAPLACE_EPS) -> jax.Array:
    """The reconstruction in [-1, 1] from (mu, log b) outputs: the distribution's median."""
    mu, _ = jnp.split(outputs.astype(jnp.float32), 2, axis=-1)
    unit = jnp.clip((jax.nn.sigmoid(mu) - eps) / (1.0 - 2.0 * eps), 0.0, 1.0)
    return unit * 2.0 - 1.0


def perceptual_distance(
    features: Callable[[jax.Array], Sequence[jax.Array]],
    reconstruction: jax.Array,
    target: jax.Array,
    channel_weights: Sequence[jax.Array] | None = None,
) -> jax.Array:
    """LPIPS-style distance, batch mean. `features(images)` returns feature maps
    [B, H, W, C_l]; `channel_weights[l]` [C_l] (non-negative) weighs layer l's channels
    (LPIPS's "lin" layers; uniform when None)."""

    def unit(f):
        f = f.astype(jnp.float32)
        return f * jax.lax.rsqrt(jnp.sum(f * f, axis=-1, keepdims=True) + 1e-10)

    total = jnp.zeros((reconstruction.shape[0],), jnp.float32)
    for i, (a, b) in enumerate(zip(features(reconstruction), features(target))):
        diff = jnp.square(unit(a) - unit(b))
        weighted = diff * channel_weights[i] if channel_weights is not None else diff
        total = total + jnp.mean(jnp.sum(weighted, axis=-1), axis=(1, 2))
    return jnp.mean(total)
