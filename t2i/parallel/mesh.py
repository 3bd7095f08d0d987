"""Device mesh from config, and the logical-axis rules that map model names onto it.

The mesh has three axes, always in this order:
  data:   pure data parallelism (params replicated over it),
  fsdp:   data parallelism with params, grads and optimizer state sharded over it,
  tensor: in-layer model parallelism (heads, MLP width, output channels).
A config gives each axis a size; one size may be -1 and takes the remaining devices.
Model code never names mesh axes, only logical axes ("embed", "mlp", "conv_out", ...);
`LOGICAL_AXIS_RULES` is the one table that maps those onto the mesh.
"""

from __future__ import annotations

import math
from typing import Mapping

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

from t2i.errors import UsageError

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes. Weights: the "embed"/"conv_in" side of a kernel is
# FSDP-sharded, its "mlp"/"heads"/"conv_out"/"vocab" side is tensor-sharded.
# Activations: the batch is split over both data axes; hidden widths over tensor.
LOGICAL_AXIS_RULES: tuple[tuple[str, object], ...] = (
    ("batch", ("data", "fsdp")),
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_height", None),
    ("activation_width", None),
    ("activation_embed", None),
    ("activation_mlp", "tensor"),
    ("activation_heads", "tensor"),
    ("activation_channels", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("conv_height", None),
    ("conv_width", None),
    ("conv_in", "fsdp"),
    ("conv_out", "tensor"),
    ("norm", None),
    ("classes", None),
    ("vq_codes", None),
    ("vq_code_dim", None),
    ("patch_pixels", None),
    ("joint_embed", None),  # CLIP's shared image-text embedding
    ("layers", None),  # the stacked axis of scanned layers (t2i.nn.transformer)
    # Decoding caches (t2i.nn.attention): rows like the batch, heads like the weights.
    ("cache_batch", ("data", "fsdp")),
    ("cache_length", None),
    ("cache_heads", "tensor"),
    ("cache_kv", None),
)


def mesh_shape(axis_sizes: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
    """Resolves a `{data, fsdp, tensor}` dict with at most one -1 into sizes."""
    unknown = set(axis_sizes) - set(MESH_AXES)
    if unknown:
        raise UsageError(f"unknown mesh axis {sorted(unknown)[0]!r}; axes are {MESH_AXES}")
    sizes = [int(axis_sizes.get(name, 1)) for name in MESH_AXES]
    free = [i for i, size in enumerate(sizes) if size == -1]
    if len(free) > 1:
        raise UsageError("mesh: at most one axis may be -1")
    if any(size == 0 or size < -1 for size in sizes):
        raise UsageError(f"mesh: axis sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
    known = math.prod(size for size in sizes if size != -1)
    if free:
        if num_devices % known:
            raise UsageError(f"mesh: {num_devices} devices do not divide by the fixed axes ({known})")
        sizes[free[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise UsageError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, have {num_devices}")
    return tuple(sizes)


def create_mesh(axis_sizes: Mapping[str, int], devices=None) -> Mesh:
    """Builds the (data, fsdp, tensor) mesh over `devices` (default: all)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(axis_sizes, len(devices))
    try:
        # Topology-aware placement on real accelerators (ICI rings for tensor).
        device_array = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # noqa: BLE001 - CPU and odd device counts: a plain reshape is fine.
        device_array = np.asarray(devices).reshape(shape)
    return Mesh(device_array, MESH_AXES)
