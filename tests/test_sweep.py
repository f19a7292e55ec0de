"""`configs/demo.py:sweep` in its short form: eleven methods (the SAE-FT ablations and the
baselines of other recipes) and two SAEs in one run, the stages they share run once, every
method in one report."""

from __future__ import annotations

import json

import pytest
from conftest import demo_config

pytestmark = pytest.mark.slow  # about three minutes on 2 CPU cores


def test_the_sweep_runs_shared_stages_once_and_reports_every_method(tmp_path_factory, capsys):
    from saeft_jax.pipeline import run_pipeline

    workdir = tmp_path_factory.mktemp("sweep")
    run_pipeline(demo_config(tmp_path_factory.getbasetemp(), "sweep,smoke"), workdir)
    out = capsys.readouterr().out
    for shared in ("zeroshot", "features", "sae/main", "sae/wide", "probe"):
        assert out.count(f"stage {shared}: running") == 1, shared
    report = json.loads((workdir / "report" / "report.json").read_text())
    methods = {
        "none",
        "mse",
        "sae_add_remove",
        "sae_add_remove_30",
        "sae_add_remove_300",
        "sae_add_remove_wide",
        "sae_add_remove_mu0",
        "sae_add_remove_raw",
        "linear_probe",
        "lp_ft",
        "flyp",
    }
    assert set(report["runs"]) == {"zeroshot", *methods} and set(report["saes"]) == {"main", "wide"}
    assert report["saes"]["wide"]["dict_size"] == 512 and report["saes"]["wide"]["k"] == 16
    wide = json.loads((workdir / "finetune" / "sae_add_remove_wide" / "done.json").read_text())
    assert set(wide["inputs"]) == {"zeroshot", "sae/wide"}  # trained with its own SAE
    lambdas = {
        m: report["runs"][m]["method"]["reg_lambda"]
        for m in ("sae_add_remove_30", "sae_add_remove", "sae_add_remove_300", "mse")
    }
    assert lambdas == {"sae_add_remove_30": 30.0, "sae_add_remove": 100.0, "sae_add_remove_300": 300.0, "mse": 10.0}
    text = (workdir / "report" / "report.md").read_text()
    assert all(f"| `{m}`, selected a=" in text for m in methods)
    check_baselines(workdir)


def check_baselines(workdir):
    """The linear probe is the zero-shot encoder with the probe's head (l2 chosen on validation);
    LP-FT starts from that head; FLYP trains the text tower and scores with its own head."""
    import jax
    import numpy as np
    from etils import epath

    from saeft_jax import hf, storage
    from saeft_jax.models.clip import image_params, text_params

    workdir = epath.Path(workdir)
    head = lambda *parts: storage.load_safetensors(workdir.joinpath(*parts))
    probe, zeroshot = head("probe", "head.safetensors"), head("zeroshot", "digits.safetensors")
    fits = json.loads((workdir / "probe" / "done.json").read_text())
    assert fits["chosen_on"] == "digits_val" and len(fits["fits"]) == 3
    assert fits["l2"] == max(fits["fits"], key=lambda fit: fit["validation"])["l2"]
    np.testing.assert_array_equal(head("finetune", "linear_probe", "head.safetensors")["W"], probe["W"])
    scored = storage.load_npz(workdir / "evaluate" / "linear_probe" / "digits_colored.npz")
    np.testing.assert_array_equal(scored["finetuned_embeddings"], scored["zeroshot_embeddings"])  # encoder frozen
    _, pretrained = hf.load_clip(str(workdir / "finetune" / "linear_probe" / "final"))  # the pre-trained CLIP
    lp_ft = head("finetune", "lp_ft", "head.safetensors")["W"]
    assert np.linalg.norm(lp_ft - probe["W"]) < 0.1 * np.linalg.norm(lp_ft - zeroshot["W"])  # started at the probe
    assert set(json.loads((workdir / "finetune" / "lp_ft" / "done.json").read_text())["inputs"]) == {
        "zeroshot",
        "probe",
    }
    _, flyp = hf.load_clip(str(workdir / "finetune" / "flyp" / "final"))
    moved = lambda a, b: max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert moved(text_params(flyp), text_params(pretrained)) > 0  # the text tower was trained
    assert moved(image_params(flyp), image_params(pretrained)) > 0
    assert not np.allclose(head("finetune", "flyp", "head.safetensors")["W"], zeroshot["W"])
