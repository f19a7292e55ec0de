"""The train loop: exact resume after interruption, SIGTERM checkpoints, NaN stops, metrics."""

from __future__ import annotations

import json
import os
import signal

import grain
import jax
import numpy as np
import pytest
from conftest import subprocess_env
from test_observe import assert_curves_match
from test_train_step import make_step, setup_run

from saeft_jax import parallel
from saeft_jax.checkpoints import Checkpoints
from saeft_jax.training.loop import TrainingDiverged, train_loop
from saeft_jax.training.step import init_state

TOTAL = 6


def batches(images: np.ndarray, labels: np.ndarray, batch_size: int = 8, seed: int = 0):
    """A checkpointable grain iterator of shuffled {"images", "labels"} batches, repeating."""
    dataset = grain.MapDataset.range(len(labels)).seed(seed).shuffle().repeat(None).batch(batch_size)
    return iter(dataset.map(lambda idx: {"images": images[idx], "labels": labels[idx]}).to_iter_dataset())


class Sabotage:
    """Wraps a batch iterator and acts on its n-th batch (1-based): raise, signal or poison."""

    def __init__(self, inner, at: int, action: str):
        self.inner, self.at, self.action, self.count = inner, at, action, 0

    def __next__(self):
        self.count += 1
        batch = next(self.inner)
        if self.count == self.at:
            if self.action == "crash":
                raise KeyboardInterrupt("simulated kill")
            if self.action in ("sigterm", "sigint"):
                os.kill(os.getpid(), signal.SIGTERM if self.action == "sigterm" else signal.SIGINT)
            if self.action == "nan":
                batch = {**batch, "images": batch["images"].copy()}
                batch["images"][0, 0, 0, 0] = np.nan
        return batch

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)


def make_run():
    """Step, optimizer, parameters, frozen parts and a small dataset (also built by the killed child)."""
    model, params, frozen, _, _ = setup_run()
    rng = np.random.default_rng(5)
    images = rng.normal(size=(24, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 24).astype(np.int32)
    step, optimizer = make_step(model)
    return step, optimizer, params, frozen, images, labels


@pytest.fixture(scope="module")
def run():
    return make_run()


def loop(run, workdir, iterator=None, **kwargs):
    step, optimizer, params, frozen, images, labels = run
    return train_loop(
        step,
        init_state(params, optimizer),
        frozen,
        iterator or batches(images, labels),
        mesh=parallel.data_mesh(jax.devices()[:1]),
        workdir=workdir,
        total_steps=TOTAL,
        log_every=1,
        checkpoint_every=2,
        show_progress=False,
        **kwargs,
    )


def test_interrupted_run_resumes_to_identical_parameters(run, tmp_path):
    straight, summary = loop(run, tmp_path / "straight")
    assert summary["steps"] == TOTAL and not summary["preempted"] and summary["final_ce"] > 0
    with pytest.raises(KeyboardInterrupt):
        loop(run, tmp_path / "resumed", Sabotage(batches(*run[4:]), at=4, action="crash"))
    assert Checkpoints(tmp_path / "resumed" / "checkpoints").latest_step() == 2
    resumed, _ = loop(run, tmp_path / "resumed")
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed["params"]), jax.device_get(straight["params"]))
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # the lost step 3 was logged once, after the resume
    assert_curves_match(tmp_path / "resumed", tmp_path / "resumed" / "metrics.jsonl")  # TensorBoard: the same
    record = json.loads((tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {
        "loss",
        "ce",
        "reg",
        "add",
        "remove",
        "residual",
        "added_per_image",
        "removed_per_image",
        "grad_norm",
        "lr",
        "images_per_s",
    } <= set(record)


@pytest.mark.parametrize("action", ["sigterm", "sigint"])
def test_sigterm_or_a_first_ctrl_c_saves_and_returns(run, tmp_path, action):
    before = signal.getsignal(signal.SIGINT)
    state, summary = loop(run, tmp_path, Sabotage(batches(*run[4:]), at=3, action=action))
    assert summary["preempted"] and summary["steps"] == 3
    assert Checkpoints(tmp_path / "checkpoints").latest_step() == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and signal.getsignal(signal.SIGINT) is before
    _, summary = loop(run, tmp_path)
    assert summary["steps"] == TOTAL and not summary["preempted"]


def test_nan_stops_with_the_step_and_keeps_the_last_good_checkpoint(run, tmp_path):
    with pytest.raises(TrainingDiverged, match=r"non-finite loss or gradient at step 3 of 6"):
        loop(run, tmp_path, Sabotage(batches(*run[4:]), at=3, action="nan"))
    assert Checkpoints(tmp_path / "checkpoints").latest_step() == 2


CHILD = """
import sys, time
import test_loop
class Slow(test_loop.Sabotage):
    def __next__(self):
        time.sleep(1.0)
        return super().__next__()
run = test_loop.make_run()
test_loop.loop(run, sys.argv[1], Slow(test_loop.batches(*run[4:]), at=-1, action="none"))
"""


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_rerun_matches_uninterrupted(run, tmp_path):
    import subprocess
    import sys
    import time

    kill_after = int(np.random.default_rng().integers(1, TOTAL))
    print(f"killing the child after step {kill_after}")  # shown when the test fails
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "killed")], env=subprocess_env())
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and child.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= kill_after:
            break
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, f"the child ended by itself ({child.returncode}) before the kill"
    resumed, summary = loop(run, tmp_path / "killed")
    straight, _ = loop(run, tmp_path / "straight")
    assert summary["steps"] == TOTAL
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed["params"]), jax.device_get(straight["params"]))


def truncate_largest_file(step_dir) -> None:
    files = [f for f in step_dir.rglob("*") if f.is_file()]
    largest = max(files, key=lambda f: f.stat().st_size)
    with open(largest, "r+b") as handle:
        handle.truncate(largest.stat().st_size // 2)


def test_a_truncated_newest_checkpoint_is_skipped_for_the_previous_one(run, tmp_path, capfd):
    straight, _ = loop(run, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        loop(run, tmp_path / "resumed", Sabotage(batches(*run[4:]), at=5, action="crash"))
    truncate_largest_file(tmp_path / "resumed" / "checkpoints" / "4")
    resumed, summary = loop(run, tmp_path / "resumed")
    assert summary["steps"] == TOTAL
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed["params"]), jax.device_get(straight["params"]))
    err = capfd.readouterr().err
    assert "warning: checkpoint 4 in" in err and "continuing from checkpoint 2" in err and "Traceback" not in err


def test_with_no_checkpoint_that_restores_the_directory_is_named(run, tmp_path):
    from saeft_jax.checkpoints import CheckpointsUnusable

    with pytest.raises(KeyboardInterrupt):
        loop(run, tmp_path, Sabotage(batches(*run[4:]), at=5, action="crash"))
    for step in (2, 4):
        truncate_largest_file(tmp_path / "checkpoints" / str(step))
    with pytest.raises(
        CheckpointsUnusable,
        match=rf"no checkpoint in {tmp_path / 'checkpoints'} restores "
        rf"\(step 4: .* bytes.*; step 2: ",
    ):
        loop(run, tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "4"]  # nothing deleted
