"""`configs/demo.py:sweep` in its short form: eight methods and two SAEs in one run, the stages
they share run once, every method in one report."""

from __future__ import annotations

import json
import os
import sys

import pytest

pytestmark = pytest.mark.slow  # about three minutes on 2 CPU cores

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_sweep_runs_shared_stages_once_and_reports_every_method(tmp_path_factory, capsys):
    sys.path.insert(0, ROOT)
    from configs import demo
    from saeft_jax.config import finish
    from saeft_jax.pipeline import run_pipeline

    config = demo.get_config("sweep,smoke")
    base = tmp_path_factory.getbasetemp()
    config.show_progress, config.data_dir, config.demo.cache_dir = False, str(base / "data"), str(base / "cache")
    workdir = tmp_path_factory.mktemp("sweep")
    run_pipeline(finish(config), workdir)
    out = capsys.readouterr().out
    for shared in ("zeroshot", "features", "sae/main", "sae/wide"):
        assert out.count(f"stage {shared}: running") == 1, shared
    report = json.loads((workdir / "report" / "report.json").read_text())
    methods = {"none", "mse", "sae_add_remove", "sae_add_remove_30", "sae_add_remove_300", "sae_add_remove_wide",
               "sae_add_remove_mu0", "sae_add_remove_raw"}
    assert set(report["runs"]) == {"zeroshot", *methods} and set(report["saes"]) == {"main", "wide"}
    assert report["saes"]["wide"]["dict_size"] == 512 and report["saes"]["wide"]["k"] == 16
    wide = json.loads((workdir / "finetune" / "sae_add_remove_wide" / "done.json").read_text())
    assert set(wide["inputs"]) == {"zeroshot", "sae/wide"}  # trained with its own SAE
    lambdas = {m: report["runs"][m]["method"]["reg_lambda"] for m in ("sae_add_remove_30", "sae_add_remove",
                                                                     "sae_add_remove_300", "mse")}
    assert lambdas == {"sae_add_remove_30": 30.0, "sae_add_remove": 100.0, "sae_add_remove_300": 300.0, "mse": 10.0}
    text = (workdir / "report" / "report.md").read_text()
    assert all(f"| `{m}`, selected a=" in text for m in methods)
