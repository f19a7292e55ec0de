"""Matplotlib figures written as PNG (headless)."""

from __future__ import annotations

import io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from saeft_jax import storage  # noqa: E402


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
    _save(fig, path, dpi=120)


def wise_curves(curves: dict[str, tuple[list[float], list[float], list[float]]], path: str | os.PathLike, *,
                id_name: str = "in-distribution", title: str = "WiSE-FT: zero-shot to fine-tuned") -> None:
    """ID vs average-OOD score along each method's alpha sweep ({method: (alphas, id, avg_ood)}),
    the shared zero-shot end (alpha 0) and each fine-tuned end (alpha 1) marked."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for i, (method, (alphas, id_scores, ood_scores)) in enumerate(curves.items()):
        color = f"C{i + 1}"
        ax.plot(id_scores, ood_scores, "-o", color=color, markersize=3, label=method)
        ax.plot(id_scores[-1], ood_scores[-1], "s", color=color, markersize=8)
        best = int(np.argmax(np.asarray(id_scores) + np.asarray(ood_scores)))
        ax.annotate(f"a={alphas[best]:.1f}", (id_scores[best], ood_scores[best]), fontsize=7,
                    textcoords="offset points", xytext=(4, 4), color=color)
    first = next(iter(curves.values()))
    ax.plot(first[1][0], first[2][0], "*", color="C0", markersize=14, label="zero-shot")
    ax.set_xlabel(f"{id_name} (ID)")
    ax.set_ylabel("average over the shifts (OOD)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path, dpi=120)


def dataset_bars(datasets: list[str], series: dict[str, list[float]], path: str | os.PathLike, *,
                 ylabel: str = "score") -> None:
    """Grouped bars: one group per dataset, one bar per series (zero-shot, each method, best mix)."""
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(datasets) * max(1, len(series)) / 3), 4))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(datasets))
    for i, (label, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label, color=f"C{i}")
    ax.set_xticks(x, datasets, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncols=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path, dpi=120)


def image_grid(rows: list[tuple[str, list[np.ndarray]]], path: str | os.PathLike, *, columns: int = 8) -> None:
    """One row per entry: its title on the left and up to `columns` uint8 images."""
    fig, axes = plt.subplots(len(rows), columns + 1, figsize=(1.1 * (columns + 3), 1.2 * len(rows) + 0.2),
                             gridspec_kw={"width_ratios": [3] + [1] * columns}, squeeze=False)
    for (title, images), row in zip(rows, axes):
        for ax in row:
            ax.axis("off")
        row[0].text(0, 0.5, title, fontsize=7, va="center", ha="left", wrap=True)
        for ax, image in zip(row[1:], images):
            ax.imshow(image)
    fig.tight_layout()
    _save(fig, path, dpi=110)


def _save(fig: plt.Figure, path: str | os.PathLike, *, dpi: int) -> None:
    """The figure as a PNG at `path` (a local path or a URL), then closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    storage.write_atomic(storage.path(path), buffer.getvalue())
