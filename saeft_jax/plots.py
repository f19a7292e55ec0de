"""Matplotlib figures written as PNG (headless)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def firing_histogram(frequencies: np.ndarray, path: str | os.PathLike, *, title: str = "SAE latent firing") -> None:
    """Histogram of log10 firing frequency per latent; dead latents (never fired) counted apart."""
    frequencies = np.asarray(frequencies, np.float64)
    alive = frequencies[frequencies > 0]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if alive.size:
        ax.hist(np.log10(alive), bins=50, color="tab:blue")
    ax.set_xlabel("log10(fraction of examples on which the latent fires)")
    ax.set_ylabel("latents")
    ax.set_title(f"{title}: {frequencies.size - alive.size} of {frequencies.size} dead")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
