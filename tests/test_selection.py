"""Model selection on a validation split: held-out rows disjoint from training, the WiSE-FT
alpha chosen on validation alone, and runs compared side by side (`saeft_jax.compare`)."""

from __future__ import annotations

import copy
import json
import pathlib
import pickle

import numpy as np
import pytest

from saeft_jax import compare
from saeft_jax.data.sources import Subset, held_out
from saeft_jax.errors import UsageError
from saeft_jax.stages.report import select_alpha


def test_held_out_rows_are_disjoint_from_training_and_cover_the_set():
    train, val = held_out(1000, 0.1, seed=3)
    assert len(val) == 100 and not set(train) & set(val) and sorted([*train, *val]) == list(range(1000))
    again_train, again_val = held_out(1000, 0.1, seed=3)
    np.testing.assert_array_equal(val, again_val)  # the same split on every process and every rerun
    assert not np.array_equal(val, held_out(1000, 0.1, seed=4)[1])
    rows = Subset([{"i": i} for i in range(1000)], val)
    assert [rows[j]["i"] for j in range(3)] == list(val[:3]) and len(pickle.loads(pickle.dumps(rows))) == 100


def evaluation(val: dict[str, float], test: dict[str, float]) -> dict:
    """An evaluate stage's record: scores per alpha on a validation split and on a test set."""
    return {
        "datasets": {
            "digits_val": {"metric": "top1", "scores": val},
            "digits_colored": {"metric": "top1", "scores": test},
        }
    }


def test_the_alpha_is_selected_on_validation_alone():
    alphas = [f"{a / 10:.1f}" for a in range(11)]
    val = dict(zip(alphas, [0.1, 0.2, 0.5, 0.5, 0.4, 0.3, 0.2, 0.2, 0.1, 0.1, 0.1]))
    test = dict(zip(alphas, np.linspace(0.9, 0.1, 11)))
    choice = select_alpha(evaluation(val, test), "digits_val")
    assert choice == {"split": "digits_val", "alpha": 0.2, "score": 0.5, "metric": "top1"}  # ties: nearer zero-shot
    shuffled = dict(zip(alphas, np.random.default_rng(0).permutation(list(test.values()))))  # other test labels
    assert select_alpha(evaluation(val, shuffled), "digits_val") == choice


def report(model="demo", zeroshot=0.5, methods=("none", "sae_add_remove")) -> dict:
    alphas = [f"{a / 10:.1f}" for a in range(11)]
    scores = lambda base: {"metrics": {"id": base, "shift": base / 2}, "avg_ood": base / 2}
    runs = {"zeroshot": scores(zeroshot)}
    for i, name in enumerate(methods):
        wise = {a: scores(zeroshot + 0.01 * i + float(a) / 10) for a in alphas}
        runs[name] = {
            **wise["1.0"],
            "wise": wise,
            "fixed_alpha": {"alpha": 0.5, **wise["0.5"]},
            "selection": {"split": "val", "alpha": 0.3, "score": 0.6, "metric": "top1"},
            "selected": wise["0.3"],
            "method": {"recipe": "finetune", "regularizer": name},
            "train": {"steps": 1},
            "fingerprint": str(i),
        }
    return {
        "model": model,
        "id_dataset": "id",
        "ood_datasets": ["shift"],
        "validation": "val",
        "dataset_metrics": {"id": "top1", "shift": "top1"},
        "sae": None,
        "runs": runs,
    }


def write(tmp_path, name: str, content: dict):
    """A finished run's report: report.json and its stage's completion mark, as the report stage writes them."""
    from saeft_jax import storage

    (tmp_path / name / "report").mkdir(parents=True)
    (tmp_path / name / "report" / "report.json").write_text(json.dumps(content))
    digest = storage.digest(storage.path(tmp_path / name / "report" / "report.json"))
    (tmp_path / name / "report" / "done.json").write_text(json.dumps({"files": {"report.json": digest}}))
    return str(tmp_path / name)


