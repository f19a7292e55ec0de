"""A run's identity: SHA-256 over a parameter tree's float32 bytes, leaves in sorted key order."""

from __future__ import annotations

import hashlib

import jax
import numpy as np
from flax import traverse_util


def fingerprint(params) -> str:
    """Equal for bit-identical parameters (e.g. a resumed run and an uninterrupted one)."""
    digest = hashlib.sha256()
    for path, leaf in sorted(traverse_util.flatten_dict(jax.device_get(params), sep="/").items()):
        digest.update(path.encode())
        digest.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
    return digest.hexdigest()
