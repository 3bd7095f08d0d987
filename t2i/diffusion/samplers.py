"""Samplers over any log-SNR grid: ancestral (DDPM), DDIM (eta) and DPM-Solver++(2M).

Every sampler is one `lax.scan` over the grid, so a whole sampling run is one jitted
computation, not a Python loop of device calls. A grid is decreasing noise: log-SNR
values from the most noisy to the least, and +inf last means the final step lands on
the clean image (`schedules.sampling_grid`).

The denoiser wraps the model with classifier-free guidance (the conditional and the
unconditional halves in one batch; w = 1 is plain conditional sampling) and static or
dynamic thresholding of the x0 prediction (Imagen: s = max(1, percentile p of |x0|),
x0 <- clip(x0, -s, s) / s), after which eps is recomputed from the thresholded x0 so
the update stays consistent. Guidance can be limited to an interval of noise levels
(Kynkaanniemi et al. 2024, "Applying guidance in a limited interval improves sample and
distribution quality in diffusion models"): outside it the step is plain conditional and
its unconditional pass is skipped (a `lax.cond`), so it also costs less.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from t2i.diffusion.gaussian import _expand, to_x0_eps
from t2i.diffusion.schedules import alpha_sigma

# model_fn(x_t [B, ...], logsnr [B], conditioning pytree with batch dim B) -> output
ModelFn = Callable[[jnp.ndarray, jnp.ndarray, Any], jnp.ndarray]
SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")
THRESHOLDINGS = ("none", "static", "dynamic")


def check_sampler(sampler: str) -> None:
    """Raises ValueError naming the choices unless `sampler` is one of SAMPLERS."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler '{sampler}' (choose from {', '.join(SAMPLERS)})")


@dataclasses.dataclass(frozen=True)
class Guidance:
    weight: float = 1.0  # classifier-free guidance w; 1 = conditional only
    thresholding: str = "none"  # none | static | dynamic
    percentile: float = 0.995  # dynamic thresholding's p
    max_threshold: float = float("inf")  # cap on s (diffusers' sample_max_value)
    # Guide only at log-SNR in [lo, hi]; elsewhere w = 1. The default guides every step.
    interval: tuple[float, float] = (-math.inf, math.inf)

    def __post_init__(self):
        if self.thresholding not in THRESHOLDINGS:
            raise ValueError(f"unknown thresholding '{self.thresholding}' (choose from {', '.join(THRESHOLDINGS)})")
        if not 0.0 < self.percentile <= 1.0:
            raise ValueError(f"the dynamic thresholding percentile must be in (0, 1], got {self.percentile}")
        lo, hi = self.interval
        if not lo <= hi:
            raise ValueError(f"the guidance interval's low end {lo} is above its high end {hi}")

    @property
    def limited(self) -> bool:
        return self.interval != (-math.inf, math.inf)


def parse_interval(text: str) -> tuple[float | None, float | None]:
    """'LO:HI' in log-SNR (either side may be empty: unbounded) -> (lo, hi), None for an
    open side; '' or ':' is every step."""
    if text.strip() in ("", ":"):
        return (None, None)
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        lo, hi = (float(part) if part.strip() else None for part in parts)
    except ValueError:
        raise ValueError(f"a guidance interval is LO:HI in log-SNR (e.g. -6:2, or :2), got {text!r}") from None
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"the guidance interval {text!r} has its low end above its high end")
    return (lo, hi)


def interval_bounds(interval: tuple[float | None, float | None]) -> tuple[float, float]:
    """(lo, hi) with None as -inf / +inf, for `Guidance.interval`."""
    lo, hi = interval
    return (-math.inf if lo is None else float(lo), math.inf if hi is None else float(hi))


