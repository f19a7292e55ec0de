"""grain pipelines: exact resume, the same global batches for 1, 2 and 4 processes, evaluation
that sees each example once; the training crop against a PIL implementation of torchvision's."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from PIL import Image

from saeft_jax.data import pipeline, preprocess


class ToySource:
    """Example i: a 6x5 image filled with i % 251, label i % 7, group i % 3."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        return {"image": np.full((6, 5, 3), index % 251, np.uint8), "label": index % 7, "group": index % 3}


def identify(image, rng=None):
    """Keeps the example's identity (its fill value) and, with an rng, one draw from it."""
    value = float(image[0, 0, 0])
    return np.array([value, rng.uniform() if rng is not None else 0.0], np.float32)


def global_batches(processes: int, steps: int, *, source_size=23, batch=8, seed=3, workers=0):
    """Each step's global batch, assembled from every simulated process's share."""
    iterators = [
        pipeline.train_batches(
            ToySource(source_size),
            share=pipeline.Share(batch, p, processes),
            seed=seed,
            transform=identify,
            num_workers=workers,
        )
        for p in range(processes)
    ]
    out = []
    for _ in range(steps):
        parts = [next(it) for it in iterators]
        out.append((np.concatenate([p["images"] for p in parts]), np.concatenate([p["labels"] for p in parts])))
    return out


def test_global_batches_do_not_depend_on_the_process_count():
    reference = global_batches(1, 9)
    for processes in (2, 4):
        for (images, labels), (ref_images, ref_labels) in zip(global_batches(processes, 9), reference):
            np.testing.assert_array_equal(images, ref_images)  # same examples, same crops' randomness
            np.testing.assert_array_equal(labels, ref_labels)


def test_epochs_cover_every_example_once_and_reshuffle():
    batches = global_batches(1, 6, source_size=24, batch=8)
    epoch_1 = np.concatenate([b[0][:, 0] for b in batches[:3]])
    epoch_2 = np.concatenate([b[0][:, 0] for b in batches[3:]])
    assert sorted(epoch_1) == sorted(epoch_2) == list(range(24))
    assert not np.array_equal(epoch_1, epoch_2)
    assert not np.array_equal(batches[0][0][:, 1], batches[3][0][:, 1])  # fresh crops in a new epoch


def test_resume_from_state_yields_exactly_the_uninterrupted_batches():
    make = functools.partial(
        pipeline.train_batches, ToySource(23), share=pipeline.Share(4, 1, 2), seed=5, transform=identify
    )
    uninterrupted = make()
    expected = [next(uninterrupted) for _ in range(12)]
    first = make()
    for _ in range(5):
        next(first)
    state = first.get_state()
    resumed = make()
    resumed.set_state(state)
    for batch in expected[5:]:
        got = next(resumed)
        assert set(got) == {"images", "labels"}  # what the train step takes, nothing more
        np.testing.assert_array_equal(got["images"], batch["images"])
        np.testing.assert_array_equal(got["labels"], batch["labels"])


def test_two_workers_give_the_same_batches_and_resume():
    reference = global_batches(1, 6, workers=0)
    for (images, labels), (ref_images, ref_labels) in zip(global_batches(1, 4, workers=2), reference):
        np.testing.assert_array_equal(images, ref_images)
        np.testing.assert_array_equal(labels, ref_labels)
    make = functools.partial(
        pipeline.train_batches, ToySource(23), share=pipeline.Share(8), seed=3, transform=identify, num_workers=2
    )
    first = make()
    for _ in range(3):
        next(first)
    resumed = make()
    resumed.set_state(first.get_state())
    for images, _ in reference[3:]:
        np.testing.assert_array_equal(next(resumed)["images"], images)


def test_worker_processes_leave_ctrl_c_to_the_main_process_and_end_with_it():
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = (
        "import os, sys\n"
        "from test_data_pipeline import ToySource, identify\n"
        "from saeft_jax.data import pipeline\n"
        "batches = pipeline.train_batches(ToySource(23), share=pipeline.Share(8), seed=3, transform=identify, "
        "num_workers=1)\n"
        "next(batches)\n"
        "children = os.popen(f'ps -o pid=,args= --ppid {os.getpid()}').read().splitlines()  # ps lists itself too\n"
        "print(' '.join(c.split()[0] for c in children if 'spawn_main' in c), flush=True)  # grain's workers\n"
        "sys.stdin.readline()\n"
        "os._exit(130)  # as a second Ctrl-C ends it: no chance to end its workers\n"
    )
    tests = os.path.dirname(os.path.abspath(__file__))
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(tests), tests]), "JAX_PLATFORMS": "cpu"},
    )
    workers = [int(pid) for pid in process.stdout.readline().split()]
    ignored = [Path(f"/proc/{pid}/status").read_text().split("SigIgn:")[1].split()[0] for pid in workers]
    assert workers and all(int(mask, 16) & (1 << (signal.SIGINT - 1)) for mask in ignored), ignored
    process.communicate("\n", timeout=30)
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{pid}") for pid in workers):  # orphaned: each ends itself
        assert time.monotonic() < deadline, f"worker processes {workers} outlived their parent"
        time.sleep(0.1)


