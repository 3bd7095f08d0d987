"""t2i's CPU convolutions (t2i/nn/conv.py: Winograd F(4x4, 3x3) for 3x3 layers, a
banded kernel gradient for the rest) against XLA's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from t2i.nn import conv

NHWC = ("NHWC", "HWIO", "NHWC")


def _grads(fn, x, w, dy):
    out, vjp = jax.vjp(fn, x, w)
    return (out, *vjp(dy))


def _assert_close(got, want, tolerance):
    """Output, dx and dw each within `tolerance` of the reference's largest value."""
    for name, a, b in zip(("output", "dx", "dw"), got, want):
        scale = float(jnp.abs(b).max())
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tolerance * scale, rtol=0, err_msg=name)


def _cases():
    # (batch, side, in, out, kernel, stride): odd sides and strides exercise the
    # padding and band arithmetic; 1x1 is the residual blocks' skip projection. The 3x3
    # stride-1 cases of side >= 8 are Winograd's (side 9 and 13: partial tiles); side 4
    # is below its minimum and takes the banded gradient.
    return [
        (4, 32, 8, 16, 3, 1),
        (2, 9, 5, 7, 3, 1),
        (3, 13, 4, 4, 3, 1),
        (2, 4, 6, 6, 3, 1),
        (3, 16, 8, 4, 3, 2),
        (2, 15, 5, 6, 3, 2),
        (2, 12, 4, 4, 5, 1),
        (5, 8, 6, 3, 1, 1),
    ]


@pytest.mark.parametrize("batch,side,cin,cout,k,stride", _cases())
def test_values_and_gradients_match_xla(batch, side, cin, cout, k, stride):
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(batch, side, side, cin), jnp.float32)
    w = jnp.asarray(rng.randn(k, k, cin, cout), jnp.float32)

    def ours(x, w):
        return conv.conv_general_dilated(x, w, (stride, stride), "SAME", dimension_numbers=NHWC)

    def xla(x, w):
        return lax.conv_general_dilated(x, w, (stride, stride), "SAME", dimension_numbers=NHWC)

    dy = jnp.asarray(rng.randn(*xla(x, w).shape), jnp.float32)
    got = jax.jit(lambda x, w, dy: _grads(ours, x, w, dy))(x, w, dy)
    _assert_close(got, _grads(xla, x, w, dy), 1e-5)


def _exported(kernel, side, platform, dtype=jnp.float32):
    x = jnp.ones((2, side, side, 4), dtype)
    w = jnp.ones((kernel, kernel, 4, 8), dtype)

    def grads(x, w):
        return jax.grad(
            lambda x, w: conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC).sum(), argnums=(0, 1)
        )(x, w)

    return jax.export.export(jax.jit(grads), platforms=[platform])(x, w).mlir_module()


def test_cpu_paths_only_in_cpu_programs():
    """On CPU a 3x3 layer is Winograd's (36 batched products, no convolution) and a 5x5
    layer's kernel gradient is banded (a while loop); the programs exported for TPU keep
    XLA's convolutions and have neither."""
    winograd_cpu = _exported(3, 16, "cpu")
    assert "stablehlo.convolution" not in winograd_cpu
    assert "batching_dims = [0] x [0]" in winograd_cpu
    banded_cpu = _exported(5, 16, "cpu")
    assert "stablehlo.while" in banded_cpu and "stablehlo.convolution" in banded_cpu
    for kernel in (3, 5):
        tpu = _exported(kernel, 16, "tpu")
        assert "stablehlo.while" not in tpu and "stablehlo.dot_general" not in tpu
        assert "stablehlo.convolution" in tpu


def test_winograd_only_for_float32_and_large_enough_layers():
    assert "stablehlo.convolution" not in _exported(3, 8, "cpu")
    # Below 8x8 or in bfloat16 (too inaccurate for F(4x4, 3x3)): XLA's convolution.
    assert "stablehlo.convolution" in _exported(3, 4, "cpu")
    assert "stablehlo.convolution" in _exported(3, 16, "cpu", jnp.bfloat16)


def test_mode_by_environment(monkeypatch):
    x = jnp.ones((2, 8, 8, 4))
    w = jnp.ones((3, 3, 4, 4))

    def lowered():
        jax.clear_caches()  # the mode is read at tracing; a fresh lambda may reuse a cached trace
        loss = lambda x, w: (conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC) ** 2).sum()  # noqa: E731
        return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).as_text()

    auto = lowered()  # Winograd: batched products, no convolution
    assert "convolution" not in auto and "batching_dims" in auto
    monkeypatch.setenv("T2I_CONV", "banded")
    banded = lowered()
    assert "while" in banded and "convolution" in banded and "batching_dims" not in banded
    monkeypatch.setenv("T2I_CONV", "xla")
    plain = lowered()
    assert "while" not in plain and "convolution" in plain and "batching_dims" not in plain
    monkeypatch.setenv("T2I_CONV", "fast")
    with pytest.raises(ValueError, match="T2I_CONV must be one of auto, banded, xla, got 'fast'"):
        lowered()


@pytest.mark.parametrize("kernel", [3, 5])
def test_batch_sharded_gradient_matches(kernel):
    """On the 8-device data mesh: Winograd's tiles and the bands split rows and
    columns, so the batch stays sharded."""
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rng = np.random.RandomState(1)
    x = jax.device_put(jnp.asarray(rng.randn(16, 16, 16, 8), jnp.float32), NamedSharding(mesh, P("data")))
    w = jnp.asarray(rng.randn(kernel, kernel, 8, 8), jnp.float32)

    def loss(w, fn):
        return (fn(x, w, (1, 1), "SAME", dimension_numbers=NHWC) ** 2).mean()

    got = jax.jit(jax.grad(lambda w: loss(w, conv.conv_general_dilated)))(w)
    want = jax.grad(lambda w: loss(w, lax.conv_general_dilated))(w)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_band_rows():
    # 32 output rows of 1 KiB per image, batch 4, 16 KiB budget: 4 rows per band.
    assert conv.band_rows(4, 32, 1024, budget=16 * 1024) == 4
    # Rows per band divide the output rows; a row larger than the budget still makes a band.
    assert conv.band_rows(1, 15, 1024, budget=4 * 1024) == 3
    assert conv.band_rows(8, 16, 1 << 20, budget=1024) == 1


def test_winograd_rectangular_wide_layer():
    """A non-square input at the U-Net's channel width, where the transforms'
    constants (up to 8 and 1/24) cost the most accuracy: within 3e-5 of the scale."""
    from t2i.nn import winograd

    rng = np.random.RandomState(2)
    x = jnp.asarray(rng.randn(2, 12, 21, 64), jnp.float32)
    w = jnp.asarray(rng.randn(3, 3, 64, 32) / 24, jnp.float32)
    dy = jnp.asarray(rng.randn(2, 12, 21, 32), jnp.float32)
    got = jax.jit(lambda x, w, dy: _grads(winograd.conv3x3, x, w, dy))(x, w, dy)
    want = _grads(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC), x, w, dy)
    _assert_close(got, want, 3e-5)
