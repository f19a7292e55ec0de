"""The demo's data: scikit-learn's bundled handwritten digits rendered as small RGB images in
several styles, split into a pretraining set (all styles, the fine-tuning style rare), a
fine-tuning set (one style) and held-out test sets (every style).

The test sets and the fine-tuning set are written as a prepared dataset (`demo_digits-<settings
hash>`), read through the same sources and pipelines as any other, and registered with the suite
`digits`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path

import numpy as np
from etils import epath
from PIL import Image, ImageFilter

from saeft_jax.data import records, registry
from saeft_jax.data.locations import prepared_dir

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
STYLES = ("clean", "inverted", "rotated", "noisy", "thick", "colored")
TEMPLATES = (
    "a photo of the digit {}.",
    "an image of the number {}.",
    "the handwritten digit {}.",
    "a picture of a {}.",
)


@dataclasses.dataclass(frozen=True)
class DigitsSetup:
    """How the demo data are made; the fine-tuning style is the in-distribution one."""

    image_size: int = 24
    finetune_style: str = "colored"
    pretrain_fraction: float = 0.5
    finetune_fraction: float = 0.3
    val_fraction: float = 0.2  # of the fine-tuning images, held out as the validation split
    finetune_copies: int = 2
    seed: int = 0

    @property
    def shift_styles(self) -> tuple[str, ...]:
        return tuple(s for s in STYLES if s != self.finetune_style)

    @property
    def dataset(self) -> str:
        """The prepared dataset's name, distinct for distinct settings."""
        key = hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:8]
        return f"demo_digits-{key}"


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64)


def split_indices(count: int, setup: DigitsSetup) -> dict[str, np.ndarray]:
    """Disjoint image indices for pretraining, fine-tuning, validation (held out of the
    fine-tuning images) and testing."""
    order = np.random.default_rng(setup.seed).permutation(count)
    a = int(count * setup.pretrain_fraction)
    b = a + int(count * setup.finetune_fraction)
    v = b - int((b - a) * setup.val_fraction)
    return {"pretrain": order[:a], "finetune": order[a:v], "val": order[v:b], "test": order[b:]}


def render(digit: np.ndarray, style: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """An 8x8 digit in [0, 1] as a uint8 (size, size, 3) image in `style`, slightly shifted at random."""
    gray = Image.fromarray(digit, mode="F").resize((size - 4, size - 4), Image.BICUBIC)
    canvas = Image.new("F", (size, size))
    canvas.paste(gray, tuple(int(v) for v in rng.integers(0, 5, 2)))
    if style == "rotated":
        canvas = canvas.rotate(float(rng.choice([-1, 1]) * rng.uniform(20, 40)), Image.BILINEAR)
    elif style == "thick":
        canvas = canvas.filter(ImageFilter.MaxFilter(3))
    g = np.clip(np.asarray(canvas, np.float32), 0, 1)
    if style == "inverted":
        g = 1 - g
    elif style == "noisy":
        g = np.clip(g + rng.normal(0, 0.35, g.shape), 0, 1)
    if style == "colored":
        foreground, background = _contrasting_colors(rng)
        rgb = g[..., None] * foreground + (1 - g[..., None]) * background
    else:
        rgb = np.repeat(g[..., None], 3, axis=-1)
    return (rgb * 255).round().astype(np.uint8)


def _contrasting_colors(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    while True:
        foreground, background = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        if np.abs(foreground - background).sum() > 0.9:
            return foreground, background


def pretraining_set(setup: DigitsSetup, rare_weight: float = 0.02) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (N, s, s, 3) uint8, labels, style indices) of the pretraining split: every image in
    every style, then sampled so that the fine-tuning style makes up `rare_weight` of the set."""
    images, labels = _digits()
    rng = np.random.default_rng(setup.seed + 1)
    rows = split_indices(len(images), setup)["pretrain"]
    out, out_labels, out_styles = [], [], []
    for style_index, style in enumerate(STYLES):
        keep = rows if style != setup.finetune_style else rows[: max(1, int(rare_weight * len(STYLES) * len(rows)))]
        out += [render(images[i], style, setup.image_size, rng) for i in keep]
        out_labels.append(labels[keep])
        out_styles.append(np.full(len(keep), style_index))
    return np.stack(out), np.concatenate(out_labels), np.concatenate(out_styles)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_dataset(data_dir: str | Path, setup: DigitsSetup) -> epath.Path:
    """Writes the fine-tuning split (`train`, the fine-tuning style, `finetune_copies` renderings
    per image) and one test split per style (`test_<style>`) as prepared dataset `setup.dataset`;
    does nothing when it is already complete."""
    directory = prepared_dir(data_dir, setup.dataset)
    if records.read_info(directory) is not None:
        return directory
    images, labels = _digits()
    rng = np.random.default_rng(setup.seed + 2)
    splits = split_indices(len(images), setup)
    counts = {}
    finetune = [i for i in splits["finetune"] for _ in range(setup.finetune_copies)]
    counts["train"] = records.write_split(
        directory,
        "train",
        (
            records.encode(_png(render(images[i], setup.finetune_style, setup.image_size, rng)), labels[i])
            for i in finetune
        ),
    )
    counts["val"] = records.write_split(
        directory,
        "val",
        (
            records.encode(_png(render(images[i], setup.finetune_style, setup.image_size, rng)), labels[i])
            for i in splits["val"]
        ),
    )
    for style in STYLES:
        counts[f"test_{style}"] = records.write_split(
            directory,
            f"test_{style}",
            (records.encode(_png(render(images[i], style, setup.image_size, rng)), labels[i]) for i in splits["test"]),
        )
    records.write_info(
        directory,
        {
            "name": setup.dataset,
            "classnames": list(NAMES),
            "group_names": [],
            "splits": counts,
            "skipped": {},
            "setup": dataclasses.asdict(setup),
        },
    )
    return directory


def register(setup: DigitsSetup) -> None:
    """Registers `digits_train`, `digits_val` (the validation split: held-out fine-tuning images in
    the fine-tuning style), `digits_<style>` and the suite `digits` (the fine-tuning style in
    distribution, the other styles as shifts)."""

    def spec(name: str, split: str) -> registry.DatasetSpec:
        return registry.DatasetSpec(
            name,
            "prepared",
            setup.dataset,
            split,
            "digits",
            TEMPLATES,
            fixed_classnames=NAMES,
            prepare_kind="demo (written by the demo config itself)",
        )

    registry.register(spec("digits_train", "train"))
    registry.register(spec("digits_val", "val"))
    for style in STYLES:
        registry.register(spec(f"digits_{style}", f"test_{style}"))
    registry.register_suite(
        "digits", f"digits_{setup.finetune_style}", tuple(f"digits_{s}" for s in setup.shift_styles)
    )
