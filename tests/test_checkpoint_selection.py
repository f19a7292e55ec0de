"""Checkpoint selection on validation in the train loop: the curve, the best step against a
brute-force choice, its parameters against a run stopped there, an exact resume between two
evaluations; and the config's checks of eval_every / select_checkpoint."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
from conftest import smoke_config
from test_loop import Sabotage, batches, make_run

from saeft_jax import parallel
from saeft_jax.training.loop import best_point, train_loop
from saeft_jax.training.step import init_state

TOTAL, EVAL_EVERY = 8, 2


@pytest.fixture(scope="module")
def run():
    return make_run()


def train(run, workdir, *, total=TOTAL, validate=None, iterator=None, keep_best=True, checkpoint_every=TOTAL):
    step, optimizer, params, frozen, images, labels = run
    return train_loop(
        step,
        init_state(params, optimizer),
        frozen,
        iterator or batches(images, labels),
        mesh=parallel.data_mesh(jax.devices()[:1]),
        workdir=workdir,
        total_steps=total,
        log_every=1,
        checkpoint_every=checkpoint_every,
        show_progress=False,
        validate=validate,
        eval_every=EVAL_EVERY,
        keep_best=keep_best,
    )


class Recorder:
    """A validation score with its maximum inside the run: minus the squared distance of the head to
    `target`; records every call's step-ordered parameters for the brute-force choice."""

    def __init__(self, target):
        self.target, self.seen = target, []

    def __call__(self, params) -> float:
        params = jax.device_get(params)
        self.seen.append(params)
        return self.score(params)

    def score(self, params) -> float:
        return -float(np.sum((np.asarray(params["head"]["W"]) - self.target) ** 2))


@pytest.fixture(scope="module")
def target(run, tmp_path_factory):
    """The head after 4 of the 8 steps: the score peaks there."""
    state, _ = train(run, tmp_path_factory.mktemp("reference"), total=4, keep_best=False)
    return np.asarray(jax.device_get(state["params"]["head"]["W"]))


def assert_same(a, b):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def test_the_best_step_is_the_brute_force_choice_and_its_parameters_those_of_a_run_stopped_there(run, target, tmp_path):
    import json

    validate = Recorder(target)
    _, summary = train(run, tmp_path / "full", validate=validate)
    steps = list(range(EVAL_EVERY, TOTAL + 1, EVAL_EVERY))
    scores = [validate.score(p) for p in validate.seen]  # recomputed from the recorded parameters
    assert summary["curve"] == [[s, v] for s, v in zip(steps, scores)]
    brute = steps[0]
    for step, score in zip(steps, scores):  # the first of the best
        if score > scores[steps.index(brute)]:
            brute = step
    assert summary["best"]["step"] == brute == 4 and summary["best"]["score"] == max(scores)
    stopped, _ = train(run, tmp_path / "stopped", total=brute, keep_best=False)
    assert_same(summary["best"]["params"], stopped["params"])
    logged = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [[r["step"], r["val_score"]] for r in logged if "val_score" in r] == summary["curve"]


def test_a_run_stopped_between_two_evaluations_ends_with_the_same_choice(run, target, tmp_path):
    _, straight = train(run, tmp_path / "straight", validate=Recorder(target))
    with pytest.raises(KeyboardInterrupt):  # checkpoint 3 holds the evaluation of step 2 only
        train(
            run,
            tmp_path / "resumed",
            validate=Recorder(target),
            iterator=Sabotage(batches(*run[4:]), 5, "crash"),
            checkpoint_every=3,
        )
    _, resumed = train(run, tmp_path / "resumed", validate=Recorder(target), checkpoint_every=3)
    assert resumed["curve"] == straight["curve"]
    assert resumed["best"]["step"] == straight["best"]["step"]
    assert_same(resumed["best"]["params"], straight["best"]["params"])


def test_ties_go_to_the_earlier_step(run, tmp_path):
    _, summary = train(run, tmp_path, validate=lambda params: 0.5)
    assert summary["best"]["step"] == EVAL_EVERY and best_point([[4, 1.0], [2, 1.0], [6, 0.0]]) == (2, 1.0)
    stopped, _ = train(run, tmp_path / "stopped", total=EVAL_EVERY, keep_best=False)
    assert_same(summary["best"]["params"], stopped["params"])


@pytest.mark.parametrize(
    "changes, says",
    [
        ({"finetune.select_checkpoint": "best"}, "config.finetune.select_checkpoint is 'best', which cannot work"),
        (
            {"finetune.select_checkpoint": "best_val"},
            "select_checkpoint is 'best_val', but config.finetune.eval_every is 0",
        ),
        (
            {"finetune.eval_every": 10, "finetune.val_dataset": ""},
            "eval_every is 10, but this run has no validation split",
        ),
        ({"finetune.eval_every": -1}, "config.finetune.eval_every is -1"),
    ],
)
def test_unworkable_selection_settings_are_refused_naming_the_key(changes, says):
    from saeft_jax.config import finish
    from saeft_jax.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(says)):
        finish(smoke_config(**changes))
    best = smoke_config(**{"finetune.eval_every": 10, "finetune.select_checkpoint": "best_val"})
    assert finish(best).config.finetune.select_checkpoint == "best_val"


def test_eval_every_beyond_the_run_exits_2_with_one_paragraph_before_any_stage(tmp_path):
    from conftest import run_main
    from test_own_data import write_digit_folders

    from saeft_jax.data import prepare

    write_digit_folders(tmp_path / "src", splits=("train", "val"), per_class=(60, 5))
    for split in ("train", "val"):
        prepare.prepare(
            "folder", tmp_path / "src" / split, tmp_path / "data", name="d", split=split, show_progress=False
        )
    workdir = tmp_path / "w"
    result = run_main(
        "--config=configs/demo.py:smoke",
        f"--workdir={workdir}",
        f"--config.data_dir={tmp_path / 'data'}",
        "--config.demo.enabled=false",
        "--config.train_dataset=d/train",
        "--config.eval_suite=d/val",
        "--config.finetune.val_dataset=",
        "--config.finetune.val_fraction=0.1",
        "--config.finetune.eval_every=61",
        "--config.finetune.select_checkpoint=best_val",
        timeout=300,
        HF_HUB_OFFLINE="1",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "config.finetune.eval_every (61) exceeds the run's 60 fine-tuning steps" in result.stderr
    assert result.stderr.strip().count("\n") == 0 and not (workdir / "config.json").exists()