def threshold(x0: jnp.ndarray, guidance: Guidance) -> jnp.ndarray:
    if guidance.thresholding == "none":
        return x0
    if guidance.thresholding == "static":
        return jnp.clip(x0, -1.0, 1.0)
    if guidance.thresholding == "dynamic":
        flat = jnp.abs(x0.reshape(x0.shape[0], -1)).astype(jnp.float32)
        s = jnp.clip(jnp.quantile(flat, guidance.percentile, axis=1), 1.0, guidance.max_threshold)
        s = _expand(s, x0)
        return jnp.clip(x0, -s, s) / s
    raise AssertionError(guidance.thresholding)  # Guidance.__post_init__ admits no other


def make_denoiser(
    model_fn: ModelFn, parametrization: str, guidance: Guidance, conditioning=None, null_conditioning=None
):
    """(x_t, logsnr scalar) -> (x0, eps), guided and thresholded."""

    def guided(x, logsnrs):
        batch = x.shape[0]
        both = jax.tree.map(lambda c, u: jnp.concatenate([c, u]), conditioning, null_conditioning)
        out = model_fn(jnp.concatenate([x, x]), jnp.concatenate([logsnrs, logsnrs]), both)
        cond, uncond = out[:batch], out[batch:]
        return uncond + guidance.weight * (cond - uncond)

    def conditional(x, logsnrs):
        return model_fn(x, logsnrs, conditioning)

    def denoise(x, logsnr):
        logsnrs = jnp.full((x.shape[0],), logsnr, jnp.float32)
        if guidance.weight == 1.0:
            out = conditional(x, logsnrs)
        elif guidance.limited:
            lo, hi = guidance.interval
            inside = (logsnr >= lo) & (logsnr <= hi)
            out = jax.lax.cond(inside, guided, conditional, x, logsnrs)
        else:
            out = guided(x, logsnrs)
        x0, eps = to_x0_eps(x, out.astype(jnp.float32), logsnrs, parametrization)
        if guidance.thresholding != "none":
            x0 = threshold(x0, guidance)
            alpha, sigma = alpha_sigma(logsnr)
            eps = (x - alpha * x0) / jnp.maximum(sigma, 1e-12)
        return x0, eps

    return denoise


def _posterior(logsnr_s, logsnr_t):
    """q(x_t | x_s, x0) for t less noisy than s: (coef on x_s, coef on x0, variance)."""
    alpha_s, sigma_s = alpha_sigma(logsnr_s)
    alpha_t, sigma_t = alpha_sigma(logsnr_t)
    alpha_ts = alpha_s / alpha_t  # from t to s
    sigma_ts_sq = sigma_s**2 - alpha_ts**2 * sigma_t**2
    coef_x = alpha_ts * sigma_t**2 / sigma_s**2
    coef_x0 = alpha_t * sigma_ts_sq / sigma_s**2
    variance = jnp.maximum(sigma_ts_sq * sigma_t**2 / sigma_s**2, 1e-20)
    return coef_x, coef_x0, variance


def ddpm_step(denoise, x, logsnr_s, logsnr_t, noise):
    """Ancestral sampling: x0 prediction into the posterior mean, plus posterior noise
    (the "fixed small" variance); no noise on a final step to +inf."""
    x0, _ = denoise(x, logsnr_s)
    coef_x, coef_x0, variance = _posterior(logsnr_s, logsnr_t)
    noise_scale = jnp.where(jnp.isinf(logsnr_t), 0.0, jnp.sqrt(variance))
    return coef_x * x + coef_x0 * x0 + noise_scale * noise, x0


def ddim_step(denoise, x, logsnr_s, logsnr_t, noise, eta: float = 0.0):
    """DDIM: x_t = alpha_t x0 + sqrt(sigma_t^2 - std^2) eps + std z, std = eta * sqrt(posterior var)."""
    x0, eps = denoise(x, logsnr_s)
    alpha_t, sigma_t = alpha_sigma(logsnr_t)
    std = eta * jnp.sqrt(_posterior(logsnr_s, logsnr_t)[2]) if eta else 0.0
    std = jnp.where(jnp.isinf(logsnr_t), 0.0, std)
    direction = jnp.sqrt(jnp.maximum(sigma_t**2 - std**2, 0.0))
    out = alpha_t * x0 + direction * eps
    if eta:
        out = out + std * noise
    return out, x0


