"""A trained SAE as one frozen value: its parameters with the settings it was trained under.

`FrozenSAE` carries `k`, the ReLU option and the input normalisation together with the
parameters, so every user (the fine-tuning penalty, the feature analyses, the report) encodes an
embedding the same way. It is a JAX pytree (the parameters are its leaves, the settings static),
so it passes into jit-compiled steps as it is, and its parameters never receive a gradient.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from saeft_jax.sae import model

_CHUNK = 8192  # rows per host-side encoding call


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["params"], meta_fields=["k", "relu", "normalize_inputs", "fed_raw"]
)
@dataclasses.dataclass(frozen=True)
class FrozenSAE:
    """A Top-K SAE that is only used, never trained.

    `normalize_inputs`: the SAE was trained on unit-norm embeddings and normalises what it is
    given. `fed_raw`: it is nevertheless given raw embeddings, the reference implementation's
    behaviour without `--normalize`; only `reference_raw_inputs` sets it, so that the choice is
    always named.
    """

    params: dict
    k: int
    relu: bool = False
    normalize_inputs: bool = True
    fed_raw: bool = False

    @property
    def dict_size(self) -> int:
        return self.params["W_dec"].shape[0]

    @property
    def d(self) -> int:
        return self.params["W_dec"].shape[1]

    def reference_raw_inputs(self) -> FrozenSAE:
        """The same SAE fed raw embeddings, as the reference does unless `--normalize` is given."""
        return dataclasses.replace(self, fed_raw=True)

    def inputs(self, x: jax.Array) -> jax.Array:
        """What the SAE sees of embeddings `x`: unit-norm rows when it was trained on them."""
        return model.unit_norm(x) if self.normalize_inputs and not self.fed_raw else x

    def _params(self) -> dict:
        return jax.lax.stop_gradient(self.params)

    def encode(self, x: jax.Array) -> jax.Array:
        """Dense codes (B, F) of inputs already passed through `inputs`."""
        return model.encode(self._params(), x, self.k, relu=self.relu)

    def encode_sparse(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The codes of `encode` as (values (B, k), indices (B, k))."""
        return model.encode_sparse(self._params(), x, self.k, relu=self.relu)

    @property
    def atoms(self) -> jax.Array:
        """The decoder's rows (F, d), without gradient."""
        return self._params()["W_dec"]

    def codes(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-k codes (values (N, k), indices (N, k)) of raw `embeddings`, on the host, in chunks."""
        parts = [
            jax.device_get(_sparse_codes(self, np.asarray(embeddings[s : s + _CHUNK], np.float32)))
            for s in range(0, len(embeddings), _CHUNK)
        ]
        return np.concatenate([v for v, _ in parts]), np.concatenate([i for _, i in parts])


@jax.jit
def _sparse_codes(sae: FrozenSAE, raw: jax.Array) -> tuple[jax.Array, jax.Array]:
    return sae.encode_sparse(sae.inputs(raw))
