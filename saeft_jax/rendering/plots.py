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


Curves = dict[str, tuple[list[str], list[float], list[float]]]  # method -> (alphas as named in JSON, ID, OOD)


def wise_curves(
    curves: Curves,
    path: str | os.PathLike,
    *,
    id_name: str = "in-distribution",
    ood_name: str = "average over the shifts (OOD)",
    selected: dict[str, str] | None = None,
    logit: bool = False,
    title: str = "WiSE-FT: zero-shot to fine-tuned",
) -> None:
    """ID vs OOD score along each method's alpha sweep, the shared zero-shot end (alpha 0) and
    each fine-tuned end (alpha 1) marked, and each method's `selected` alpha (chosen on the
    validation split) ringed. `logit` scales both axes as logit(score), as the WiSE-FT and
    effective-robustness papers plot them (the linear trend of many models)."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    _draw_curves(ax, curves, selected or {}, logit)
    ax.set_xlabel(f"{id_name} (ID)" + (", logit scale" if logit else ""))
    ax.set_ylabel(ood_name + (", logit scale" if logit else ""))
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path, dpi=120)


def wise_per_shift(
    panels: dict[str, Curves], path: str | os.PathLike, *, id_name: str, selected: dict[str, str] | None = None
) -> None:
    """One small WiSE-FT plot per shift: ID against that shift along each method's sweep."""
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.2 * rows), squeeze=False)
    for ax, (shift, curves) in zip(axes.flat, panels.items()):
        _draw_curves(ax, curves, selected or {}, logit=False)
        ax.set_title(shift, fontsize=9)
        ax.set_xlabel(f"{id_name} (ID)", fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    _save(fig, path, dpi=110)


def _draw_curves(ax, curves: Curves, selected: dict[str, str], logit: bool) -> None:
    clip = (lambda v: np.clip(np.asarray(v, np.float64), 1e-3, 1 - 1e-3)) if logit else np.asarray
    for i, (method, (alphas, id_scores, ood_scores)) in enumerate(curves.items()):
        color, x, y = f"C{i + 1}", clip(id_scores), clip(ood_scores)
        ax.plot(x, y, "-o", color=color, markersize=3, label=method)
        ax.plot(x[-1], y[-1], "s", color=color, markersize=7)
        if method in selected and selected[method] in alphas:
            at = alphas.index(selected[method])
            ax.plot(x[at], y[at], "o", markersize=11, markerfacecolor="none", markeredgecolor=color)
            ax.annotate(
                f"a={alphas[at]}",
                (x[at], y[at]),
                fontsize=7,
                textcoords="offset points",
                xytext=(5, 5),
                color=color,
            )
    first = next(iter(curves.values()))
    ax.plot(clip(first[1])[0], clip(first[2])[0], "*", color="C0", markersize=13, label="zero-shot")
    if logit:
        ax.set_xscale("logit")
        ax.set_yscale("logit")
    ax.grid(alpha=0.3, which="both")


def dataset_bars(
    datasets: list[str], series: dict[str, list[float]], path: str | os.PathLike, *, ylabel: str = "score"
) -> None:
    """Grouped bars: one group per dataset, one bar per series (zero-shot, each method, its selected mix)."""
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
    fig, axes = plt.subplots(
        len(rows),
        columns + 1,
        figsize=(1.1 * (columns + 3), 1.2 * len(rows) + 0.2),
        gridspec_kw={"width_ratios": [3] + [1] * columns},
        squeeze=False,
    )
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
