"""The whole pipeline on the demo's smoke config: artifacts, report schema, reruns, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import demo_config, run_main
from PIL import Image

pytestmark = pytest.mark.slow  # about three minutes: run with `-m slow`, as CI does


def code_shift(f, f0, *, sae, scale: float = 1.0):
    """A regularizer registered by this test alone: the mean squared change of the SAE codes."""
    import jax.numpy as jnp

    shift = jnp.mean((sae.encode(sae.inputs(f)) - sae.encode(sae.inputs(f0))) ** 2)
    return scale * shift, {"code_shift": shift}


@pytest.fixture(scope="module", autouse=True)
def registered():
    """`code_shift` in the registry for this module: one entry, no other file touched."""
    from saeft_jax import regularizers

    regularizers.register(needs=("f0", "sae"))(code_shift)
    yield
    del regularizers.REGISTRY["code_shift"]


def pipeline_config(tmp_path_factory, **changes):
    """The smoke config of this module's runs, `changes` set by dotted key."""
    from saeft_jax.config import method, sae_settings

    # a third method: the test's own regularizer, fed raw embeddings as the reference code does;
    # a PCA basis for a fourth, the pca penalty
    methods = {
        "code_shift": method("code_shift", reg_lambda=50.0, scale=2.0, reference_raw_inputs=True),
        "pca": method("pca", reg_lambda=50.0),
    }
    return demo_config(
        tmp_path_factory.getbasetemp(),
        "smoke",
        methods,
        **{"saes.basis": sae_settings(kind="pca", dict_size=8), **changes},
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from saeft_jax.pipeline import run_pipeline

    workdir = tmp_path_factory.mktemp("smoke")
    run_pipeline(pipeline_config(tmp_path_factory), workdir)
    return workdir


def test_report_follows_the_schema_and_fine_tuning_helps_in_distribution(finished):
    report = json.loads((finished / "report" / "report.json").read_text())
    assert report["id_dataset"] == "digits_colored" and len(report["ood_datasets"]) == 5
    assert set(report["sae"]) == {"fvu", "dead_fraction", "l0", "dict_size", "k", "relu", "kind"}
    assert report["sae"]["l0"] == pytest.approx(8.0) and (report["sae"]["k"], report["sae"]["dict_size"]) == (8, 256)
    runs = report["runs"]
    assert set(runs) == {"zeroshot", "none", "sae_add_remove", "code_shift", "pca"}
    assert runs["pca"]["method"]["sae"] == "basis" and report["report_sae"] == "main"  # the Top-K SAE is read
    basis = report["saes"]["basis"]
    assert (basis["kind"], basis["k"], basis["dict_size"], basis["l0"]) == ("pca", 8, 8, 8.0) and basis["fvu"] < 1
    assert runs["code_shift"]["method"] == {
        "recipe": "finetune",
        "regularizer": "code_shift",
        "reg_lambda": 50.0,
        "sae": "main",
        "scale": 2.0,
        "reference_raw_inputs": True,
    }
    metrics = [
        json.loads(line) for line in (finished / "finetune" / "code_shift" / "metrics.jsonl").read_text().splitlines()
    ]
    assert all(np.isfinite(m["code_shift"]) for m in metrics)  # the test's regularizer ran in the train step
    datasets = {report["id_dataset"], *report["ood_datasets"]}
    for name, run in runs.items():
        assert set(run["metrics"]) == datasets and all(0 <= v <= 1 for v in run["metrics"].values())
        assert run["avg_ood"] == pytest.approx(np.mean([run["metrics"][d] for d in report["ood_datasets"]]))
        if name == "zeroshot":
            continue
        assert set(run["wise"]) == {f"{a / 10:.1f}" for a in range(11)}
        assert run["selection"]["split"] == report["validation"] == "digits_val"  # selected on validation alone
        assert run["selected"] == run["wise"][f"{run['selection']['alpha']:.1f}"]
        assert run["fixed_alpha"] == {"alpha": 0.5, **run["wise"]["0.5"]}
        assert run["wise"]["1.0"]["metrics"] == run["metrics"]
        assert run["wise"]["0.0"]["metrics"] == runs["zeroshot"]["metrics"]
        assert run["train"]["steps"] == 60 and np.isfinite(run["train"]["final_loss"])
        assert set(run["changes"]) >= {"added_per_image", "removed_per_image", "sae_fvu", "cka"}
        assert 0 < run["changes"]["cka"] <= 1
        assert len(run["fingerprint"]) == 64
        assert run["metrics"][report["id_dataset"]] > runs["zeroshot"]["metrics"][report["id_dataset"]]
        # which changes matter: the most frequent ID changes first, measured on every dataset and validation;
        # undoing a change moves only the images it happened on, so no effect exceeds their share
        in_id = [e["images"][report["id_dataset"]] for e in run["feature_effects"]]
        assert 0 < len(in_id) <= 20 and in_id == sorted(in_id, reverse=True) and in_id[-1] > 0
        assert set(run["undo_all"]) == {"added", "removed", "both"}
        for dataset in [*datasets, "digits_val"]:
            rows = len(np.load(finished / "evaluate" / name / f"{dataset}.npz")["labels"])
            assert all(abs(e["effects"][dataset]) <= e["images"][dataset] / rows + 1e-9 for e in run["feature_effects"])
            assert all(abs(run["undo_all"][kind][dataset]) <= 1 for kind in run["undo_all"])
    # SAE-FT is the regularised one: its representation stays closer to the zero-shot one
    assert runs["sae_add_remove"]["changes"]["cka"] > runs["none"]["changes"]["cka"]


def test_report_markdown_and_pictures(finished):
    text = (finished / "report" / "report.md").read_text()
    order = [text.index(h) for h in ("## What was run", "## Results", "## Pictures", "## What changed")]
    assert order == sorted(order)
    assert "`code_shift` (reg_lambda 50, SAE `main`, scale 2, reference_raw_inputs True)" in text
    assert "### `code_shift`" in text and "selected a=" in text and "on the validation split `digits_val`" in text
    assert "**Raw SAE inputs:** `code_shift` fed the SAE raw" in text  # the reference reproduction is named
    for png in (
        "wise.png",
        "wise_logit.png",
        "wise_shifts.png",
        "datasets.png",
        "features_none.png",
        "features_sae_add_remove.png",
    ):
        assert f"]({png})" in text
        with Image.open(finished / "report" / png) as image:
            pixels = np.asarray(image.convert("L"))
        assert image.format == "PNG" and pixels.std() > 10  # something is drawn
    for artifact in (
        "zeroshot/digits.safetensors",
        "features/train.npy",
        "sae/main/sae.safetensors",
        "sae/main/firing.png",
        "finetune/sae_add_remove/final/model.safetensors",
        "finetune/none/metrics.jsonl",
        "evaluate/none/digits_noisy.npz",
        "config.json",
        "versions.json",
    ):
        assert (finished / artifact).exists(), artifact


def changed_features(workdir, methods: list[str], datasets: list[str]) -> dict[str, set[int]]:
    """{method: the SAE features it added to or removed from some image of some dataset},
    counted from the evaluation arrays: the supports of the SAE's codes of both embeddings."""
    from saeft_jax import storage
    from saeft_jax.sae.artifact import load_sae

    sae = load_sae(workdir / "sae" / "main")
    changed = {}
    for method in methods:
        changed[method] = set()
        for dataset in datasets:
            arrays = storage.load_npz(workdir / "evaluate" / method / f"{dataset}.npz")
            supports = []
            for name in ("zeroshot_embeddings", "finetuned_embeddings"):
                values, indices = sae.codes(arrays[name])
                support = np.zeros((len(values), sae.dict_size), bool)
                np.put_along_axis(support, indices, values != 0, axis=1)
                supports.append(support)
            changed[method] |= set(np.flatnonzero((supports[0] != supports[1]).any(0)).tolist())
    return changed


DECODE_THUMBNAILS = """
const done = arguments[arguments.length - 1];
const urls = [...new Set(Array.from(document.querySelectorAll('.thumb'),
                                    e => getComputedStyle(e).backgroundImage.slice(5, -2)))];
Promise.all(urls.map(url => new Promise(settle => {
  const image = new Image();
  image.onload = () => settle(image.naturalWidth > 0);
  image.onerror = () => settle(false);
  image.src = url;
}))).then(results => done([urls.length, results.filter(Boolean).length]));
"""


def test_the_html_report_in_a_real_browser(finished, tmp_path):
    """Chromium loads the page from a copy of report.html alone (as after a download from a
    bucket): no console errors, one card per changed feature with its images decoded, and
    filtering by a method shows that method's features."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import Select

    report = json.loads((finished / "report" / "report.json").read_text())
    methods = [m for m in report["runs"] if m != "zeroshot"]
    changed = changed_features(finished, methods, [report["id_dataset"], *report["ood_datasets"]])
    page = tmp_path / "downloaded" / "report.html"
    page.parent.mkdir()
    shutil.copy(finished / "report" / "report.html", page)
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1300,1800"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(page.as_uri())
        errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
        assert not errors, errors

        def visible() -> set[int]:
            return set(
                driver.execute_script(
                    "return Array.from(document.querySelectorAll('.card')).filter(c => !c.hidden)"
                    ".map(c => JSON.parse(c.dataset.info).feature)"
                )
            )

        assert visible() == set().union(*changed.values())  # every changed feature has its card
        assert driver.execute_script("return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        assert driver.execute_script("return document.images.length") >= 5  # the report's pictures
        thumbnails, decoded = driver.execute_async_script(DECODE_THUMBNAILS)
        assert thumbnails > len(visible()) and decoded == thumbnails  # every card's images, each decoded
        method = min(methods, key=lambda m: len(changed[m]))
        assert changed[method] != set().union(*changed.values())  # so the filter has something to hide
        Select(driver.find_element("css selector", '[data-filter="method"]')).select_by_value(method)
        assert visible() == changed[method]
        assert (
            driver.find_element("css selector", ".shown").text == f"{len(changed[method])} of "
            f"{len(set().union(*changed.values()))} cards shown"
        )
        # "most costly for robustness": the method's measured features by what undoing their change gains in
        # average OOD accuracy (report.json), most first, then the unmeasured ones
        cost = {}
        for e in report["runs"][method]["feature_effects"]:
            gain = np.mean([e["effects"][d] for d in report["ood_datasets"]])
            cost[e["feature"]] = max(cost.get(e["feature"], -np.inf), gain)
        Select(driver.find_element("css selector", '[data-filter="sort"]')).select_by_value("cost")
        order = driver.execute_script(
            "return Array.from(document.querySelectorAll('.card')).filter(c => !c.hidden)"
            ".map(c => JSON.parse(c.dataset.info).feature)"
        )
        assert order[: len(cost)] == sorted(cost, key=lambda f: (-cost[f], f))
        assert driver.execute_script("return document.querySelectorAll('table.effects').length") == len(
            {e["feature"] for m in methods for e in report["runs"][m]["feature_effects"]}
        )
        driver.save_screenshot(str(tmp_path / "report.png"))
        assert (tmp_path / "report.png").stat().st_size > 10_000
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()


def test_the_exported_model_gives_in_transformers_the_embeddings_of_the_jax_encoder(finished, tmp_path):
    import torch
    import transformers
    from test_clip import rel_err

    from saeft_jax import export, models

    out = tmp_path / "hf"
    assert export.main([str(finished), "--method", "sae_add_remove", "--format", "hf", "--out", str(out)]) == 0
    ours = models.load(finished / "finetune" / "sae_add_remove" / "final")  # the run's fine-tuned parameters
    exported = transformers.CLIPModel.from_pretrained(out).eval()
    pixels = np.random.default_rng(0).normal(size=(4, 24, 24, 3)).astype(np.float32)  # CLIP-normalised, NHWC
    with torch.no_grad():
        features = exported.get_image_features(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()))
    theirs = (features.pooler_output if hasattr(features, "pooler_output") else features).numpy()
    assert theirs.shape == (4, 64) and rel_err(ours.encode_image(pixels), theirs) < 1e-5


def test_rerun_of_a_finished_workdir_does_no_work(finished, tmp_path_factory, capsys):
    from saeft_jax.pipeline import run_pipeline

    stamps = {p: p.stat().st_mtime_ns for p in finished.rglob("done.json")}
    run_pipeline(pipeline_config(tmp_path_factory), finished)
    out = capsys.readouterr().out
    assert "running" not in out and out.count("complete, skipped") == 13  # 2 SAEs, 4 methods trained and scored
    assert {p: p.stat().st_mtime_ns for p in finished.rglob("done.json")} == stamps


def test_stopped_between_stages_then_rerun_in_a_bucket_gives_the_same_fingerprint(
    finished, tmp_path_factory, bucket, monkeypatch
):
    """The same run with its workdir and its data in an emulated bucket (--workdir=gs://...,
    --config.data_dir=gs://...; the demo writes its dataset there), stopped after the SAE and rerun."""
    import ml_collections

    from saeft_jax import storage
    from saeft_jax.config import method
    from saeft_jax.pipeline import run_pipeline

    monkeypatch.setattr(storage, "CACHE", str(tmp_path_factory.mktemp("remote_cache")))
    workdir = storage.path(f"{bucket}/stopped")
    only = {
        "finetune.methods": ml_collections.ConfigDict({"sae_add_remove": method("sae_add_remove", reg_lambda=100.0)}),
        "data_dir": f"{bucket}/tensorflow_datasets",
    }
    run_pipeline(pipeline_config(tmp_path_factory, stages=("zeroshot", "features", "sae"), **only), str(workdir))
    assert not (workdir / "finetune").exists() and (workdir / "sae" / "main" / "done.json").exists()
    run_pipeline(pipeline_config(tmp_path_factory, **only), str(workdir))
    assert (workdir / "finetune" / "sae_add_remove" / "checkpoints").is_dir()  # Orbax wrote to the bucket too
    demo_data = list(storage.path(f"{bucket}/tensorflow_datasets/saeft").glob("demo_digits-*"))
    assert demo_data and (demo_data[0] / "info.json").exists()  # the data were written to and read from it
    assert (workdir / "report" / "wise.png").read_bytes()[:4] == b"\x89PNG"
    resumed = json.loads((workdir / "report" / "report.json").read_text())
    complete = json.loads((finished / "report" / "report.json").read_text())
    assert resumed["runs"]["sae_add_remove"]["fingerprint"] == complete["runs"]["sae_add_remove"]["fingerprint"]


def test_fine_tuning_with_the_teacher_cache(finished, tmp_path_factory):
    import shutil

    from saeft_jax.config import ConfigError
    from saeft_jax.stages import finetune
    from saeft_jax.stages.context import Run

    workdir = tmp_path_factory.mktemp("teacher")
    for stage in ("zeroshot", "features", "sae"):
        shutil.copytree(finished / stage, workdir / stage)
    changes = {
        "finetune.teacher_cache": True,
        "finetune.random_crop": False,
        "finetune.steps": 4,
        "finetune.log_every": 2,
        "demo.enabled": False,
    }
    with pytest.raises(ConfigError, match=r"warmup_steps \(6\) must be below config.finetune.steps \(4\)"):
        pipeline_config(tmp_path_factory, **changes)
    config = pipeline_config(tmp_path_factory, **changes, **{"finetune.warmup_steps": 1})
    model_path = json.loads((finished / "report" / "report.json").read_text())["model"]
    finetune.run_stage(Run(config, workdir, model_path), "sae_add_remove")
    done = json.loads((workdir / "finetune" / "sae_add_remove" / "done.json").read_text())
    assert done["train"]["steps"] == 4 and np.isfinite(done["train"]["final_loss"])


def test_a_workdir_of_another_config_is_refused(finished, tmp_path_factory):
    from saeft_jax.pipeline import UsageError, run_pipeline

    with pytest.raises(UsageError, match="another config.*finetune.lr"):
        run_pipeline(pipeline_config(tmp_path_factory, **{"finetune.lr": 0.5}), finished)


def test_unknown_datasets_and_unloadable_checkpoints_are_named(finished, tmp_path_factory):
    from saeft_jax.hf import CheckpointError
    from saeft_jax.pipeline import UsageError, run_pipeline

    with pytest.raises(UsageError, match="config.train_dataset / config.eval_suite: unknown dataset 'nope'"):
        run_pipeline(
            pipeline_config(tmp_path_factory, **{"train_dataset": "nope", "demo.enabled": False}),
            tmp_path_factory.mktemp("unknown"),
        )
    broken = tmp_path_factory.mktemp("broken_model")
    (broken / "config.json").write_text("{}")
    config = pipeline_config(tmp_path_factory, **{"model": str(broken), "demo.enabled": False})  # demo data registered
    with pytest.raises(CheckpointError, match=str(broken)):
        run_pipeline(config, tmp_path_factory.mktemp("no_model"))


def test_command_line_errors_are_one_paragraph_and_non_zero(tmp_path):
    unknown = run_main(
        "--config=configs/demo.py:smoke", f"--workdir={tmp_path / 'w'}", "--config.finetune.lrr=1", timeout=300
    )
    assert unknown.returncode != 0 and "lrr" in unknown.stderr
    (tmp_path / "file").write_text("")
    not_a_dir = run_main("--config=configs/demo.py:smoke", f"--workdir={tmp_path / 'file'}", timeout=300)
    assert not_a_dir.returncode == 2 and "is a file; pass a directory" in not_a_dir.stderr
    assert "Traceback" not in not_a_dir.stderr
    missing = run_main(
        "--config=configs/vitb16.py", f"--workdir={tmp_path / 'w'}", f"--config.data_dir={tmp_path}", timeout=300
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "tfds build imagenet2012 --file_format=array_record" in missing.stderr


def test_a_method_from_a_checkpoint_reproduces_the_method_that_trained_it(finished, tmp_path_factory):
    """`method(checkpoint=DIR)`: a Hugging Face CLIP with its head, fine-tuned elsewhere (here by the
    finished run's SAE-FT), is evaluated and analysed like a run's own, never trained."""
    import shutil

    import ml_collections

    from saeft_jax.config import method
    from saeft_jax.pipeline import run_pipeline

    elsewhere = tmp_path_factory.mktemp("elsewhere")
    shutil.copytree(finished / "finetune" / "sae_add_remove" / "final", elsewhere, dirs_exist_ok=True)
    shutil.copy(finished / "finetune" / "sae_add_remove" / "head.safetensors", elsewhere)
    imported = {"finetune.methods": ml_collections.ConfigDict({"imported": method(checkpoint=str(elsewhere))})}
    workdir = tmp_path_factory.mktemp("imported")
    run_pipeline(pipeline_config(tmp_path_factory, **imported), workdir)
    theirs = json.loads((workdir / "report" / "report.json").read_text())["runs"]["imported"]
    ours = json.loads((finished / "report" / "report.json").read_text())["runs"]["sae_add_remove"]
    assert theirs["fingerprint"] == ours["fingerprint"] and theirs["method"] == {"checkpoint": str(elsewhere)}
    assert theirs["wise"] == ours["wise"] and theirs["selection"] == ours["selection"]
    assert not (workdir / "finetune" / "imported" / "checkpoints").exists()  # nothing was trained
