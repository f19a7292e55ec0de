"""Stage report: `report/report.json` (DESIGN.md schema), `report/report.md` and the PNGs,
from the artifacts of the stages before it. Interpretability is computed here, on the
in-distribution test set (every dataset's figures are in `changes_by_dataset`)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from saeft_jax import parallel, plots, storage
from saeft_jax.data.registry import suite
from saeft_jax.evaluation import interpret
from saeft_jax.sae_eval import evaluate_sae
from saeft_jax.stages import evaluate, finetune, sae, zeroshot
from saeft_jax.stages.context import Run, write_json
from saeft_jax.stages.render import best_mix, render_markdown, report_datasets, report_methods
from saeft_jax.zeroshot import build_zeroshot_head

STAGE = "report"


def _avg(metrics: dict[str, float], names: list[str]) -> float | None:
    return float(np.mean([metrics[n] for n in names])) if names else None


def _run_scores(record: dict[str, Any], alpha: str, ood: list[str]) -> dict[str, Any]:
    metrics = {dataset: summary["scores"][alpha] for dataset, summary in record["datasets"].items()}
    return {"metrics": metrics, "avg_ood": _avg(metrics, ood)}


def collect(run: Run) -> dict[str, Any]:
    """The report.json content (without the interpretability details that go to report.md only)."""
    in_distribution, shifts = suite(run.config.eval_suite)
    names = list(run.config.finetune.regularizers)
    evaluations = {name: run.done(evaluate.STAGE, name) for name in names}
    alphas = list(next(iter(evaluations.values()))["datasets"].values())[0]["scores"]
    sae_done = run.done(sae.STAGE)
    report = {"model": str(run.model_path), "id_dataset": in_distribution, "ood_datasets": list(shifts),
              "sae": {k: sae_done[k] for k in ("fvu", "dead_fraction", "l0")} if sae_done else None,
              "runs": {"zeroshot": _run_scores(evaluations[names[0]], "0.0", list(shifts))}}
    for name in names:
        trained = run.done(finetune.STAGE, name)
        report["runs"][name] = {**_run_scores(evaluations[name], "1.0", list(shifts)),
                                "wise": {a: _run_scores(evaluations[name], a, list(shifts)) for a in alphas},
                                "train": trained["train"], "fingerprint": trained["fingerprint"]}
    return report


def run_stage(run: Run) -> None:
    """Process 0 computes and writes the report; the others wait."""
    if run.is_writer:
        report = collect(run)
        directory = run.dir(STAGE)
        details = _changes(run, report) if report["sae"] else {}
        figures = _figures(run, report, directory)
        figures.update(details.pop("figures", {}))
        write_json(directory / "report.json", report)
        text = render_markdown(run.config, report, details, figures)
        storage.write_atomic(directory / "report.md", text)
    run.mark_done({"files": ["report.md", "report.json"]}, STAGE)


def _figures(run: Run, report: dict[str, Any], directory) -> dict[str, str]:
    datasets = report_datasets(report)
    methods = report_methods(report)
    figures = {}
    if report["id_dataset"]:
        curves = {}
        for method in methods:
            wise = report["runs"][method]["wise"]
            alphas = sorted(wise, key=float)
            curves[method] = ([float(a) for a in alphas], [wise[a]["metrics"][report["id_dataset"]] for a in alphas],
                              [wise[a]["avg_ood"] for a in alphas])
        plots.wise_curves(curves, directory / "wise.png", id_name=report["id_dataset"])
        figures["wise"] = "wise.png"
    series = {"zero-shot": [report["runs"]["zeroshot"]["metrics"][d] for d in datasets]}
    for method in methods:
        series[method] = [report["runs"][method]["metrics"][d] for d in datasets]
        best = best_mix(report["runs"][method], report["id_dataset"])
        series[f"{method} WiSE a={best[0]}"] = [best[1]["metrics"][d] for d in datasets]
    plots.dataset_bars(datasets, series, directory / "datasets.png")
    figures["datasets"] = "datasets.png"
    return figures


def _vocabulary(run: Run) -> tuple[list[str], np.ndarray]:
    """Names for features: the training classes (their zero-shot head rows) and the configured concepts."""
    spec = zeroshot.label_spaces(run)[run.train_spec.label_space]
    names, vectors = list(spec.classnames), [zeroshot.load_head(run, spec.label_space)["W"]]
    concepts = list(run.config.report.concepts)
    if concepts:
        model, params = run.clip
        head = build_zeroshot_head(model, params, run.tokenizer, concepts, ("{}",), show_progress=False)
        names += concepts
        vectors.append(np.asarray(head["W"]))
    return names, np.concatenate(vectors)


def _changes(run: Run, report: dict[str, Any]) -> dict[str, Any]:
    """Feature changes, SAE FVU and CKA per run and dataset; names and image grids for the ID set."""
    sae_params, meta = sae.load(run)
    k, dict_size, relu = meta["k"], meta["dict_size"], meta["options"].get("relu", False)
    local = parallel.data_mesh(jax.local_devices())  # only process 0 writes the report
    vocabulary, text = _vocabulary(run)
    datasets = report_datasets(report)
    specs = {s.name: s for s in run.eval_specs()}
    cfg = run.config.report
    details: dict[str, Any] = {"runs": {}, "figures": {}}
    zeroshot_fvu: dict[str, float] = {}  # the zero-shot embeddings are every method's alpha 0: fit them once
    for name in report_methods(report):
        by_dataset = {}
        for dataset in datasets:
            arrays = evaluate.load_arrays(run, name, dataset)
            if dataset not in zeroshot_fvu:
                zeroshot_fvu[dataset] = evaluate_sae(sae_params, arrays["zeroshot_embeddings"], k, relu=relu,
                                                     mesh=local)["fvu"]
            codes0 = interpret.sae_codes(sae_params, arrays["zeroshot_embeddings"], k, relu=relu)
            codes_t = interpret.sae_codes(sae_params, arrays["finetuned_embeddings"], k, relu=relu)
            changes = interpret.feature_changes(codes0, codes_t, arrays["labels"], dict_size,
                                                len(specs[dataset].classnames))
            by_dataset[dataset] = {
                "added_per_image": changes.added_per_image, "removed_per_image": changes.removed_per_image,
                "sae_fvu": evaluate_sae(sae_params, arrays["finetuned_embeddings"], k, relu=relu,
                                        mesh=local)["fvu"],
                "sae_fvu_zeroshot": zeroshot_fvu[dataset],
                "cka": interpret.linear_cka(arrays["zeroshot_embeddings"], arrays["finetuned_embeddings"])}
            if dataset == datasets[0]:
                details["runs"][name] = _explain(run, name, specs[dataset], arrays, changes, codes0, codes_t,
                                                 sae_params, vocabulary, text, cfg, details["figures"])
        main = by_dataset[datasets[0]]
        report["runs"][name]["changes"] = {key: main[key] for key in ("added_per_image", "removed_per_image",
                                                                      "sae_fvu", "cka")}
        report["runs"][name]["changes_by_dataset"] = by_dataset
    return details


def _explain(run, name, spec, arrays, changes, codes0, codes_t, sae_params, vocabulary, text, cfg, figures):
    gained = [int(f) for f in np.argsort(-changes.added_count, kind="stable")[:cfg.top_features]
              if changes.added_count[f]]
    lost = [int(f) for f in np.argsort(-changes.removed_count, kind="stable")[:cfg.top_features]
            if changes.removed_count[f]]
    names = interpret.name_features(np.asarray(sae_params["W_dec"]), text, vocabulary, gained + lost)
    source = run.source(spec)
    rows = []
    for label, features, codes, counts in (("gained", gained, codes_t, changes.added_count),
                                           ("lost", lost, codes0, changes.removed_count)):
        for f in features:
            top = interpret.top_activating(codes, f, cfg.images_per_feature)
            title = f"{label} #{f} ({names[f][0][0]}): {int(counts[f])} imgs"
            rows.append((title, [source[int(arrays["indices"][i])]["image"] for i in top]))
    if rows:
        file = f"features_{name}.png"
        plots.image_grid(rows, run.workdir / STAGE / file, columns=cfg.images_per_feature)
        figures[f"features_{name}"] = file
    per_class = sorted(changes.top_per_class(spec.classnames),
                       key=lambda r: -(r["added_per_image"] + r["removed_per_image"]))[:cfg.classes_shown]
    def entry(f: int, count: np.ndarray) -> tuple:
        return f, int(count[f]), float(changes.mean_change[f]), names[f]

    return {"dataset": spec.name, "gained": [entry(f, changes.added_count) for f in gained],
            "lost": [entry(f, changes.removed_count) for f in lost], "per_class": per_class}
