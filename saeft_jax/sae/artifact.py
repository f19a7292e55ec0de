"""The SAE artifact on disk: `sae.safetensors` (parameters) + `sae.json` (shape, k, ReLU, kind,
input normalisation, options, metrics), read back as one `FrozenSAE`.

`sae.json` is the one copy of an SAE's settings: `load_sae` (the penalty, the analyses) and
`describe` (the report) both read them from there; the stage's completion record keeps only its
metrics, and the safetensors file holds the parameters alone.

Loading checks the file against what the caller will use it with (d, F, k) and says what
differs; writes are atomic (`saeft_jax.storage`), to a local directory or a URL.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import safetensors
from etils import epath

from saeft_jax import storage
from saeft_jax.errors import UsageError
from saeft_jax.finite import check_finite
from saeft_jax.sae.frozen import FrozenSAE

PARAMS_FILE, META_FILE = "sae.safetensors", "sae.json"
_NAMES = {"W_enc", "W_dec", "b_pre", "b_enc"}
_SETTINGS = ("d", "dict_size", "k", "relu", "kind", "normalize_inputs")


class SAEArtifactError(UsageError):
    """An SAE artifact that is missing, damaged or made for another model."""


def save_sae(
    directory: str | os.PathLike,
    sae: FrozenSAE,
    *,
    kind: str = "topk",
    options: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> epath.Path:
    """Writes the parameters and `sae.json` {d, dict_size, k, relu, kind, normalize_inputs, b_enc,
    options, metrics}; `kind` names its `saeft_jax.sae.kinds` entry."""
    directory = storage.path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {name: np.asarray(value, np.float32) for name, value in sae.params.items()}
    d, dict_size = arrays["W_enc"].shape
    meta = {
        "d": d,
        "dict_size": dict_size,
        "k": sae.k,
        "relu": sae.relu,
        "kind": kind,
        "normalize_inputs": sae.normalize_inputs,
        "b_enc": "b_enc" in arrays,
        "options": options or {},
        "metrics": _jsonable(metrics or {}),
    }
    storage.save_safetensors(directory / PARAMS_FILE, arrays)
    storage.write_atomic(directory / META_FILE, json.dumps(meta, indent=2))
    return directory


def load_sae(
    directory: str | os.PathLike, *, d: int | None = None, dict_size: int | None = None, k: int | None = None
) -> FrozenSAE:
    """The SAE of the artifact in `directory`; given `d`, `dict_size` or `k`, an artifact that differs
    is an error, and so is a parameter that is not finite."""
    directory = storage.path(directory)
    meta = describe(directory)
    try:
        params = storage.load_safetensors(directory / PARAMS_FILE)
    except (safetensors.SafetensorError, OSError) as e:
        raise SAEArtifactError(
            f"{directory / PARAMS_FILE} is not readable ({e}); it is damaged. Copy an intact "
            f"artifact there, or delete the directory to train the SAE again."
        ) from e
    _check(directory, params, meta, {"d": d, "dict_size": dict_size, "k": k})
    check_finite(
        params,
        str(directory / PARAMS_FILE),
        f"Delete {directory} and its stage makes it again (the sae "
        f"stage of the run that trained it), or copy an intact artifact there.",
    )
    return FrozenSAE(params, int(meta["k"]), relu=bool(meta["relu"]), normalize_inputs=bool(meta["normalize_inputs"]))


def describe(directory: str | os.PathLike) -> dict[str, Any]:
    """The content of the artifact's `sae.json`: its settings (d, dict_size, k, relu, kind,
    normalize_inputs, b_enc), options and metrics; `load_sae` builds its `FrozenSAE` from them."""
    directory = storage.path(directory)
    missing = [f for f in (PARAMS_FILE, META_FILE) if not (directory / f).exists()]
    if missing:
        raise SAEArtifactError(
            f"{directory} is not an SAE artifact: {', '.join(missing)} missing (expected "
            f"{PARAMS_FILE} and {META_FILE}, written by the sae stage)."
        )
    meta = json.loads((directory / META_FILE).read_text())
    lacking = [key for key in _SETTINGS if key not in meta]
    if lacking:
        raise SAEArtifactError(
            f"{directory / META_FILE} lacks {', '.join(lacking)}: an older version wrote it. Delete "
            f"{directory} and its stage trains the SAE again (the sae stage of the run that made it)."
        )
    return meta


def _check(directory: epath.Path, params: dict, meta: dict, wanted: dict[str, int | None]) -> None:
    problems = [
        f"{key} is {meta[key]} in the artifact but {value} here"
        for key, value in wanted.items()
        if value is not None and meta[key] != value
    ]
    if set(params) - _NAMES or not {"W_enc", "W_dec", "b_pre"} <= set(params):
        problems.append(f"parameters are {sorted(params)}; expected W_enc, W_dec, b_pre and optionally b_enc")
    elif (params["W_enc"].shape, params["W_dec"].shape) != (
        (meta["d"], meta["dict_size"]),
        (meta["dict_size"], meta["d"]),
    ):
        problems.append(
            f"W_enc {params['W_enc'].shape} / W_dec {params['W_dec'].shape} do not match "
            f"d={meta['d']}, dict_size={meta['dict_size']} of {META_FILE}"
        )
    if problems:
        raise SAEArtifactError(
            f"SAE artifact {directory} does not fit: "
            + "; ".join(problems)
            + ". Train an SAE for this model (the sae stage) or point to the matching one."
        )


def _jsonable(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in metrics.items()}
