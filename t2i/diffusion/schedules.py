"""Noise schedules as log-SNR functions of continuous time t in [0, 1].

A variance-preserving diffusion has x_t = alpha_t x_0 + sigma_t eps with
alpha_t^2 + sigma_t^2 = 1; everything follows from logsnr(t) = log(alpha_t^2 / sigma_t^2):
alpha_t^2 = sigmoid(logsnr), sigma_t^2 = sigmoid(-logsnr). t = 0 is (nearly) clean,
t = 1 (nearly) pure noise. Working in log-SNR makes the samplers schedule-agnostic:
they take any decreasing-noise grid of log-SNR values, including +inf (clean) at the
end and the discrete grids of DDPM-style schedules.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

Schedule = Callable[[jnp.ndarray], jnp.ndarray]


def alpha_sigma(logsnr: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(alpha, sigma) for log-SNR values; exact at +-inf (alpha = 1, sigma = 0 at +inf)."""
    logsnr = jnp.asarray(logsnr, jnp.float32)
    return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))


def cosine(logsnr_min: float = -20.0, logsnr_max: float = 20.0) -> Schedule:
    """The cosine schedule (Nichol & Dhariwal) in log-SNR: -2 log tan(pi t / 2),
    with t mapped so that logsnr(0) = logsnr_max and logsnr(1) = logsnr_min."""
    t_min = math.atan(math.exp(-0.5 * logsnr_max))
    t_max = math.atan(math.exp(-0.5 * logsnr_min))

    def schedule(t):
        t = jnp.asarray(t, jnp.float32)
        return -2.0 * jnp.log(jnp.tan(t_min + t * (t_max - t_min)))

    return schedule


def shifted_cosine(base_resolution: int, resolution: int, **kwargs) -> Schedule:
    """Cosine shifted by 2 log(base / resolution): at a higher resolution the same
    per-pixel noise destroys less of the image, so the shift keeps the signal-to-noise
    of the image content comparable across resolutions ("simple diffusion")."""
    shift = 2.0 * math.log(base_resolution / resolution)
    base = cosine(**kwargs)
    return lambda t: base(t) + shift


def linear(beta_start: float = 0.1, beta_end: float = 20.0) -> Schedule:
    """DDPM's linear-beta schedule in continuous time (the VP-SDE):
    log alpha_bar(t) = -(beta_start t + (beta_end - beta_start) t^2 / 2)."""

    def schedule(t):
        t = jnp.asarray(t, jnp.float32)
        log_alpha_bar = -(beta_start * t + 0.5 * (beta_end - beta_start) * t**2)
        # logsnr = log(a / (1 - a)) with a = alpha_bar, computed stably.
        return log_alpha_bar - jnp.log(-jnp.expm1(log_alpha_bar))

    return schedule


def from_alphas_cumprod(alphas_cumprod: jnp.ndarray) -> jnp.ndarray:
    """Discrete schedules (DDPM's alphas_cumprod table) as log-SNR values."""
    a = jnp.asarray(alphas_cumprod, jnp.float32)
    return jnp.log(a) - jnp.log1p(-a)


SCHEDULES = {"cosine": cosine, "shifted_cosine": shifted_cosine, "linear": linear}


def get_schedule(name: str, **kwargs) -> Schedule:
    if name not in SCHEDULES:
        raise ValueError(f"unknown noise schedule '{name}' (choose from {', '.join(SCHEDULES)})")
    return SCHEDULES[name](**kwargs)


def sampling_grid(schedule: Schedule, num_steps: int) -> jnp.ndarray:
    """num_steps + 1 log-SNR values from t = 1 down to t = 0, then +inf (clean) last:
    the final step predicts x_0 outright."""
    t = jnp.linspace(1.0, 0.0, num_steps + 1)[:-1]
    return jnp.concatenate([schedule(t), jnp.array([jnp.inf], jnp.float32)])
