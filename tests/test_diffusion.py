"""The diffusion core against diffusers' schedulers (golden fixtures), and its parts."""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2i.diffusion import gaussian, samplers, schedules

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "diffusion")
PARAMETRIZATION = {"epsilon": "eps", "v_prediction": "v"}


def fixed_model(x, logsnr, conditioning):
    """The fixture script's model, as a function of alpha_bar = sigmoid(logsnr)."""
    del conditioning
    alpha_bar = jax.nn.sigmoid(logsnr).reshape((-1,) + (1,) * (x.ndim - 1))
    return 0.5 * jnp.tanh(x) + 0.3 * alpha_bar * x + 0.2 * (1 - alpha_bar) * jnp.sin(3 * x)


CASES = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(FIXTURES, "*.npz")))


def test_all_fixtures_present():
    assert len(CASES) == 10, CASES


@pytest.mark.parametrize("case", CASES)
def test_sampler_matches_diffusers(case):
    data = np.load(os.path.join(FIXTURES, f"{case}.npz"))
    sampler = {"ddpm": "ddpm", "ddim": "ddim", "dpmpp2m": "dpmpp_2m"}[case.split("_")[0]]
    guidance = samplers.Guidance()
    if "dynamic" in case:
        guidance = samplers.Guidance(thresholding="dynamic", percentile=0.9, max_threshold=5.0)
    noise = jnp.asarray(data["noise"])
    run = jax.jit(
        lambda x, grid: samplers.sample(
            fixed_model,
            x,
            grid,
            jax.random.key(0),
            sampler=sampler,
            parametrization=PARAMETRIZATION[str(data["prediction_type"])],
            guidance=guidance,
            eta=0.5 if "eta05" in case else 0.0,
            return_trajectory=True,
            noise_fn=lambda i: noise[i],
        )
    )
    final, trajectory = run(jnp.asarray(data["x_init"]), jnp.asarray(data["grid"]))
    np.testing.assert_allclose(np.asarray(trajectory["samples"]), data["samples"], atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(final), data["samples"][-1], atol=2e-5, rtol=1e-4)


def test_schedules():
    t = jnp.linspace(0.0, 1.0, 11)
    for name, kwargs in [("cosine", {}), ("linear", {}), ("shifted_cosine", dict(base_resolution=32, resolution=64))]:
        logsnr = schedules.get_schedule(name, **kwargs)(t)
        assert bool(jnp.all(jnp.diff(logsnr) < 0)), name  # noise grows with t
        alpha, sigma = schedules.alpha_sigma(logsnr)
        np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-6)
    cosine = schedules.cosine(logsnr_min=-15.0, logsnr_max=15.0)
    np.testing.assert_allclose(cosine(jnp.array([0.0, 0.5, 1.0])), [15.0, 0.0, -15.0], atol=1e-3)
    shifted = schedules.shifted_cosine(32, 64)
    np.testing.assert_allclose(shifted(t) - schedules.cosine()(t), 2 * np.log(0.5), rtol=1e-5)
    # The linear schedule is DDPM's betas 1e-4..0.02 over 1000 steps in continuous time.
    alpha_bar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    continuous = jax.nn.sigmoid(schedules.linear()(jnp.arange(1, 1001) / 1000.0))
    np.testing.assert_allclose(continuous, alpha_bar, rtol=0.02, atol=1e-4)
    np.testing.assert_allclose(schedules.from_alphas_cumprod(jnp.array([0.5])), [0.0], atol=1e-7)
    grid = schedules.sampling_grid(schedules.cosine(), 4)
    assert grid.shape == (5,) and bool(jnp.isinf(grid[-1]))
    with pytest.raises(ValueError, match="unknown noise schedule 'cos'"):
        schedules.get_schedule("cos")


@pytest.mark.parametrize("parametrization", gaussian.PARAMETRIZATIONS)
def test_parametrizations_round_trip(parametrization):
    k1, k2 = jax.random.split(jax.random.key(0))
    x0 = jax.random.normal(k1, (3, 4, 4, 3))
    eps = jax.random.normal(k2, (3, 4, 4, 3))
    logsnr = jnp.array([-5.0, 0.0, 4.0])
    x_t = gaussian.diffuse(x0, eps, logsnr)
    out = gaussian.target(x0, eps, logsnr, parametrization)
    x0_hat, eps_hat = gaussian.to_x0_eps(x_t, out, logsnr, parametrization)
    np.testing.assert_allclose(x0_hat, x0, atol=2e-4)
    np.testing.assert_allclose(eps_hat, eps, atol=2e-4)
    assert float(gaussian.diffusion_loss(out, x0, eps, logsnr, parametrization)) < 1e-10


def test_min_snr_weighting():
    logsnr = jnp.log(jnp.array([0.5, 5.0, 50.0]))
    # In x0 terms the effective weight is min(snr, 5) for every parametrization.
    snr = jnp.exp(logsnr)
    for parametrization, implied in (("eps", snr), ("x0", 1.0), ("v", snr + 1)):
        effective = gaussian.loss_weight(logsnr, parametrization, 5.0) * implied
        np.testing.assert_allclose(effective, [0.5, 5.0, 5.0], rtol=1e-5)
    np.testing.assert_array_equal(gaussian.loss_weight(logsnr, "v"), 1.0)
    # snr_floor (truncated SNR): x0-terms weight clip(snr, floor, gamma), or max(snr, floor).
    logsnr = jnp.log(jnp.array([0.01, 0.5, 5.0, 50.0]))
    snr = jnp.exp(logsnr)
    for parametrization, implied in (("eps", snr), ("x0", 1.0), ("v", snr + 1)):
        clipped = gaussian.loss_weight(logsnr, parametrization, 5.0, snr_floor=1.0) * implied
        np.testing.assert_allclose(clipped, [1.0, 1.0, 5.0, 5.0], rtol=1e-5)
        floored = gaussian.loss_weight(logsnr, parametrization, snr_floor=1.0) * implied
        np.testing.assert_allclose(floored, [1.0, 1.0, 5.0, 50.0], rtol=1e-5)


