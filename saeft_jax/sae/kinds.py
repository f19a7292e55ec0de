"""The kinds of `config.saes` entry (a trained Top-K SAE, a PCA basis), one registry entry each.

An entry declares what the config checks, the preflight, the sae stage and the report ask of a
kind: its description, which settings apply to it, whether the sae stage trains it (epochs of
batches, so its batch size must divide over the devices and fit the data) or makes it in one pass
from the training features (`make`), whether its codes are sparse features the report reads the
methods in (`vocabulary`), its own rules on the settings (`check`, which may also fill in a
setting, as a PCA basis's k), and its line in report.md (`label`, `summary`). Adding a kind is one
`register(...)` call here, or from outside the package before the config is checked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from saeft_jax.errors import ConfigError
from saeft_jax.sae.frozen import FrozenSAE
from saeft_jax.sae.pca import pca_basis

TRAINING = ("batch_size", "epochs", "lr", "auxk", "auxk_normalized", "renorm_decoder", "relu", "b_enc", "tied_init")


@dataclasses.dataclass(frozen=True)
class Settings:
    """A `config.saes` entry, filled: the reference's SAE (F 2048, k 16, batch 1024, 100 epochs,
    lr 1e-3, no AuxK, renormalisation, ReLU, encoder bias or tied initialisation) unless changed.
    The one home of the settings' defaults (`config.sae_settings` and `config.finish` fill from it)."""

    kind: str = "topk"  # a name of REGISTRY
    dict_size: int = 2048
    k: int = 16
    batch_size: int = 1024
    epochs: int = 100
    lr: float = 1e-3
    auxk: bool = False
    auxk_normalized: bool = False
    renorm_decoder: bool = False
    relu: bool = False
    b_enc: bool = False
    tied_init: bool = False
    b_pre_init: str = "zeros"


DEFAULTS: dict[str, Any] = dataclasses.asdict(Settings())


def _shape_and_quality(sae: Mapping[str, Any]) -> str:
    """An SAE's report line: its shape and its quality on the training features."""
    relu = ", ReLU after Top-K" if sae["relu"] else ""
    return (
        f"dictionary {sae['dict_size']}, k {sae['k']}{relu}; on the training features FVU {sae['fvu']:.3f}, "
        f"L0 {sae['l0']:.1f}, dead latents {100 * sae['dead_fraction']:.1f}%."
    )


@dataclasses.dataclass(frozen=True)
class SAEKind:
    """One registry entry. `make(features, settings) -> FrozenSAE` for a kind made in one pass
    (None: trained by the sae stage); `check(where, settings) -> settings` its rules, raising a
    `ConfigError` that names `where`; `check_width(where, settings, width, model)` what the
    embedding width of `model` allows (preflight); `summary(sae)` its line in report.md after
    "**label `name`:**", from the report's `saes` entry (fvu, dead_fraction, l0, dict_size, k, relu, kind)."""

    name: str
    description: str
    settings: tuple[str, ...]  # the settings that apply to it; the others are ignored
    vocabulary: bool = True
    make: Callable[[np.ndarray, Mapping[str, Any]], FrozenSAE] | None = None
    check: Callable[[str, dict[str, Any]], dict[str, Any]] = lambda where, settings: settings
    check_width: Callable[[str, Mapping[str, Any], int, str], None] = lambda where, settings, width, model: None
    label: str = "SAE"
    summary: Callable[[Mapping[str, Any]], str] = _shape_and_quality

    @property
    def trained(self) -> bool:
        """Whether the sae stage trains it (epochs of batches) rather than making it in one pass."""
        return self.make is None


REGISTRY: dict[str, SAEKind] = {}
DEFAULT = "topk"


def register(kind: SAEKind) -> SAEKind:
    """Adds `kind` to the registry under its name."""
    if kind.name in REGISTRY:
        raise ValueError(f"SAE kind {kind.name!r} is registered already")
    REGISTRY[kind.name] = kind
    return kind


def get(name: str) -> SAEKind:
    """The registry entry `name`; an unknown name is a `KeyError` that lists the known ones."""
    if name not in REGISTRY:
        raise KeyError(f"unknown SAE kind {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def _topk_rules(where: str, settings: dict[str, Any]) -> dict[str, Any]:
    if settings["k"] > settings["dict_size"]:
        raise ConfigError(
            f"{where}.k ({settings['k']}) exceeds {where}.dict_size ({settings['dict_size']}): an SAE cannot "
            f"keep more latents than it has; lower k or raise dict_size (the paper: k = d/32, F = 4d)."
        )
    return settings


def _pca_rules(where: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Every direction of a PCA basis is a code, so k is its dict_size (left out or stated)."""
    if settings["k"] not in (Settings.k, settings["dict_size"]):
        raise ConfigError(
            f"{where}.k is {settings['k']}, but an SAE of kind 'pca' keeps every one of its dict_size "
            f"({settings['dict_size']}) directions as a code; leave k out (or set it to dict_size). Its "
            f"training settings (epochs, lr, batch_size, ...) do not apply."
        )
    return {**settings, "k": settings["dict_size"]}


def _pca_width(where: str, settings: Mapping[str, Any], width: int, model: str) -> None:
    if settings["dict_size"] > width:
        raise ConfigError(
            f"{where}.dict_size is {settings['dict_size']}, but a PCA basis has at most as many directions "
            f"as {model}'s embeddings have dimensions ({width}); lower it (the reference uses 16)."
        )


register(
    SAEKind(
        "topk",
        "a trained Top-K SAE",
        ("dict_size", "k", "b_pre_init", *TRAINING),
        check=_topk_rules,
    )
)
register(
    SAEKind(
        "pca",
        "the leading principal directions of the training features; dict_size of them",
        ("dict_size",),
        vocabulary=False,
        make=lambda features, settings: pca_basis(features, settings["dict_size"]),
        check=_pca_rules,
        check_width=_pca_width,
        label="PCA basis",
        summary=lambda sae: (
            f"the {sae['dict_size']} leading principal directions of the training features; "
            f"on them FVU {sae['fvu']:.3f}."
        ),
    )
)