def _half_lambda(logsnr):
    return 0.5 * logsnr  # lambda = log(alpha / sigma)


def dpmpp_2m(denoise, x_init, grid, lower_order_final: bool = True):
    """DPM-Solver++(2M) (Lu et al. 2022), the multistep second-order data-prediction
    solver with diffusers' "midpoint" second-order term. The first step is first order;
    with `lower_order_final` so is the last (as diffusers does under 15 steps), and a
    step to +inf always is: there the update is exactly x0."""
    num_steps = grid.shape[0] - 1

    def body(carry, step):
        x, x0_prev, lambda_prev = carry
        logsnr_s, logsnr_t = grid[step], grid[step + 1]
        x0, _ = denoise(x, logsnr_s)
        alpha_t, sigma_t = alpha_sigma(logsnr_t)
        _, sigma_s = alpha_sigma(logsnr_s)
        lambda_s, lambda_t = _half_lambda(logsnr_s), _half_lambda(logsnr_t)
        h = lambda_t - lambda_s
        phi = -jnp.expm1(-h)  # 1 - exp(-h); exactly 1 when h = inf
        first_order = sigma_t / sigma_s * x + alpha_t * phi * x0
        r = (lambda_s - lambda_prev) / h
        d1 = (x0 - x0_prev) / jnp.where(r == 0, 1.0, r)
        second_order = first_order + 0.5 * alpha_t * phi * d1
        use_first = (step == 0) | jnp.isinf(logsnr_t)
        if lower_order_final:
            use_first |= (step == num_steps - 1) & (num_steps < 15)
        x_next = jnp.where(use_first, first_order, second_order)
        return (x_next, x0, lambda_s), (x_next, x0)

    init = (x_init, jnp.zeros_like(x_init), jnp.asarray(0.0, jnp.float32))
    (x, _, _), trajectory = jax.lax.scan(body, init, jnp.arange(num_steps))
    return x, trajectory


def sample(
    model_fn: ModelFn,
    x_init: jnp.ndarray,
    grid: jnp.ndarray,
    rng: jax.Array,
    *,
    sampler: str = "ddim",
    parametrization: str = "v",
    guidance: Guidance = Guidance(),
    conditioning=None,
    null_conditioning=None,
    eta: float = 0.0,
    return_trajectory: bool = False,
    noise_fn: Callable[[jnp.ndarray], jnp.ndarray] | None = None,
):
    """Runs `sampler` from x_init (noise at grid[0]) over the log-SNR `grid`.

    Returns the final sample, or with `return_trajectory` (final, {"samples": x after
    each step, "x0": the x0 prediction of each step}). Jit the caller (or this function with static sampler and
    guidance): the loop inside is a single scan. The noise of step i is
    normal(fold_in(rng, i)) unless `noise_fn(i)` gives it (tests replay a reference's).
    """
    if noise_fn is None:

        def noise_fn(step):
            return jax.random.normal(jax.random.fold_in(rng, step), x_init.shape, jnp.float32)

    denoise = make_denoiser(model_fn, parametrization, guidance, conditioning, null_conditioning)
    grid = jnp.asarray(grid, jnp.float32)
    if sampler == "dpmpp_2m":
        x, (xs, x0s) = dpmpp_2m(denoise, x_init, grid)
    elif sampler in ("ddpm", "ddim"):

        def body(x, step):
            if sampler == "ddpm":
                x_next, x0 = ddpm_step(denoise, x, grid[step], grid[step + 1], noise_fn(step))
            else:
                x_next, x0 = ddim_step(denoise, x, grid[step], grid[step + 1], noise_fn(step), eta)
            return x_next, (x_next, x0)

        x, (xs, x0s) = jax.lax.scan(body, x_init, jnp.arange(grid.shape[0] - 1))
    else:
        check_sampler(sampler)  # raises: no branch above took this name
    return (x, {"samples": xs, "x0": x0s}) if return_trajectory else x