def test_teacher_rows_follow_their_examples():
    teacher = np.arange(23 * 2, dtype=np.float32).reshape(23, 2)
    batches = pipeline.train_batches(
        ToySource(23), share=pipeline.Share(8), seed=0, transform=identify, teacher=teacher
    )
    batch = next(batches)
    np.testing.assert_array_equal(batch["teacher"], teacher[batch["images"][:, 0].astype(int)])
    np.testing.assert_array_equal(batch["labels"], batch["images"][:, 0].astype(int) % 7)


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_evaluation_sees_each_example_once_with_the_padding_masked(processes):
    size, batch = 21, 8
    steps = pipeline.eval_steps(ToySource(size), batch)
    assert steps == 3
    seen, masked = [], 0
    for p in range(processes):
        batches = list(
            pipeline.eval_batches(
                ToySource(size),
                share=pipeline.Share(batch, p, processes),
                transform=lambda image: image[:1, :1, 0].astype(np.float32),
            )
        )
        assert len(batches) == steps  # every process runs the same number of steps
        for b in batches:
            assert b["image"].shape == (batch // processes, 1, 1)
            seen += list(b["index"][b["mask"]])
            masked += int((~b["mask"]).sum())
            np.testing.assert_array_equal(b["label"][b["mask"]], b["index"][b["mask"]] % 7)
    assert sorted(seen) == list(range(size)) and masked == steps * batch - size


def test_global_batch_must_divide_among_processes():
    with pytest.raises(ValueError, match="global batch 10 does not divide among 4 processes"):
        pipeline.train_batches(ToySource(5), share=pipeline.Share(10, 0, 4), seed=0, transform=identify)


def torchvision_crop_reference(pil: Image.Image, rng: np.random.Generator, size: int, scale):
    """torchvision.transforms.RandomResizedCrop.get_params + resized_crop, transcribed (no torch)."""
    width, height = pil.size
    area = height * width
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = rng.integers(0, height - h + 1)
            j = rng.integers(0, width - w + 1)
            break
    else:  # fallback to a central crop at the nearest allowed aspect ratio
        in_ratio = width / height
        if in_ratio < 3 / 4:
            w, h = width, int(round(width / (3 / 4)))
        elif in_ratio > 4 / 3:
            h, w = height, int(round(height * (4 / 3)))
        else:
            w, h = width, height
        i, j = (height - h) // 2, (width - w) // 2
    return pil.crop((j, i, j + w, i + h)).resize((size, size), Image.BICUBIC)


@pytest.mark.parametrize("shape", [(40, 40), (37, 60), (90, 31), (224, 250)])
def test_training_crop_matches_torchvision_algorithm_and_is_seeded(shape):
    image = np.random.RandomState(shape[0]).randint(0, 256, shape + (3,), dtype=np.uint8)
    out = preprocess.clip_train(image, np.random.default_rng(7), 24, scale=(0.9, 1.0))
    reference = torchvision_crop_reference(Image.fromarray(image), np.random.default_rng(7), 24, (0.9, 1.0))
    expected = (np.asarray(reference, np.float32) / 255 - preprocess.OPENAI_MEAN) / preprocess.OPENAI_STD
    np.testing.assert_allclose(out, expected, atol=1e-5)
    again = preprocess.clip_train(image, np.random.default_rng(7), 24)
    np.testing.assert_array_equal(out, again)
    if 3 / 4 <= shape[1] / shape[0] <= 4 / 3:  # otherwise every draw falls back to the same centre crop
        assert not np.array_equal(out, preprocess.clip_train(image, np.random.default_rng(8), 24))


def test_training_crop_covers_90_to_100_percent_of_the_image():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = preprocess.random_resized_crop_box(120, 110, rng)
        assert 0.88 <= h * w / 13200 <= 1.0  # rounding of w and h moves the area by ~1%
        assert 0 <= top <= 120 - h and 0 <= left <= 110 - w
    assert preprocess.random_resized_crop_box(10, 100, rng) == (0, 43, 10, 13)  # too wide: centre crop at 4/3


def test_border_crop_and_eval_transform():
    image = np.zeros((10, 12, 3), np.uint8)
    image[0], image[-1], image[:, 0], image[:, -1] = 255, 255, 255, 255  # a 1-pixel frame
    assert preprocess.border_cropped(image, 2).shape == (6, 8, 3) and preprocess.border_cropped(image, 2).max() == 0
    spec = preprocess.ImageSpec(size=4)
    np.testing.assert_array_equal(preprocess.eval_transform(spec, 2)(image), preprocess.clip_eval(image[2:-2, 2:-2], 4))


def test_evaluation_batches_resume_from_a_step():
    whole = list(pipeline.eval_batches(ToySource(21), share=pipeline.Share(4, 1, 2), transform=lambda im: im[0, 0]))
    part = list(
        pipeline.eval_batches(
            ToySource(21), share=pipeline.Share(4, 1, 2), transform=lambda im: im[0, 0], first_step=2, num_steps=3
        )
    )
    assert len(whole) == 6 and len(part) == 3
    for got, expected in zip(part, whole[2:5]):
        np.testing.assert_array_equal(got["index"], expected["index"])
