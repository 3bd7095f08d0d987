"""The tokenizer's losses on tiny inputs (issue 4): discriminator, adversarial losses,
R1, l2, logit-Laplace and the LPIPS-shaped perceptual distance."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2i.parallel.partitioning import strip_boxes
from t2i.vqgan import gan, reconstruction


def test_discriminator_shapes_and_names():
    disc = gan.Discriminator(channels=(8, 16, 16))
    images = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    boxed = disc.init(jax.random.key(1), images)
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert all(isinstance(x, nn.Partitioned) for x in leaves)
    logits = disc.apply(strip_boxes(boxed), images)
    assert logits.shape == (4,) and logits.dtype == jnp.float32


def test_minibatch_stddev_channel():
    same = jnp.ones((4, 2, 2, 3))
    out = gan.minibatch_stddev(same)
    assert out.shape == (4, 2, 2, 4)
    np.testing.assert_allclose(out[..., 3], 1e-4, atol=1e-6)  # sqrt(0 + 1e-8)
    x = jnp.concatenate([jnp.zeros((2, 1, 1, 1)), 2 * jnp.ones((2, 1, 1, 1))])  # groups of 4: {0, 0, 2, 2}
    np.testing.assert_allclose(gan.minibatch_stddev(x)[..., 1], 1.0, atol=1e-6)


def test_logistic_losses_at_known_points():
    zeros = jnp.zeros(3)
    assert float(gan.discriminator_loss(zeros, zeros)) == pytest.approx(2 * np.log(2))
    assert float(gan.generator_loss(zeros)) == pytest.approx(np.log(2))
    # The discriminator wants real logits up, fake logits down; the generator, fake up.
    assert float(jax.grad(lambda r: gan.discriminator_loss(r, zeros))(zeros).sum()) < 0
    assert float(jax.grad(lambda f: gan.discriminator_loss(zeros, f))(zeros).sum()) > 0
    assert float(jax.grad(gan.generator_loss)(zeros).sum()) < 0


def test_r1_of_a_linear_discriminator_is_its_squared_weight_norm():
    w = jax.random.normal(jax.random.key(0), (4, 4, 3))

    def linear(x):
        return jnp.sum(x * w, axis=(1, 2, 3))

    images = jax.random.normal(jax.random.key(1), (5, 4, 4, 3))
    assert float(gan.r1_penalty(linear, images)) == pytest.approx(float(jnp.sum(w * w)), rel=1e-5)


def test_l2_loss():
    assert float(reconstruction.l2_loss(jnp.ones((2, 2)), jnp.zeros((2, 2)))) == 1.0


def test_logit_laplace_matches_the_density_and_its_median_recovers_the_image():
    target = jnp.array([[-1.0, 0.0, 0.5]])
    mu = jnp.array([[0.3, -0.2, 1.0]])
    log_b = jnp.array([[-1.0, 0.0, 0.5]])
    outputs = jnp.concatenate([mu, log_b], axis=-1)
    x = 0.8 * (np.asarray(target) + 1) / 2 + 0.1
    b = np.exp(np.asarray(log_b))
    logit = np.log(x / (1 - x))
    density = np.exp(-np.abs(logit - np.asarray(mu)) / b) / (2 * b * x * (1 - x))
    assert float(reconstruction.logit_laplace_nll(outputs, target)) == pytest.approx(-np.log(density).mean(), rel=1e-5)
    # The loss is smallest with mu at the target's logit, whose median image is the target.
    best = jnp.concatenate([jnp.asarray(logit, jnp.float32), log_b], axis=-1)
    assert float(reconstruction.logit_laplace_nll(best, target)) < float(
        reconstruction.logit_laplace_nll(outputs, target)
    )
    np.testing.assert_allclose(reconstruction.logit_laplace_image(best), target, atol=1e-5)


def test_perceptual_distance_is_zero_on_equal_images_and_ignores_feature_scale():
    def features(images):
        return [images, jnp.tanh(images[:, ::2, ::2])]

    a = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
    b = jax.random.normal(jax.random.key(1), (2, 4, 4, 3))
    assert float(reconstruction.perceptual_distance(features, a, a)) == pytest.approx(0.0, abs=1e-6)
    d = float(reconstruction.perceptual_distance(features, a, b))
    assert d > 0

    def scaled(images):
        return [3.0 * f for f in features(images)]

    assert float(reconstruction.perceptual_distance(scaled, a, b)) == pytest.approx(d, rel=1e-5)
    # One layer, identity features, weights zero except channel 0: by hand.
    weights = [jnp.array([1.0, 0.0, 0.0])]
    ua = a / jnp.linalg.norm(a, axis=-1, keepdims=True)
    ub = b / jnp.linalg.norm(b, axis=-1, keepdims=True)
    expected = jnp.mean(jnp.mean((ua[..., 0] - ub[..., 0]) ** 2, axis=(1, 2)))
    got = reconstruction.perceptual_distance(lambda x: [x], a, b, weights)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)
