"""Stage report: `report/report.json` (schema in docs/design.md), `report/report.md` and the PNGs.

It collects what the stages before it recorded (scores per WiSE-FT alpha, training summaries,
the SAE's quality), runs the analyses `config.report.analyses` names on every method and dataset
(`saeft_jax.evaluation.analyses`), explains the in-distribution changes feature by feature
(`saeft_jax.evaluation.interpret`) and renders it all (`saeft_jax.rendering`).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from saeft_jax import parallel, storage
from saeft_jax.data.registry import suite
from saeft_jax.evaluation import interpret
from saeft_jax.evaluation.analyses import Comparison, Embeddings, run_analyses
from saeft_jax.rendering import plots
from saeft_jax.rendering.markdown import best_mix, render_markdown, report_datasets, report_methods
from saeft_jax.sae.frozen import FrozenSAE
from saeft_jax.stages import finetuned, heads, scores, trained_sae
from saeft_jax.stages.context import Run, write_json
from saeft_jax.zeroshot import build_zeroshot_head

STAGE = "report"


def _avg(metrics: dict[str, float], names: list[str]) -> float | None:
    return float(np.mean([metrics[n] for n in names])) if names else None


def _run_scores(record: dict[str, Any], alpha: str, ood: list[str]) -> dict[str, Any]:
    metrics = {dataset: summary["scores"][alpha] for dataset, summary in record["datasets"].items()}
    return {"metrics": metrics, "avg_ood": _avg(metrics, ood)}


def collect(run: Run) -> dict[str, Any]:
    """The report.json content (without the analyses, which `run_stage` adds)."""
    in_distribution, shifts = suite(run.config.eval_suite)
    names = list(run.methods)
    evaluations = {name: run.done(scores.STAGE, name) for name in names}
    alphas = list(next(iter(evaluations.values()))["datasets"].values())[0]["scores"]
    sae_done = run.done(trained_sae.STAGE)
    report = {"model": str(run.model_path), "id_dataset": in_distribution, "ood_datasets": list(shifts),
              "sae": {k: sae_done[k] for k in ("fvu", "dead_fraction", "l0", "dict_size", "k", "relu")
                      if k in sae_done} if sae_done else None,
              "runs": {"zeroshot": _run_scores(evaluations[names[0]], "0.0", list(shifts))}}
    for name, method in run.methods.items():
        trained = run.done(finetuned.STAGE, name)
        report["runs"][name] = {**_run_scores(evaluations[name], "1.0", list(shifts)),
                                "wise": {a: _run_scores(evaluations[name], a, list(shifts)) for a in alphas},
                                "method": method.describe(), "train": trained["train"],
                                "fingerprint": trained["fingerprint"]}
    return report


def run_stage(run: Run) -> None:
    """Process 0 computes and writes the report; the others wait."""
    if run.is_writer:
        report = collect(run)
        directory = run.dir(STAGE)
        sae = trained_sae.load(run) if report["sae"] else None
        details = {**_changes(run, report, sae), "labels": {n: m.label() for n, m in run.methods.items()}}
        figures = _figures(report, directory)
        if sae is not None:
            figures.update(_feature_grids(run, details, directory))
        write_json(directory / "report.json", report)
        storage.write_atomic(directory / "report.md", render_markdown(run.config, report, details, figures))
        files = ("report.md", "report.json", *figures.values())
    else:
        files = ()
    made_from = (*((scores.STAGE, name) for name in run.methods), (trained_sae.STAGE,))
    run.mark_done({}, STAGE, files=files, inputs=made_from)


def _figures(report: dict[str, Any], directory) -> dict[str, str]:
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
    spec = heads.label_spaces(run)[run.train_spec.label_space]
    names, vectors = list(spec.classnames), [heads.load_head(run, spec.label_space)["W"]]
    concepts = list(run.config.report.concepts)
    if concepts:
        model, params = run.clip
        head = build_zeroshot_head(model, params, run.tokenizer, concepts, ("{}",), show_progress=False)
        names += concepts
        vectors.append(np.asarray(head["W"]))
    return names, np.concatenate(vectors)


def _changes(run: Run, report: dict[str, Any], sae: FrozenSAE | None) -> dict[str, Any]:
    """Runs the configured analyses per method and dataset into `report`; returns the feature
    explanation of each method on the first dataset (in distribution when there is one)."""
    local = parallel.data_mesh(jax.local_devices())  # only process 0 writes the report
    datasets = report_datasets(report)
    specs = {s.name: s for s in run.eval_specs()}
    zeroshot: dict[str, Embeddings] = {}  # every method's alpha 0: the same embeddings, encoded once
    explanations: dict[str, Any] = {}
    vocabulary = _vocabulary(run) if sae is not None else None
    for name in report_methods(report):
        by_dataset = {}
        for dataset in datasets:
            arrays = scores.load_arrays(run, name, dataset)
            if dataset not in zeroshot:
                zeroshot[dataset] = Embeddings(arrays["zeroshot_embeddings"], sae, local)
            comparison = Comparison(zeroshot[dataset], Embeddings(arrays["finetuned_embeddings"], sae, local),
                                    arrays["labels"], len(specs[dataset].classnames))
            by_dataset[dataset] = run_analyses(run.config.report.analyses, comparison)
            if dataset == datasets[0] and sae is not None:
                explanations[name] = _explain(run, specs[dataset], comparison, vocabulary, arrays["indices"])
        report["runs"][name]["changes"] = {key: value for key, value in by_dataset[datasets[0]].items()
                                           if key != "sae_fvu_zeroshot"}
        report["runs"][name]["changes_by_dataset"] = by_dataset
    return {"runs": explanations}


def _explain(run: Run, spec, comparison: Comparison, vocabulary, indices: np.ndarray) -> dict[str, Any]:
    cfg = run.config.report
    names, text = vocabulary
    detail = interpret.explain(comparison.changes, comparison.zeroshot.codes, comparison.finetuned.codes,
                               np.asarray(comparison.zeroshot.sae.params["W_dec"]), text, names, spec.classnames,
                               top_features=cfg.top_features, images_per_feature=cfg.images_per_feature,
                               classes_shown=cfg.classes_shown)
    return {"dataset": spec.name, "source_indices": indices, **detail}


def _feature_grids(run: Run, details: dict[str, Any], directory) -> dict[str, str]:
    """One PNG per method: the top-activating images of its most gained and lost features."""
    figures = {}
    for name, detail in details["runs"].items():
        source = run.source(run.spec(detail["dataset"]))
        rows = [(f"{label} #{e['feature']} ({e['names'][0][0]}): {e['images']} imgs",
                 [source[int(detail["source_indices"][i])]["image"] for i in e["top_rows"]])
                for label in ("gained", "lost") for e in detail[label]]
        if rows:
            file = f"features_{name}.png"
            plots.image_grid(rows, directory / file, columns=run.config.report.images_per_feature)
            figures[f"features_{name}"] = file
    return figures
