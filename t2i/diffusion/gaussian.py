"""Forward process, model parametrizations and training losses.

A model predicts one of (CONVENTIONS: names say what a thing is):
  eps: the noise,            x0 = (x_t - sigma eps) / alpha
  x0:  the clean image,      eps = (x_t - alpha x0) / sigma
  v:   alpha eps - sigma x0, x0 = alpha x_t - sigma v,  eps = sigma x_t + alpha v
The loss is the mean squared error in the parametrization's own space. In x0 terms
that weights each log-SNR by snr (eps), 1 (x0) or snr + 1 (v); `min_snr_gamma` caps the
weight at min(snr, gamma) in x0 terms (Hang et al. 2023), which speeds training up by
not spending the budget on nearly clean inputs. `snr_floor` raises the x0-terms weight
to at least that value (Salimans & Ho 2022's truncated-SNR weighting, max(snr, 1)): with
eps-like weights a step at log-SNR -4 counts 0.02x, so the high-noise steps, where
the layout can come from the text alone, are all but weighted away.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from t2i.diffusion.schedules import alpha_sigma

PARAMETRIZATIONS = ("eps", "x0", "v")


def _expand(values: jnp.ndarray, like: jnp.ndarray) -> jnp.ndarray:
    """[B] -> [B, 1, 1, ...] to broadcast against `like`."""
    return jnp.reshape(values, values.shape + (1,) * (like.ndim - values.ndim))


def diffuse(x0: jnp.ndarray, eps: jnp.ndarray, logsnr: jnp.ndarray) -> jnp.ndarray:
    """x_t = alpha x0 + sigma eps, with per-example log-SNR [B]."""
    alpha, sigma = alpha_sigma(logsnr)
    return _expand(alpha, x0) * x0 + _expand(sigma, x0) * eps


def target(x0: jnp.ndarray, eps: jnp.ndarray, logsnr: jnp.ndarray, parametrization: str) -> jnp.ndarray:
    if parametrization == "eps":
        return eps
    if parametrization == "x0":
        return x0
    if parametrization == "v":
        alpha, sigma = alpha_sigma(logsnr)
        return _expand(alpha, x0) * eps - _expand(sigma, x0) * x0
    raise ValueError(f"unknown parametrization '{parametrization}' (choose from {', '.join(PARAMETRIZATIONS)})")


def to_x0_eps(x_t: jnp.ndarray, output: jnp.ndarray, logsnr: jnp.ndarray, parametrization: str):
    """The model's output -> (x0, eps) predictions."""
    alpha, sigma = (_expand(v, x_t) for v in alpha_sigma(logsnr))
    if parametrization == "eps":
        return (x_t - sigma * output) / alpha, output
    if parametrization == "x0":
        return output, (x_t - alpha * output) / jnp.maximum(sigma, 1e-12)
    if parametrization == "v":
        return alpha * x_t - sigma * output, sigma * x_t + alpha * output
    raise ValueError(f"unknown parametrization '{parametrization}' (choose from {', '.join(PARAMETRIZATIONS)})")


def loss_weight(
    logsnr: jnp.ndarray, parametrization: str, min_snr_gamma: float = 0.0, snr_floor: float = 0.0
) -> jnp.ndarray:
    """Per-example weight on the parametrization-space MSE, so that the weight in x0
    terms is snr clipped to [snr_floor, min_snr_gamma]; 1 when neither is set."""
    if not min_snr_gamma and not snr_floor:
        return jnp.ones_like(logsnr)
    snr = jnp.exp(logsnr)
    x0_weight = jnp.minimum(snr, min_snr_gamma) if min_snr_gamma else snr
    if snr_floor:
        x0_weight = jnp.maximum(x0_weight, snr_floor)
    implied = {"eps": snr, "x0": jnp.ones_like(snr), "v": snr + 1.0}[parametrization]
    return x0_weight / implied


def diffusion_loss(
    model_output, x0, eps, logsnr, parametrization: str, min_snr_gamma: float = 0.0, snr_floor: float = 0.0
):
    """Mean over the batch of the weighted per-example MSE."""
    error = jnp.square(model_output.astype(jnp.float32) - target(x0, eps, logsnr, parametrization))
    per_example = jnp.mean(error, axis=tuple(range(1, error.ndim)))
    return jnp.mean(per_example * loss_weight(logsnr, parametrization, min_snr_gamma, snr_floor))


def sample_training_logsnr(rng: jax.Array, batch: int, schedule) -> jnp.ndarray:
    """log-SNR for a training batch: t ~ U[0, 1] (low-discrepancy: one stratified draw
    per example, as in VDM, which lowers the loss variance at no cost)."""
    offset = jax.random.uniform(rng, ())
    t = jnp.mod(offset + jnp.arange(batch, dtype=jnp.float32) / batch, 1.0)
    return schedule(t)
