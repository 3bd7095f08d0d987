"""The factorized l2-normalised quantizer (issue 4): lookup, losses, straight-through
gradients, usage accounting, the EMA codebook and dead-code restarts."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2i.parallel.partitioning import strip_boxes
from t2i.vqgan import quantizer as vq

D, K, C = 16, 12, 4


def make(codebook_learning="gradient", beta=0.25):
    module = vq.FactorizedQuantizer(features=D, num_codes=K, code_dim=C, beta=beta, codebook_learning=codebook_learning)
    z = jax.random.normal(jax.random.key(1), (2, 5, D))
    params = strip_boxes(module.init(jax.random.key(0), z))
    return module, params, z


def test_lookup_is_nearest_unit_code_and_losses_match_numpy():
    module, params, z = make()
    z_q, aux = module.apply(params, z)
    enc = np.asarray(aux["encodings"]).reshape(-1, C)
    np.testing.assert_allclose(np.linalg.norm(enc, axis=-1), 1.0, atol=1e-5)
    book = np.asarray(params["params"]["codebook"])
    book = book / np.linalg.norm(book, axis=-1, keepdims=True)
    dist = ((enc[:, None, :] - book[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(np.asarray(aux["indices"]).reshape(-1), dist.argmin(-1))
    expected = dist.min(-1).mean()
    np.testing.assert_allclose(aux["codebook_loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(aux["commitment_loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(aux["loss"], 1.25 * expected, rtol=1e-5)
    # The decoder side sees the unit code, projected up.
    up = params["params"]["up"]["Dense_0"]
    codes = book[np.asarray(aux["indices"])]
    np.testing.assert_allclose(z_q, codes @ np.asarray(up["kernel"]) + np.asarray(up["bias"]), atol=1e-5)


def test_straight_through_gradient_equals_unquantized_path():
    module, params, z = make()
    weights = jax.random.normal(jax.random.key(2), (2, 5, D))

    def quantized(z):
        return jnp.sum(module.apply(params, z)[0] * weights)

    def unquantized(z):
        def path(m, z):
            return m.up(vq.l2_normalize(m.down(z)))

        return jnp.sum(module.apply(params, z, method=path) * weights)

    np.testing.assert_allclose(jax.grad(quantized)(z), jax.grad(unquantized)(z), rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(jax.grad(quantized)(z)).max()) > 0


@pytest.mark.parametrize("mode", ["gradient", "ema"])
def test_codebook_gradient_only_in_gradient_mode(mode):
    module, params, z = make(mode)

    def loss(params):
        z_q, aux = module.apply(params, z)
        return aux["loss"] + jnp.sum(z_q**2)

    grads = jax.grad(loss)(params)["params"]["codebook"]
    used = np.unique(np.asarray(module.apply(params, z)[1]["indices"]))
    norms = np.linalg.norm(np.asarray(grads), axis=-1)
    if mode == "gradient":
        assert (norms[used] > 0).all()
        assert (np.delete(norms, used) == 0).all()
    else:
        assert (norms == 0).all()
        np.testing.assert_allclose(module.apply(params, z)[1]["codebook_loss"], 0.0)


def test_weights_carry_logical_names():
    module = vq.FactorizedQuantizer(features=D, num_codes=K, code_dim=C)
    boxed = module.init(jax.random.key(0), jnp.zeros((1, 3, D)))
    specs = nn.get_partition_spec(boxed)["params"]
    assert tuple(specs["codebook"]) == ("vq_codes", "vq_code_dim")
    assert tuple(specs["down"]["Dense_0"]["kernel"]) == ("embed", "vq_code_dim")
    assert tuple(specs["up"]["Dense_0"]["kernel"]) == ("vq_code_dim", "embed")


def test_bad_codebook_learning_is_named():
    with pytest.raises(ValueError, match="codebook_learning"):
        vq.FactorizedQuantizer(features=D, codebook_learning="kmeans").init(jax.random.key(0), jnp.zeros((1, D)))


def state_after(steps, window=3, num_codes=6):
    state = vq.init_codebook_state(jnp.eye(num_codes, 4), window)
    for indices in steps:
        indices = jnp.asarray(indices, jnp.int32)
        encodings = vq.l2_normalize(jnp.ones(indices.shape + (4,)))
        state = vq.update_codebook_state(state, indices, encodings)
    return state


def test_usage_and_perplexity_over_a_rolling_window():
    state = state_after([[0, 0, 1, 1]])
    assert float(vq.window_usage(state)) == pytest.approx(2 / 6)
    assert float(vq.window_perplexity(state)) == pytest.approx(2.0)
    state = state_after([[0, 0, 1, 1], [2, 3, 2, 3], [4, 4, 4, 4]])
    assert float(vq.window_usage(state)) == pytest.approx(5 / 6)
    # counts 2, 2, 2, 2, 4 of 12: perplexity exp(H)
    p = np.array([2, 2, 2, 2, 4]) / 12
    assert float(vq.window_perplexity(state)) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-5)
    # A fourth step overwrites the first: codes 0 and 1 leave the window.
    state = state_after([[0, 0, 1, 1], [2, 3, 2, 3], [4, 4, 4, 4], [5, 5, 5, 5]])
    assert float(vq.window_usage(state)) == pytest.approx(4 / 6)
    np.testing.assert_array_equal(vq.dead_codes(state), [True, True, False, False, False, False])


def test_no_code_is_dead_before_the_window_fills():
    state = state_after([[0, 0, 0, 0], [0, 0, 0, 0]])
    assert not bool(vq.dead_codes(state).any())


def test_ema_codebook_converges_to_mean_assigned_encoding():
    num_codes, dim = 3, 4
    state = vq.init_codebook_state(jax.random.normal(jax.random.key(0), (num_codes, dim)), window=2)
    target = vq.l2_normalize(jnp.array([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]]))
    encodings = jnp.stack([target[0], target[0], target[1]])  # codes 0, 0, 2
    indices = jnp.array([0, 0, 2], jnp.int32)
    for _ in range(600):
        state = vq.update_codebook_state(state, indices, encodings, decay=0.95)
    book = vq.ema_codebook(state)
    np.testing.assert_allclose(book[0], target[0], atol=1e-5)
    np.testing.assert_allclose(book[2], target[1], atol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(book, axis=-1), 1.0, atol=1e-5)


def test_restart_moves_only_dead_codes_onto_recent_encodings():
    num_codes, dim = 6, 4
    codebook = jax.random.normal(jax.random.key(0), (num_codes, dim))
    state = vq.init_codebook_state(codebook, window=2)
    encodings = vq.l2_normalize(jax.random.normal(jax.random.key(1), (2, 4, dim)))
    indices = jnp.array([[0, 1, 1, 0], [1, 0, 0, 1]], jnp.int32)
    for _ in range(2):
        state = vq.update_codebook_state(state, indices, encodings)
    new_book, new_state, restarted = vq.restart_dead_codes(codebook, state, encodings, jax.random.key(2))
    assert int(restarted) == 4
    np.testing.assert_array_equal(new_book[:2], codebook[:2])
    flat = np.asarray(encodings).reshape(-1, dim)
    for row in np.asarray(new_book[2:]):
        assert np.isclose(flat, row, atol=1e-6).all(-1).any()
    # Restarted codes get a fresh window: none is dead right after.
    assert not bool(vq.dead_codes(new_state).any())
    np.testing.assert_allclose(vq.ema_codebook(new_state)[2:], new_book[2:], atol=1e-5)
    # With every code in use nothing moves.
    used = jnp.arange(8, dtype=jnp.int32).reshape(2, 4) % num_codes
    state = vq.update_codebook_state(vq.update_codebook_state(state, used, encodings), used, encodings)
    same_book, _, restarted = vq.restart_dead_codes(codebook, state, encodings, jax.random.key(3))
    assert int(restarted) == 0
    np.testing.assert_array_equal(same_book, codebook)


def test_update_and_restart_run_under_jit():
    codebook = jax.random.normal(jax.random.key(0), (K, C))
    state = vq.init_codebook_state(codebook, window=1)
    encodings = vq.l2_normalize(jax.random.normal(jax.random.key(1), (3, C)))

    @jax.jit
    def step(codebook, state, rng):
        indices = vq.nearest_codes(encodings, vq.l2_normalize(codebook))
        state = vq.update_codebook_state(state, indices, encodings)
        return vq.restart_dead_codes(codebook, state, encodings, rng)

    _, state, restarted = step(codebook, state, jax.random.key(2))
    assert 0 < int(restarted) <= K - 1
