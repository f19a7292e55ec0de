"""The research workflow end to end on a prepared folder of real images (scikit-learn's digits),
named on the command line only: checkpoint selection on validation in the smoke pipeline, and
evaluation-only reproducing the run's rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, run_main
from PIL import Image
from test_own_data import write_digit_folders

from saeft_jax.data import prepare

pytestmark = pytest.mark.slow  # one smoke run (a few minutes on 2 cores), then evaluation-only commands

EVAL_EVERY, STEPS = 15, 60
SUITE = "digits_mine/test,digits_mine/inverted"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Digits 0-2 prepared as train, val, test and an inverted test split; the smoke pipeline on them
    with the checkpoint chosen on validation every 15 of its 60 steps."""
    root = tmp_path_factory.mktemp("workflow")
    write_digit_folders(root / "src", splits=("train", "val", "test"), per_class=(60, 15, 15))
    for path in (root / "src" / "test").rglob("*.png"):
        target = root / "src" / "inverted" / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - np.asarray(Image.open(path))).save(target)
    data_dir = root / "data"
    for split in ("train", "val", "test", "inverted"):
        assert (
            prepare.main(
                [
                    "folder",
                    f"--source={root / 'src' / split}",
                    "--name=digits_mine",
                    f"--split={split}",
                    f"--data_dir={data_dir}",
                ]
            )
            == 0
        )
    workdir = root / "run"
    result = run_main(
        "--config=configs/demo.py:smoke",
        f"--workdir={workdir}",
        f"--config.data_dir={data_dir}",
        f"--config.demo.cache_dir={tmp_path_factory.getbasetemp() / 'cache'}",  # the session's pretrained demo model
        "--config.show_progress=false",
        "--config.train_dataset=digits_mine/train",
        "--config.finetune.val_dataset=digits_mine/val",
        f"--config.eval_suite={SUITE}",
        f"--config.finetune.eval_every={EVAL_EVERY}",
        "--config.finetune.select_checkpoint=best_val",
        timeout=2400,
        HF_HUB_OFFLINE="1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, data_dir, json.loads((workdir / "report" / "report.json").read_text())


def test_each_method_is_its_checkpoint_best_on_validation(finished):
    from saeft_jax import curves

    workdir, _, report = finished
    text = (workdir / "report" / "report.md").read_text()
    for method in ("none", "sae_add_remove"):
        checkpoint = report["runs"][method]["checkpoint"]
        curve = checkpoint["curve"]
        assert checkpoint["split"] == "digits_mine/val" and checkpoint["rule"] == "best_val"
        assert [step for step, _ in curve] == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
        best = max(score for _, score in curve)
        assert checkpoint["step"] == min(step for step, score in curve if score == best)  # brute force, ties: earlier
        assert checkpoint["score"] == best
        # the published model (evaluate stage, alpha 1) is the chosen one: it scores what was recorded for that step
        evaluated = json.loads((workdir / "evaluate" / method / "digits_mine" / "val.json").read_text())
        assert evaluated["scores"]["1.0"] == best
        logged = [
            json.loads(line)
            for line in (workdir / "finetune" / method / "metrics.jsonl").read_text().split("\n")
            if line.strip()
        ]
        assert [[r["step"], r["val_score"]] for r in logged if "val_score" in r] == curve
        scalars = curves.read_scalars(workdir / "finetune" / method)["val_score"]
        assert [step for step, _ in scalars] == [step for step, _ in curve]
        np.testing.assert_allclose([value for _, value in scalars], [score for _, score in curve], rtol=1e-6)
        assert f"**Checkpoint of `{method}`:** step {checkpoint['step']}," in text


def evaluate_only(tmp_path, *args):
    out = tmp_path / "evaluation"
    result = subprocess.run(
        [sys.executable, "-m", "saeft_jax.evaluate", f"--suite={SUITE}", f"--out={out}", "--batch_size=64", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "evaluation.md").exists()
    return json.loads((out / "evaluation.json").read_text())


def test_evaluation_only_of_the_zero_shot_model_reproduces_the_zero_shot_row(finished, tmp_path):
    _, data_dir, report = finished
    result = evaluate_only(tmp_path, f"--model={report['model']}", f"--data_dir={data_dir}")
    assert result["metrics"] == report["runs"]["zeroshot"]["metrics"]
    assert result["avg_ood"] == report["runs"]["zeroshot"]["avg_ood"]
    assert result["dataset_metrics"] == {name: report["dataset_metrics"][name] for name in result["metrics"]}


def test_evaluation_only_of_a_fine_tuned_method_with_its_head_reproduces_its_row_and_wise_ft(finished, tmp_path):
    workdir, data_dir, report = finished
    method = workdir / "finetune" / "sae_add_remove"
    result = evaluate_only(
        tmp_path,
        f"--model={method / 'final'}",
        f"--head={method / 'head.safetensors'}",
        f"--data_dir={data_dir}",
        f"--wise_with={report['model']}",
    )
    ours = report["runs"]["sae_add_remove"]
    tests = list(result["metrics"])
    assert result["metrics"] == {name: ours["metrics"][name] for name in tests}
    assert {alpha: scores["metrics"] for alpha, scores in result["wise"].items()} == {
        alpha: {name: scores["metrics"][name] for name in tests} for alpha, scores in ours["wise"].items()
    }
