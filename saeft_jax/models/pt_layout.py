"""Naming and layout rules between PyTorch state dicts (transformers' names) and the Flax parameter trees.

One rule per leaf kind, used in both directions, so a checkpoint converts by renaming and
transposing only: Dense kernels are transposed, the patch convolution goes OIHW <-> HWIO,
LayerNorm `scale` is PyTorch's `weight`, Embed `embedding` is PyTorch's `weight`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# Buffers that older transformers versions saved with the weights; they carry no parameters.
IGNORED_PT_SUFFIXES = ("position_ids",)

_PT_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


def pt_key(flax_path: tuple[str, ...]) -> str:
    """The PyTorch state-dict key of the Flax parameter at `flax_path`."""
    *modules, leaf = flax_path
    return ".".join([*modules, _PT_LEAF_NAMES.get(leaf, leaf)])


def to_flax(flax_path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    """A PyTorch tensor (as NumPy) laid out as the Flax leaf at `flax_path`."""
    if flax_path[-1] != "kernel":
        return value
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T


def to_pt(flax_path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    """A Flax leaf laid out as PyTorch stores it."""
    if flax_path[-1] != "kernel":
        return value
    return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T


def flax_to_pt_state(flat_params: Mapping[tuple[str, ...], np.ndarray]) -> dict[str, np.ndarray]:
    """A flat Flax tree as a PyTorch state dict (contiguous NumPy arrays)."""
    return {pt_key(p): np.array(to_pt(p, np.asarray(v)), order="C") for p, v in flat_params.items()}


def pt_to_flax_state(
    state: Mapping[str, np.ndarray], expected: Mapping[tuple[str, ...], tuple[int, ...]]
) -> tuple[dict[tuple[str, ...], np.ndarray], list[str]]:
    """Picks and converts the expected leaves from a PyTorch state dict.

    Returns the flat Flax tree (only leaves present in `state`) and the state-dict keys that no
    expected leaf uses (ignorable buffers excluded), for the caller to report.
    """
    flat = {path: to_flax(path, state[pt_key(path)]) for path in expected if pt_key(path) in state}
    used = {pt_key(path) for path in expected}
    unexpected = [k for k in state if k not in used and not k.endswith(IGNORED_PT_SUFFIXES)]
    return flat, sorted(unexpected)
