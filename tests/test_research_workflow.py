"""The research workflow end to end on a prepared folder of real images (scikit-learn's digits),
named on the command line only: checkpoint selection on validation in the smoke pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from saeft_jax.data import prepare
from test_own_data import main, write_digit_folders

pytestmark = pytest.mark.slow  # one smoke run (a few minutes on 2 cores)

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
        assert prepare.main(["folder", f"--source={root / 'src' / split}", "--name=digits_mine", f"--split={split}",
                             f"--data_dir={data_dir}"]) == 0
    workdir = root / "run"
    result = main("--config=configs/demo.py:smoke", f"--workdir={workdir}", f"--config.data_dir={data_dir}",
                  f"--config.demo.cache_dir={root / 'cache'}", "--config.show_progress=false",
                  "--config.train_dataset=digits_mine/train", "--config.finetune.val_dataset=digits_mine/val",
                  f"--config.eval_suite={SUITE}", f"--config.finetune.eval_every={EVAL_EVERY}",
                  "--config.finetune.select_checkpoint=best_val", timeout=2400)
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
        logged = [json.loads(line) for line in (workdir / "finetune" / method / "metrics.jsonl").read_text().split("\n")
                  if line.strip()]
        assert [[r["step"], r["val_score"]] for r in logged if "val_score" in r] == curve
        scalars = curves.read_scalars(workdir / "finetune" / method)["val_score"]
        assert [step for step, _ in scalars] == [step for step, _ in curve]
        np.testing.assert_allclose([value for _, value in scalars], [score for _, score in curve], rtol=1e-6)
        assert f"**Checkpoint of `{method}`:** step {checkpoint['step']}," in text
