"""The demo's SigLIP variant end to end (`configs/demo.py:siglip,smoke`): every recipe on a SigLIP
pretrained here with the sigmoid loss, its checkpoints reopened by transformers' `SiglipModel`,
the export command, and a SigLIP model imported as a method into a CLIP run refused by name."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, demo_config, subprocess_env

pytestmark = pytest.mark.slow  # several minutes: run with `-m slow`, as CI does

RECIPES = ("none", "sae_add_remove", "linear_probe", "lp_ft", "flyp")


def siglip_smoke(tmp_path_factory):
    from saeft_jax.config import method

    recipes = {name: method(recipe=name) for name in ("linear_probe", "lp_ft", "flyp")}
    return demo_config(tmp_path_factory.getbasetemp(), "siglip,smoke", recipes)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from saeft_jax.pipeline import run_pipeline

    workdir = tmp_path_factory.mktemp("siglip_smoke")
    run_pipeline(siglip_smoke(tmp_path_factory), workdir)
    return workdir


def test_every_recipe_runs_on_siglip(finished):
    report = json.loads((finished / "report" / "report.json").read_text())
    runs = report["runs"]
    assert set(runs) == {"zeroshot", *RECIPES}
    assert "siglip" in report["model"]
    # 200 pretraining steps leave the smoke SigLIP near chance (the full demo's is at 76.8 average OOD, README):
    # this checks that every recipe runs and reports, not what it learns
    for name, run in runs.items():
        assert set(run["metrics"]) == {"digits_colored", *report["ood_datasets"]}, name
        assert all(0.0 <= value <= 1.0 for value in run["metrics"].values()), name
    assert runs["flyp"]["train"]["steps"] == runs["none"]["train"]["steps"] > 0
    assert runs["linear_probe"]["train"]["steps"] == 0 and runs["sae_add_remove"]["changes"]["added_per_image"] > 0
    assert len({run["fingerprint"] for name, run in runs.items() if name != "zeroshot"}) == len(RECIPES)


def test_flyp_trains_siglips_temperature_and_bias_and_publishes_a_siglip(finished):
    import torch
    import transformers

    from saeft_jax import models

    ours = models.load(finished / "finetune" / "none" / "final")
    flyp = transformers.SiglipModel.from_pretrained(finished / "finetune" / "flyp" / "final").eval()
    plain = transformers.SiglipModel.from_pretrained(finished / "finetune" / "none" / "final").eval()
    assert flyp.logit_bias.item() != plain.logit_bias.item()  # trained by FLYP, untouched by fine-tuning
    assert flyp.logit_scale.item() != plain.logit_scale.item()
    metrics = [json.loads(line) for line in (finished / "finetune" / "flyp" / "metrics.jsonl").read_text().splitlines()]
    assert {"logit_scale", "logit_bias"} <= set(metrics[-1])
    pixels = np.random.default_rng(0).normal(size=(2, 24, 24, 3)).astype(np.float32)
    with torch.no_grad():
        theirs = plain.get_image_features(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(ours.encode_image(pixels), theirs.pooler_output.numpy(), rtol=1e-4, atol=1e-5)


def test_export_and_refusals(finished, tmp_path):
    import torch
    import transformers
    from test_clip import rel_err

    from saeft_jax import export, models, storage

    assert export.main([str(finished), "--method", "flyp", "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    head = storage.load_safetensors(storage.path(tmp_path / "hf" / "head.safetensors"))
    saved = storage.load_safetensors(storage.path(finished / "finetune" / "flyp" / "head.safetensors"))
    assert head.keys() == saved.keys() and all(np.array_equal(head[k], saved[k]) for k in head)
    ours = models.load(finished / "finetune" / "flyp" / "final")  # the run's fine-tuned parameters
    exported = transformers.SiglipModel.from_pretrained(tmp_path / "hf").eval()
    pixels = np.random.default_rng(0).normal(size=(4, 24, 24, 3)).astype(np.float32)  # normalised, NHWC
    with torch.no_grad():
        out = exported.get_image_features(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()))
    theirs = (out.pooler_output if hasattr(out, "pooler_output") else out).numpy()
    assert rel_err(ours.encode_image(pixels), theirs) < 1e-5
    assert (
        export.main([str(finished), "--method", "flyp", "--format", "open_clip", "--out", str(tmp_path / "oc")]) == 2
    )  # SigLIP has no open_clip layout here
    assert not (tmp_path / "oc").exists()
    assert export.main([str(finished), "--method", "absent", "--out", str(tmp_path / "x")]) == 2
    assert export.main([str(finished), "--method", "none", "--out", str(tmp_path / "hf")]) == 2  # exists


def test_a_siglip_imported_into_a_clip_run_is_refused_by_name(finished, tmp_path):
    final = finished / "finetune" / "none" / "final"
    config = tmp_path / "imported.py"
    config.write_text(
        "from configs import demo\n"
        f"from saeft_jax.config import method\n\n\ndef get_config():\n"
        f"    c = demo.get_config('smoke')\n"
        f"    c.finetune.methods.imported = method(checkpoint={str(final)!r})\n    return c\n"
    )
    command = [
        sys.executable,
        "-m",
        "saeft_jax.main",
        f"--config={config}",
        f"--workdir={tmp_path / 'w'}",
        "--config.show_progress=False",
        f"--config.data_dir={finished.parent / 'data'}",
        f"--config.demo.cache_dir={finished.parent / 'cache'}",
    ]  # the session's cache: the demo's CLIP is pretrained once a session (conftest's smoke run)
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=subprocess_env())
    assert result.returncode == 2, result.stderr[-3000:]
    assert "holds a siglip model" in result.stderr and "is a clip model" in result.stderr
    assert "Traceback" not in result.stderr
