"""Device meshes and shardings: batches split over the data axis; parameters replicated, or
split over the same axis by a size rule (FSDP, for models whose copies do not fit each device)."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_mesh(devices: list | None = None) -> Mesh:
    """A one-axis mesh over `devices` (all devices of all processes by default)."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """The whole array on every device."""
    return NamedSharding(mesh, PartitionSpec())


def fsdp_spec(shape: tuple[int, ...], devices: int, min_size: int) -> PartitionSpec:
    """Split the largest dimension that divides by `devices` when the array has `min_size`
    elements or more; small arrays (biases, norms, scalars) stay replicated."""
    if int(np.prod(shape, dtype=np.int64)) < min_size:
        return PartitionSpec()
    divisible = [(size, axis) for axis, size in enumerate(shape) if size % devices == 0]
    if not divisible:
        return PartitionSpec()
    _, axis = max(divisible)
    return PartitionSpec(*([None] * axis + [DATA_AXIS]))


def state_shardings(tree, mesh: Mesh, *, fsdp: bool = False, min_size: int = 2**18):
    """Shardings for every leaf of `tree` (parameters, optimizer moments alike, by shape):
    replicated, or with `fsdp` split by `fsdp_spec`."""
    devices = mesh.shape[DATA_AXIS]
    spec = (lambda leaf: fsdp_spec(np.shape(leaf), devices, min_size)) if fsdp else (lambda leaf: PartitionSpec())
    return jax.tree.map(lambda leaf: NamedSharding(mesh, spec(leaf)), tree)


def check_batch_divides(batch_size: int, mesh: Mesh) -> None:
    """Global batches are split evenly over the data axis; say so when they cannot be."""
    devices = mesh.shape[DATA_AXIS]
    if batch_size % devices:
        raise ValueError(
            f"batch size {batch_size} does not divide by the {devices} devices of the data axis; "
            f"use a multiple of {devices}."
        )
