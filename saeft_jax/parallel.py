"""Device meshes and shardings: a data axis for batches, replicated parameters."""

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


def check_batch_divides(batch_size: int, mesh: Mesh) -> None:
    """Global batches are split evenly over the data axis; say so when they cannot be."""
    devices = mesh.shape[DATA_AXIS]
    if batch_size % devices:
        raise ValueError(f"batch size {batch_size} does not divide by the {devices} devices of the data axis; "
                         f"use a multiple of {devices}.")
