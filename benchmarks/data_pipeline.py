"""Input pipeline throughput: decoded and preprocessed 224-pixel images per second.

    python -m benchmarks.data_pipeline --images 2048 --batch 64 --json OUT

Makes `--images` ImageNet-sized JPEGs (500x375 and 375x500, quality 90), prepares them as a
dataset (`saeft_jax.data.prepare folder`), then times our grain evaluation pipeline (decode +
`clip_eval`) and training pipeline (decode + `clip_train`) with 0 workers (reader threads only),
1 and 2 worker processes (timed end to end, worker start-up included), against the
torchvision-style loop: `PIL.Image.open` -> RGB -> bicubic resize -> centre crop -> normalize,
one image after another.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import report
from saeft_jax.data import pipeline, prepare, preprocess
from saeft_jax.data.registry import DatasetSpec
from saeft_jax.data.sources import open_source


def make_jpegs(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        shape = (375, 500) if i % 2 else (500, 375)
        # smooth content compresses like a photo (noise would make unrealistically large files)
        low = rng.integers(0, 256, (shape[0] // 25, shape[1] // 25, 3), dtype=np.uint8)
        image = Image.fromarray(low).resize((shape[1], shape[0]), Image.BILINEAR)
        paths.append(folder / f"class_{i % 4}" / f"{i}.jpg")
        paths[-1].parent.mkdir(parents=True, exist_ok=True)
        image.save(paths[-1], quality=90)
    return paths


def torchvision_style_loop(paths: list[Path]) -> float:
    spec = preprocess.ImageSpec()
    start = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            preprocess.clip_eval(np.asarray(image.convert("RGB")), spec.size, spec.mean, spec.std)
    return len(paths) / (time.perf_counter() - start)


def ours(source, batch: int, train: bool, workers: int) -> float:
    spec = preprocess.ImageSpec()
    share = pipeline.Share(batch)
    steps = len(source) // batch
    start = time.perf_counter()  # includes starting the workers: the figure is end to end
    if train:
        batches = pipeline.train_batches(
            source, share=share, seed=0, transform=preprocess.train_transform(spec), num_workers=workers
        )
    else:
        batches = pipeline.eval_batches(
            source, share=share, transform=preprocess.eval_transform(spec), num_workers=workers
        )
    for _ in range(steps):
        next(batches)
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp) / "jpegs", args.images)
        prepare.prepare("folder", Path(tmp) / "jpegs", Path(tmp) / "data", name="bench", show_progress=False)
        spec = DatasetSpec(
            "bench", "prepared", "bench", "test", "bench", ("{}",), fixed_classnames=("0", "1", "2", "3")
        )
        source = open_source(spec, Path(tmp) / "data")
        result = {
            "images": args.images,
            "batch": args.batch,
            "image_size": 224,
            "pil_loop_images_per_s": torchvision_style_loop(paths),
        }
        for workers in (0, 1, 2):
            result[f"eval_workers{workers}_images_per_s"] = ours(source, args.batch, False, workers)
            result[f"train_workers{workers}_images_per_s"] = ours(source, args.batch, True, workers)
    for key in [k for k in result if k.startswith(("eval_", "train_"))]:
        result[key.replace("_images_per_s", "_vs_pil_loop")] = result[key] / result["pil_loop_images_per_s"]
    report(result, args.json)


if __name__ == "__main__":
    main()