def _dirac_model(target):
    """A perfect denoiser for data that is always `target` (x0 parametrization)."""
    return lambda x, logsnr, conditioning: jnp.broadcast_to(target, x.shape)


@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
def test_samplers_land_on_the_data_and_are_one_scan(sampler):
    target = jnp.linspace(-0.8, 0.8, 48).reshape(1, 4, 4, 3)
    x_init = jax.random.normal(jax.random.key(1), (2, 4, 4, 3))
    grid = schedules.sampling_grid(schedules.cosine(), 8)

    def run(x):
        return samplers.sample(
            _dirac_model(target), x, grid, jax.random.key(2), sampler=sampler, parametrization="x0", eta=1.0
        )

    np.testing.assert_allclose(jax.jit(run)(x_init), jnp.broadcast_to(target, x_init.shape), atol=1e-5)
    jaxpr = str(jax.make_jaxpr(run)(x_init))
    assert jaxpr.count("scan[") == 1  # the whole loop is one scan, not a Python loop


def test_classifier_free_guidance_and_thresholding():
    def model(x, logsnr, conditioning):  # x0 prediction = 0.5 x + the condition
        return 0.5 * x + conditioning.reshape(-1, 1, 1, 1)

    x = jnp.ones((2, 2, 2, 1))
    cond, null = jnp.array([1.0, 2.0]), jnp.zeros(2)
    for weight in (1.0, 3.0):
        denoise = samplers.make_denoiser(model, "x0", samplers.Guidance(weight=weight), cond, null)
        x0, _ = denoise(x, 0.0)
        np.testing.assert_allclose(x0[:, 0, 0, 0], 0.5 + weight * cond)  # u + w (c - u)

    values = jnp.concatenate([jnp.linspace(-3.0, 3.0, 100), jnp.linspace(-0.5, 0.5, 100)]).reshape(2, 10, 10, 1)
    dynamic = samplers.threshold(values, samplers.Guidance(thresholding="dynamic", percentile=0.9))
    s = np.quantile(np.abs(np.asarray(values[0])), 0.9)
    np.testing.assert_allclose(dynamic[0], np.clip(values[0], -s, s) / s, rtol=1e-5)
    np.testing.assert_allclose(dynamic[1], values[1], rtol=1e-6)  # s = max(1, p) leaves |x| < 1 alone
    static = samplers.threshold(values, samplers.Guidance(thresholding="static"))
    assert float(jnp.abs(static).max()) == 1.0 and float(jnp.abs(dynamic).max()) <= 1.0
    # Bad settings fail when the Guidance is made, before anything is traced.
    with pytest.raises(ValueError, match="unknown thresholding 'clip' \\(choose from none, static, dynamic\\)"):
        samplers.Guidance(thresholding="clip")
    with pytest.raises(ValueError, match="percentile must be in \\(0, 1\\], got 99.5"):
        samplers.Guidance(thresholding="dynamic", percentile=99.5)


def test_guidance_interval_guides_only_inside_and_skips_the_unconditional_pass_outside():
    batches = []

    def model(x, logsnr, conditioning):  # x0 prediction = 0.5 x + the condition
        batches.append(x.shape[0])  # traced once per branch
        return 0.5 * x + conditioning.reshape(-1, 1, 1, 1)

    x = jnp.ones((2, 2, 2, 1))
    cond, null = jnp.array([1.0, 2.0]), jnp.zeros(2)
    guidance = samplers.Guidance(weight=3.0, interval=samplers.interval_bounds((-2.0, 1.0)))
    denoise = jax.jit(samplers.make_denoiser(model, "x0", guidance, cond, null))
    for logsnr, weight in ((-3.0, 1.0), (-2.0, 3.0), (0.0, 3.0), (1.0, 3.0), (1.5, 1.0)):
        x0, _ = denoise(x, jnp.float32(logsnr))  # a traced log-SNR, as inside a sampler's scan
        np.testing.assert_allclose(x0[:, 0, 0, 0], 0.5 + weight * cond, err_msg=f"log-SNR {logsnr}")
    assert sorted(batches) == [2, 4]  # two branches: the guided one runs the doubled batch
    jaxpr = str(jax.make_jaxpr(samplers.make_denoiser(model, "x0", guidance, cond, null))(x, jnp.float32(0.0)))
    assert "cond[" in jaxpr  # one branch runs, not both

    assert samplers.parse_interval("-6:2") == (-6.0, 2.0)
    assert samplers.parse_interval(":2") == (None, 2.0) and samplers.parse_interval("-4:") == (-4.0, None)
    assert samplers.parse_interval(":") == (None, None) == samplers.parse_interval("")
    assert samplers.interval_bounds((None, 2.0)) == (-np.inf, 2.0)
    for bad in ("2:1", "x:1", "1", "1:2:3"):
        with pytest.raises(ValueError, match="guidance interval"):
            samplers.parse_interval(bad)
    with pytest.raises(ValueError, match="low end"):
        samplers.Guidance(weight=2.0, interval=(1.0, 0.0))
