"""A PCA basis as a frozen dictionary: the top principal directions of the zero-shot training
features in `FrozenSAE`'s layout, so the `pca` regularizer reads it as the SAE ones read an SAE.

Encoding is the projection of the mean-centred input on the directions (every direction is a
code: k is the number of directions), decoding the sum of the directions weighted by the codes
plus the mean. Inputs are unit-normalised first, as an SAE's are.
"""

from __future__ import annotations

import numpy as np

from saeft_jax.sae.frozen import FrozenSAE
from saeft_jax.sae.quality import unit_rows

_CHUNK = 65536  # rows per pass over memory-mapped features


def pca_basis(features: np.ndarray, components: int) -> FrozenSAE:
    """The `components` leading principal directions of the unit-normalised rows of `features`
    (N, d), from their covariance accumulated in float64 over chunks."""
    n, d = features.shape
    if not 1 <= components <= d:
        raise ValueError(f"a PCA basis of {components} directions needs 1 to {d} (the embedding width)")
    total, gram = np.zeros(d), np.zeros((d, d))
    for start in range(0, n, _CHUNK):
        x = unit_rows(features[start : start + _CHUNK], True)
        total += x.sum(0)
        gram += x.T @ x
    mean = total / n
    covariance = gram / n - np.outer(mean, mean)
    _, vectors = np.linalg.eigh(covariance)  # ascending eigenvalues
    directions = vectors[:, ::-1][:, :components]
    directions *= np.where(directions.sum(0) < 0, -1.0, 1.0)  # a sign that does not depend on the solver
    params = {
        "W_enc": directions.astype(np.float32),
        "W_dec": np.ascontiguousarray(directions.T, np.float32),
        "b_pre": mean.astype(np.float32),
    }
    return FrozenSAE(params, components)
