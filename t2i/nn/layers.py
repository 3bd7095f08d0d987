"""Shared layers: every weight carries logical axis names, every layer two dtypes.

`dtype` is the compute dtype (bf16 on accelerators), `param_dtype` the storage dtype
(f32). Norms run in f32 whatever the compute dtype.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2i.nn import conv

Dtype = Any

CONV_AXES = ("conv_height", "conv_width", "conv_in", "conv_out")

# Logical axes of activations at block boundaries: token sequences and feature maps.
ACTIVATION_TOKENS = ("activation_batch", "activation_length", "activation_embed")
ACTIVATION_IMAGE = ("activation_batch", "activation_height", "activation_width", "activation_channels")


def named(init, axes: Sequence[str | None]):
    return nn.with_logical_partitioning(init, tuple(axes))


class Conv(nn.Module):
    """3x3 (or k x k) convolution with named kernel axes."""

    features: int
    kernel_size: int = 3
    strides: int = 1
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x):
        return nn.Conv(
            self.features,
            (self.kernel_size, self.kernel_size),
            strides=(self.strides, self.strides),
            padding="SAME",
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=named(self.kernel_init, CONV_AXES),
            bias_init=named(nn.initializers.zeros, ("conv_out",)),
            # XLA's convolution, with a kernel gradient that is fast on XLA:CPU.
            conv_general_dilated=conv.conv_general_dilated,
        )(x)


class Dense(nn.Module):
    """Dense layer with named kernel axes (default: `embed` in, `mlp` out)."""

    features: int
    axes: tuple[str, str] = ("embed", "mlp")
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x):
        return nn.Dense(
            self.features,
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=named(self.kernel_init, self.axes),
            bias_init=named(nn.initializers.zeros, (self.axes[1],)),
        )(x)


class NamedProjection(nn.Module):
    """x @ kernel (+ bias) with an N-d kernel created in its final, named shape.

    Contracts the last `len(axes) - len(features)` dims of x; e.g. features (heads,
    head_dim) with axes ("embed", "heads", "kv") splits a hidden state into heads, and
    features (d_model,) with axes ("heads", "kv", "embed") merges them back. Flax's
    DenseGeneral is not used: it initialises a flat 2-d kernel and reshapes it, so 3-d
    logical names fail to apply under a mesh.
    """

    features: tuple[int, ...]
    axes: tuple[str | None, ...]  # logical names of the kernel: contracted dims, then features
    use_bias: bool = False
    kernel_init: Any = nn.initializers.lecun_normal()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        num_in = len(self.axes) - len(self.features)
        shape = tuple(x.shape[-num_in:]) + tuple(self.features)
        kernel = self.param("kernel", named(self.kernel_init, self.axes), shape, self.param_dtype)
        contract = (tuple(range(x.ndim - num_in, x.ndim)), tuple(range(num_in)))
        y = jax.lax.dot_general(
            x.astype(self.dtype), kernel.astype(self.dtype), (contract, ((), ())), precision=self.precision
        )
        if self.use_bias:
            bias = self.param(
                "bias", named(nn.initializers.zeros, self.axes[num_in:]), tuple(self.features), self.param_dtype
            )
            y = y + bias.astype(self.dtype)
        return y


class GroupNorm(nn.Module):
    """GroupNorm computed in f32, returned in the compute dtype."""

    groups: int = 8
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        groups = min(self.groups, x.shape[-1])
        while x.shape[-1] % groups:
            groups -= 1
        y = nn.GroupNorm(
            num_groups=groups,
            dtype=jnp.float32,
            param_dtype=self.param_dtype,
            scale_init=named(nn.initializers.ones, ("norm",)),
            bias_init=named(nn.initializers.zeros, ("norm",)),
        )(x.astype(jnp.float32))
        return y.astype(self.dtype)


class ResBlock(nn.Module):
    """Pre-norm residual block: GN -> SiLU -> conv, twice; 1x1 skip when widths differ."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = Conv(self.features, **kw)(nn.silu(GroupNorm(**kw)(x)))
        h = Conv(self.features, kernel_init=nn.initializers.zeros, **kw)(nn.silu(GroupNorm(**kw)(h)))
        if x.shape[-1] != self.features:
            x = Conv(self.features, kernel_size=1, **kw)(x)
        return x + h
