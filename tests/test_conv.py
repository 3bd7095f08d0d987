"""The convolution with a banded kernel gradient (t2i/models/conv.py) against XLA's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from t2i.models import conv

NHWC = ("NHWC", "HWIO", "NHWC")


def _grads(fn, x, w, dy):
    out, vjp = jax.vjp(fn, x, w)
    return (out, *vjp(dy))


def _cases():
    # (batch, side, in, out, kernel, stride): odd sides and strides exercise the
    # padding and band arithmetic; 1x1 is the residual blocks' skip projection.
    return [(4, 32, 8, 16, 3, 1), (3, 16, 8, 4, 3, 2), (2, 15, 5, 6, 3, 2), (2, 12, 4, 4, 5, 1), (5, 8, 6, 3, 1, 1)]


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
    want = _grads(xla, x, w, dy)
    for name, a, b in zip(("output", "dx", "dw"), got, want):
        scale = float(jnp.abs(b).max())
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5 * scale, rtol=0, err_msg=name)


def test_kernel_gradient_is_banded_on_cpu_only():
    """The banded product (a while loop) is in the program lowered for CPU, and not in
    the one exported for TPU, which keeps XLA's own kernel gradient."""
    x = jnp.ones((2, 16, 16, 4))
    w = jnp.ones((3, 3, 4, 8))

    def kernel_grad(x, w):
        return jax.grad(lambda w: conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC).sum())(w)

    cpu = jax.export.export(jax.jit(kernel_grad), platforms=["cpu"])(x, w).mlir_module()
    tpu = jax.export.export(jax.jit(kernel_grad), platforms=["tpu"])(x, w).mlir_module()
    assert "stablehlo.while" in cpu
    assert "stablehlo.while" not in tpu and "stablehlo.convolution" in tpu


def test_xla_mode_by_environment(monkeypatch):
    x = jnp.ones((2, 8, 8, 4))
    w = jnp.ones((3, 3, 4, 4))

    def lowered():
        fn = jax.jit(jax.grad(lambda w: conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC).sum()))
        return fn.lower(w).as_text()

    assert "while" in lowered()
    monkeypatch.setenv("T2I_CONV_KERNEL_GRAD", "xla")
    assert "while" not in lowered()
    monkeypatch.setenv("T2I_CONV_KERNEL_GRAD", "fast")
    with pytest.raises(ValueError, match="T2I_CONV_KERNEL_GRAD must be 'auto' or 'xla'"):
        lowered()


def test_batch_sharded_gradient_matches():
    """On the 8-device data mesh (bands split rows, so the batch stays sharded)."""
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rng = np.random.RandomState(1)
    x = jax.device_put(jnp.asarray(rng.randn(16, 16, 16, 8), jnp.float32), NamedSharding(mesh, P("data")))
    w = jnp.asarray(rng.randn(3, 3, 8, 8), jnp.float32)

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