def test_compare_merges_runs_and_names_clashing_methods(tmp_path):
    first = write(tmp_path, "a", report())
    second = write(tmp_path, "b", report(methods=("none", "mse")))
    out = compare.compare([first, second], str(tmp_path / "out"))
    merged = json.loads((tmp_path / "out" / "report.json").read_text())
    assert list(merged["runs"]) == ["zeroshot", "a/none", "sae_add_remove", "b/none", "mse"]
    assert merged["runs"]["mse"]["fingerprint"] == "1"
    text = out.read_text()
    assert "| `a/none`, selected a=0.3" in text and "`b`: `b/none`, `mse`" in text
    for picture in ("wise.png", "wise_logit.png", "wise_shifts.png", "datasets.png"):
        assert (tmp_path / "out" / picture).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda r: r.update(model="other"), "differ in model"),
        (lambda r: r.update(ood_datasets=["elsewhere"]), "differ in ood_datasets"),
        (lambda r: r.update(validation="test"), "differ in validation"),
        (lambda r: r.update(held_out={"fraction": 0.2, "seed": 1}), "differ in held_out"),
        (lambda r: r["runs"]["zeroshot"]["metrics"].update(id=0.1), "different zero-shot scores"),
    ],
)
def test_compare_refuses_runs_that_do_not_compare(tmp_path, change, says):
    other = copy.deepcopy(report())
    change(other)
    paths = [write(tmp_path, "a", report()), write(tmp_path, "b", other)]
    with pytest.raises(UsageError, match=says):
        compare.compare(paths, str(tmp_path / "out"))
    assert compare.main([*paths, "--out", str(tmp_path / "out")]) == 2
    assert compare.main([str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2


def test_compare_refuses_a_run_given_twice(tmp_path):
    first = write(tmp_path, "a", report())
    with pytest.raises(UsageError, match="given more than once"):
        compare.compare([first, str(tmp_path / "." / "a")], str(tmp_path / "out"))


def test_two_decimal_alphas_keep_their_own_names_and_the_selection_reads_its_own():
    from saeft_jax.evaluation.wise import alpha_key

    assert [alpha_key(a) for a in (0.0, 0.2, 0.25, 0.5, 1.0)] == ["0.0", "0.2", "0.25", "0.5", "1.0"]
    val = {"0.0": 0.1, "0.2": 0.3, "0.25": 0.4, "1.0": 0.2}
    choice = select_alpha(evaluation(val, dict(val)), "digits_val")
    assert choice["alpha"] == 0.25 and alpha_key(choice["alpha"]) in val


def test_a_report_without_alpha_half_or_shifts_says_so_and_still_renders(tmp_path):
    plain = report()
    for name in ("none", "sae_add_remove"):
        run = plain["runs"][name]
        del run["fixed_alpha"], run["wise"]["0.5"]
    text = pathlib.Path(compare.compare([write(tmp_path, "a", plain)], str(tmp_path / "out"))).read_text()
    assert "fixed a=0.5" not in text and "0.5 is not among evaluate.alphas" in text
    without_shifts = copy.deepcopy(report())
    without_shifts["ood_datasets"] = []
    compare.compare([write(tmp_path, "b", without_shifts)], str(tmp_path / "out2"))
    assert (tmp_path / "out2" / "datasets.png").exists() and not (tmp_path / "out2" / "wise_shifts.png").exists()


def test_the_summary_names_the_trained_steps_and_the_sae_the_analyses_read():
    from saeft_jax.config import base_config
    from saeft_jax.rendering.markdown import _what
    from saeft_jax.stages.report import sae_lines, setup
    from saeft_jax.training.recipes import descriptions

    content = report()
    content["runs"]["none"]["train"]["steps"] = 0  # the first method imported from a checkpoint
    content["runs"]["sae_add_remove"]["train"]["steps"] = 7
    sae = {"dict_size": 64, "k": 4, "relu": False, "kind": "topk", "fvu": 0.1, "l0": 4.0, "dead_fraction": 0.0}
    content.update(saes={"main": sae, "wide": {**sae, "dict_size": 256}}, report_sae="wide")
    labels = {"none": "`none`", "sae_add_remove": "`sae_add_remove`"}
    details = {
        "setup": setup(base_config()),
        "labels": labels,
        "recipes": descriptions(),
        "saes": sae_lines(content["saes"]),
    }
    text = "\n".join(_what(content, details))
    assert "; 7 steps of batch" in text
    assert "SAE `wide` (the vocabulary" in text and "SAE `main` (the vocabulary" not in text


def test_each_sae_kind_words_its_own_report_line():
    """The SAE lines of report.md as they were written before the kinds worded them (the literal
    text), and a kind registered from outside gets its line without the renderer knowing it."""
    from saeft_jax.config import base_config
    from saeft_jax.rendering.markdown import _what
    from saeft_jax.sae import kinds
    from saeft_jax.stages.report import sae_lines, setup
    from saeft_jax.training.recipes import descriptions

    quality = {"fvu": 0.1, "l0": 4.0, "dead_fraction": 0.025}
    content = report()
    content.update(
        report_sae="main",
        saes={
            "main": {**quality, "dict_size": 64, "k": 4, "relu": True, "kind": "topk"},
            "basis": {**quality, "fvu": 0.25, "l0": 8.0, "dict_size": 8, "k": 8, "relu": False, "kind": "pca"},
            "odd": {**quality, "dict_size": 2, "k": 1, "relu": False, "kind": "toy"},
            "unfinished": None,
        },
    )
    toy = kinds.register(kinds.SAEKind("toy", "a test's kind", ("dict_size",), label="Toy", summary=lambda s: "two."))
    try:
        labels = {"none": "`none`", "sae_add_remove": "`sae_add_remove`"}
        details = {"setup": setup(base_config()), "labels": labels, "recipes": descriptions()}
        lines = _what(content, {**details, "saes": sae_lines(content["saes"])})
    finally:
        del kinds.REGISTRY[toy.name]
    assert [line for line in lines if "`main`" in line or "`basis`" in line or "`odd`" in line] == [
        "- **SAE `main` (the vocabulary of the analyses below):** dictionary 64, k 4, ReLU after Top-K; on the "
        "training features FVU 0.100, L0 4.0, dead latents 2.5%.",
        "- **PCA basis `basis`:** the 8 leading principal directions of the training features; on them FVU 0.250.",
        "- **Toy `odd`:** two.",
    ]


def browser_card(feature: int, methods: dict[str, tuple[int, int]]) -> dict:
    view = {"examples": [feature], "density": 0.5, "histogram": [1] * 12, "scale": 1.0}
    return {
        "feature": feature,
        "names": [["word", 0.3]],
        "models": {"zeroshot": view, **{m: view for m in methods}},
        "methods": {
            m: {"added": a, "removed": r, "by_dataset": {"id": [a, r], "shift": [0, 0]}, "by_class": [["cat", a, r]]}
            for m, (a, r) in methods.items()
        },
    }


def write_browser(workdir: str, digest: str, cards: list[dict], methods: list[str], changed: int) -> None:
    from saeft_jax.rendering.html import browser_data, thumbnail

    images = {c["feature"]: thumbnail(np.full((4, 4, 3), c["feature"], np.uint8)) for c in cards}
    data = browser_data("main", {"sha256": digest}, "id", methods, changed, cards, images)
    (pathlib.Path(workdir) / "report" / "browser.json").write_text(json.dumps(data))


def test_compare_merges_the_feature_cards_of_runs_that_share_an_sae(tmp_path):
    with_sae = lambda r: {**r, "sae": {"dict_size": 8, "k": 2}}
    first = write(tmp_path, "a", with_sae(report()))
    second = write(tmp_path, "b", with_sae(report(methods=("none", "mse"))))
    third = write(tmp_path, "c", with_sae(report(methods=("other",))))
    write_browser(
        first,
        "same",
        [
            browser_card(3, {"none": (2, 1), "sae_add_remove": (1, 0)}),
            browser_card(5, {"none": (1, 0), "sae_add_remove": (0, 0)}),
        ],
        ["none", "sae_add_remove"],
        changed=2,
    )
    write_browser(second, "same", [browser_card(5, {"none": (4, 4), "mse": (1, 1)})], ["none", "mse"], changed=3)
    write_browser(third, "another", [browser_card(3, {"other": (1, 1)})], ["other"], changed=1)
    out = compare.compare([first, second, third], str(tmp_path / "out"))
    reports = {name: json.loads((tmp_path / name / "report" / "report.json").read_text()) for name in "abc"}
    merged, sources = compare.merge(reports)
    names = {n: dict(zip([m for m in reports[n]["runs"] if m != "zeroshot"], sources[n])) for n in "abc"}
    shared, other = compare.merge_browsers(
        {n: compare.read_browser(str(tmp_path / n), reports[n]) for n in "abc"}, names
    )
    assert shared["runs"] == ["a", "b"] and other["runs"] == ["c"]
    assert shared["methods"] == ["a/none", "sae_add_remove", "b/none", "mse"]
    cards = {card["feature"]: card for card in shared["cards"]}
    assert [card["feature"] for card in shared["cards"]] == [5, 3]  # 5 changed 10 times in all, 3 four times
    assert set(cards[5]["methods"]) == {"a/none", "sae_add_remove", "b/none", "mse"}
    assert cards[5]["methods"]["b/none"]["added"] == 4 and cards[3]["methods"]["a/none"]["removed"] == 1
    assert shared["changed"] is None  # b showed 1 of its 3: the union is not every changed feature
    page = (out.parent / "report.html").read_text()
    assert page.count('<article class="card"') == 3 and "(runs a, b)" in page and "(runs c)" in page
    assert "of each run" in page and '<option value="b/none">' in page


def test_compare_names_a_damaged_or_missing_browser(tmp_path):
    with_sae = {**report(), "sae": {"dict_size": 8, "k": 2}}
    first, second = write(tmp_path, "a", with_sae), write(tmp_path, "b", with_sae)
    (tmp_path / "a" / "report" / "browser.json").write_text('{"cards": []}')
    with pytest.raises(UsageError, match=r"a/report/browser.json is damaged \(it lacks sae_digest, dataset"):
        compare.compare([first, second], str(tmp_path / "out"))
    (tmp_path / "a" / "report" / "browser.json").write_bytes(b"\xff\xfe")
    with pytest.raises(UsageError, match="browser.json is damaged"):
        compare.compare([first, second], str(tmp_path / "out"))
    from saeft_jax import storage

    for workdir in (first, second):
        write_browser(workdir, "same", [browser_card(3, {"none": (2, 1)})], ["none", "sae_add_remove"], changed=1)
    browser = tmp_path / "a" / "report" / "browser.json"
    (tmp_path / "a" / "report" / "done.json").write_text(
        json.dumps({"files": {"browser.json": storage.digest(storage.path(browser))}})
    )
    compare.compare([first, second], str(tmp_path / "out"))  # as its report stage recorded it
    browser.write_text(browser.read_text().replace('"word"', '"wort"'))  # still JSON, no longer what was written
    with pytest.raises(
        UsageError,
        match=r"browser.json is damaged \(it does not match the size and SHA-256 its "
        r"report stage recorded\)",
    ):
        compare.compare([first, second], str(tmp_path / "out"))
    browser.unlink()
    with pytest.raises(UsageError, match=r"a/report/browser.json is damaged \(it is missing\)"):
        compare.compare([first, second], str(tmp_path / "out"))


def test_compare_refuses_an_out_inside_or_equal_to_a_compared_run_and_leaves_its_report(tmp_path):
    first, second = write(tmp_path, "a", report()), write(tmp_path, "b", report())
    (tmp_path / "link").symlink_to(tmp_path / "b")
    before = (tmp_path / "b" / "report" / "report.json").read_bytes()
    for out, says in (
        (f"{second}/report", "lies inside the compared run"),
        (second, "is the compared run"),
        (str(tmp_path / "link" / "report"), "lies inside the compared run"),
        (f"{second}/", "is the compared run"),
    ):
        with pytest.raises(UsageError, match=f"--out {out} {says} {second}"):
            compare.compare([first, second], out)
    assert (tmp_path / "b" / "report" / "report.json").read_bytes() == before
    compare.compare([first, second], str(tmp_path / "ab"))  # beside the runs: fine
    assert json.loads((tmp_path / "ab" / "report.json").read_text())["model"] == "demo"


def test_compare_refuses_the_same_run_reached_through_a_link(tmp_path):
    first = write(tmp_path, "a", report())
    (tmp_path / "elsewhere").symlink_to(tmp_path / "a")
    with pytest.raises(UsageError, match="given more than once .*also through a link"):
        compare.compare([first, str(tmp_path / "elsewhere")], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["no mark", "half-written report"])
def test_compare_refuses_a_run_whose_report_stage_has_not_finished(tmp_path, damage):
    first, second = write(tmp_path, "a", report()), write(tmp_path, "b", report())
    (tmp_path / "b" / "report" / "done.json").unlink()
    if damage == "half-written report":
        (tmp_path / "b" / "report" / "report.json").write_text(json.dumps(report())[:200])
    with pytest.raises(UsageError, match=rf"the report stage of {second} has not finished .*done.json"):
        compare.compare([first, second], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def with_sae(tmp_path, name: str, k: int, weights: bytes) -> str:
    """A finished run with a Top-K SAE of `k` whose weights are `weights` (their hash in the sae stage's mark),
    its feature browser without cards."""
    import hashlib

    content = report()
    content.update(sae={"dict_size": 8, "k": k, "fvu": 0.1}, report_sae="main")
    for method in ("none", "sae_add_remove"):
        content["runs"][method]["changes_by_dataset"] = {"id": {"added_per_image": 1.0 + k}}
        content["runs"][method]["changes"] = {"added_per_image": 1.0 + k}
    workdir = write(tmp_path, name, content)
    (tmp_path / name / "sae" / "main").mkdir(parents=True)
    (tmp_path / name / "sae" / "main" / "done.json").write_text(
        json.dumps(
            {"files": {"sae.safetensors": {"size": len(weights), "sha256": hashlib.sha256(weights).hexdigest()}}}
        )
    )
    write_browser(workdir, hashlib.sha256(weights).hexdigest(), [], ["none", "sae_add_remove"], changed=0)
    return workdir


def test_runs_with_other_sae_weights_compare_with_each_row_naming_its_own_sae(tmp_path):
    same = [with_sae(tmp_path, "a", 2, b"one"), with_sae(tmp_path, "b", 2, b"one")]
    compare.compare(same, str(tmp_path / "same"))
    merged = json.loads((tmp_path / "same" / "report.json").read_text())
    assert merged["sae"] == {"dict_size": 8, "k": 2, "fvu": 0.1}
    assert "sae" not in merged["runs"]["a/none"] and "| SAE |" not in (tmp_path / "same" / "report.md").read_text()
    for other, why in (
        (with_sae(tmp_path, "c", 4, b"two"), "another k"),
        (with_sae(tmp_path, "d", 2, b"two"), "the same k, other weights"),
    ):
        out = tmp_path / f"with_{pathlib.Path(other).name}"
        compare.compare([same[0], other], str(out))
        merged = json.loads((out / "report.json").read_text())
        assert merged["sae"] is None, why
        name = pathlib.Path(other).name
        assert merged["runs"]["a/none"]["sae"]["run"] == "a" and merged["runs"][f"{name}/none"]["sae"]["run"] == name
        assert (
            merged["runs"][f"{name}/none"]["sae"]["weights"]["sha256"]
            != merged["runs"]["a/none"]["sae"]["weights"]["sha256"]
        )
        text = (out / "report.md").read_text()
        assert "In the vocabulary of each row's own SAE" in text and "| method | SAE | ID |" in text
        assert f"| {name}/none | {name}: `main` (8, k {4 if why == 'another k' else 2}) |" in text


def test_every_path_problem_of_out_is_one_paragraph(tmp_path, capsys):
    first = write(tmp_path, "a", report())
    (tmp_path / "file").write_text("mine")
    for out, says in ((tmp_path / "file", "is a file"), ("/proc/saeft_compare/out", "cannot be written")):
        assert compare.main([first, "--out", str(out)]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"error: --out {out} {says}") and error.count("\n") == 1, error
    assert (tmp_path / "file").read_text() == "mine"


def test_a_run_in_a_bucket_compares_and_an_unreachable_bucket_is_named_within_the_wait(
    bucket, tmp_path, monkeypatch, capsys
):
    import socket
    import time

    import gcsfs
    from etils import epath

    local = write(tmp_path, "a", report())
    for name in ("report.json", "done.json"):
        epath.Path(f"{bucket}/compared/report/{name}").write_bytes((tmp_path / "a" / "report" / name).read_bytes())
    compare.compare([local, f"{bucket}/compared"], str(tmp_path / "out"))
    assert json.loads((tmp_path / "out" / "report.json").read_text())["runs"]["compared/none"]["fingerprint"] == "0"
    with socket.socket() as silent:  # accepts connections and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setattr(compare, "BUCKET_WAIT_S", 2.0)
        monkeypatch.setattr(compare.storage, "PROBE_TIMEOUT_S", 2.0)  # the probe before anything is read
        gcsfs.GCSFileSystem.clear_instance_cache()
        start = time.monotonic()
        assert compare.main([local, "gs://bucket/compared", "--out", str(tmp_path / "out2")]) == 2
        took = time.monotonic() - start
    gcsfs.GCSFileSystem.clear_instance_cache()
    error = capsys.readouterr().err
    ours = error[error.index("error: run") :]  # before it, the emulator's own thread may report a closed pipe
    assert ours.startswith("error: run gs://bucket/compared: its bucket did not answer within 2 s") and took < 10, error
    assert ours.count("\n") == 1 and not (tmp_path / "out2").exists()


def test_compare_keeps_the_references_definitions_beside_the_primary_scores(tmp_path):
    def with_reference(content):
        content["reference_dataset_metrics"] = {"id": "worst_group_all"}
        for run in content["runs"].values():
            for scores in [
                run,
                *run.get("wise", {}).values(),
                *(run[k] for k in ("fixed_alpha", "selected") if k in run),
            ]:
                scores["reference_metrics"] = {"id": scores["metrics"]["id"] / 4}
        return content

    first = write(tmp_path, "a", with_reference(report()))
    second = write(tmp_path, "b", with_reference(report(methods=("mse",))))
    out = compare.compare([first, second], str(tmp_path / "out"))
    merged = json.loads((tmp_path / "out" / "report.json").read_text())
    assert merged["reference_dataset_metrics"] == {"id": "worst_group_all"}
    text = out.read_text()
    assert "the reference's worst-group accuracy" in text and "| zero-shot | 12.5 |" in text
