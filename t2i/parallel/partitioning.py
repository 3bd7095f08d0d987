"""Sharded initialisation and global batches.

The pattern (CONVENTIONS 7): trace `init` with `jax.eval_shape` (nothing allocated),
read the logical axis names that `nn.with_logical_partitioning` put on every weight,
map them to mesh axes, then run `init` under `jax.jit(out_shardings=...)` so each
device only ever materialises its own shard. No unsharded copy exists at any point.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from t2i.parallel.mesh import LOGICAL_AXIS_RULES

BATCH_AXES = ("data", "fsdp")


def _axis_size(mesh: Mesh, axes) -> int:
    if axes is None:
        return 1
    if isinstance(axes, str):
        axes = (axes,)
    return int(np.prod([mesh.shape[a] for a in axes]))


def mesh_spec(
    logical: PartitionSpec | None, shape: Sequence[int], mesh: Mesh, rules=LOGICAL_AXIS_RULES
) -> PartitionSpec:
    """Logical PartitionSpec -> mesh PartitionSpec for an array of `shape`.

    A dimension that the mapped mesh axes do not divide is replicated instead, so a
    tiny test config (or a 3-channel conv) still runs on any mesh; big weights on a
    pod have power-of-two sizes and keep their sharding. Mesh axes of size 1 are
    dropped to keep specs readable.
    """
    if logical is None or len(logical) == 0:
        return PartitionSpec()
    mapped = nn.logical_to_mesh_axes(logical, rules)
    out = []
    used: set[str] = set()
    for dim, axes in zip(shape, tuple(mapped) + (None,) * (len(shape) - len(mapped))):
        if axes is None:
            out.append(None)
            continue
        axes_tuple = (axes,) if isinstance(axes, str) else tuple(axes)
        axes_tuple = tuple(a for a in axes_tuple if mesh.shape[a] > 1 and a not in used)
        if not axes_tuple or dim % _axis_size(mesh, axes_tuple):
            out.append(None)
            continue
        used.update(axes_tuple)
        out.append(axes_tuple[0] if len(axes_tuple) == 1 else axes_tuple)
    return PartitionSpec(*out)


def strip_boxes(tree: Any) -> Any:
    """Removes LogicallyPartitioned boxes without adding sharding constraints."""
    return jax.tree.map(
        lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.Partitioned) else x,
        tree,
        is_leaf=lambda x: isinstance(x, nn.Partitioned),
    )


def tree_shardings(abstract_boxed: Any, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> Any:
    """NamedShardings for an (abstract) tree that may hold LogicallyPartitioned leaves."""
    logical_specs = nn.get_partition_spec(abstract_boxed)
    unboxed = strip_boxes(abstract_boxed)

    def sharding(spec, leaf):
        if not hasattr(leaf, "shape"):  # a leafless node, e.g. optax.MaskedNode of multi_transform
            return leaf
        return NamedSharding(mesh, mesh_spec(spec, leaf.shape, mesh, rules))

    return jax.tree.map(
        sharding,
        logical_specs,
        unboxed,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def sharded_init(init_fn: Callable[..., Any], mesh: Mesh, *args, rules=LOGICAL_AXIS_RULES):
    """Runs `init_fn(*args)` directly into its sharded layout.

    Returns `(tree, shardings)` with the logical boxes removed from `tree`.
    """
    abstract = jax.eval_shape(init_fn, *args)
    shardings = tree_shardings(abstract, mesh, rules)
    tree = jax.jit(lambda *a: strip_boxes(init_fn(*a)), out_shardings=shardings)(*args)
    return tree, shardings


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading (batch) dimension split over data and fsdp; the rest replicated."""
    axes = tuple(a for a in BATCH_AXES if mesh.shape[a] > 1)
    lead = None if not axes else (axes[0] if len(axes) == 1 else axes)
    return NamedSharding(mesh, PartitionSpec(lead, *([None] * (ndim - 1))))


def global_batch(host_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local numpy batch -> global jax arrays sharded on the batch dimension.

    Each process passes only the rows it read (CONVENTIONS 10); the global batch is
    `process_count` times larger. Non-numeric fields (caption strings) stay on the host
    and are not passed to the device.
    """
    out = {}
    for key, value in host_batch.items():
        value = np.asarray(value)
        if value.dtype.kind in "OSU":
            continue
        out[key] = jax.make_array_from_process_local_data(batch_sharding(mesh, value.ndim), value)
    return out


def with_sharding(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.device_put(x, s), tree, shardings)
