"""Stage report: `report/report.json` (schema in docs/design.md), `report/report.md`, the PNGs,
and `report/report.html` with its feature browser (data in `report/browser.json`).

It collects what the stages before it recorded (scores per WiSE-FT alpha, training summaries,
the SAE's quality), runs the analyses `config.report.analyses` names on every method and dataset
(`saeft_jax.evaluation.analyses`), explains the in-distribution changes feature by feature
(`saeft_jax.evaluation.interpret`) and renders it all (`saeft_jax.rendering`), handing the
renderers JSON only: report.json's content, and beside it what report.md says of the run's setup,
the recipes, the metrics' labels and the analyses' declared columns (`details`, `legend`).
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from saeft_jax import parallel, stopping, storage
from saeft_jax.config import sae_names
from saeft_jax.data.registry import suite
from saeft_jax.evaluation import browser, interpret, metrics
from saeft_jax.evaluation.analyses import (
    ANALYSES,
    Comparison,
    Embeddings,
    MethodComparison,
    report_columns,
    run_analyses,
    run_method_analyses,
)
from saeft_jax.evaluation.effects import Scorer
from saeft_jax.evaluation.wise import alpha_key
from saeft_jax.rendering import plots
from saeft_jax.rendering.figures import report_figures
from saeft_jax.rendering.html import browser_data, render_html, thumbnail
from saeft_jax.rendering.markdown import render_markdown, report_datasets, report_methods
from saeft_jax.sae import kinds
from saeft_jax.sae.frozen import FrozenSAE
from saeft_jax.stages import evaluate, finetune, sae, zeroshot
from saeft_jax.stages.context import Run, write_json
from saeft_jax.training import recipes
from saeft_jax.zeroshot import build_zeroshot_head

STAGE = "report"
BROWSER_FILE = "browser.json"  # the feature browser's data, which compare reads too


def _avg(metrics: dict[str, float], names: list[str]) -> float | None:
    return float(np.mean([metrics[n] for n in names])) if names else None


def _run_scores(record: dict[str, Any], alpha: str, tests: list[str], ood: list[str]) -> dict[str, Any]:
    """The scores at `alpha`; under "reference_metrics", those of the datasets whose metric the
    reference defines otherwise, by its definition (`metrics.REFERENCE_DEFINITIONS`)."""
    metrics = {dataset: record["datasets"][dataset]["scores"][alpha] for dataset in tests}
    scores = {"metrics": metrics, "avg_ood": _avg(metrics, ood)}
    reference = {
        dataset: record["datasets"][dataset]["reference"]["scores"][alpha]
        for dataset in tests
        if "reference" in record["datasets"][dataset]
    }
    if reference:
        scores["reference_metrics"] = reference
    return scores


def _sae_summary(run: Run, name: str) -> dict[str, Any] | None:
    """SAE `name`'s quality on the training features (its completion record) and its settings (its
    `sae.json`, which the penalty's SAE is built from too); None when it is not complete."""
    record = run.done(sae.STAGE, name)
    if not record:
        return None
    settings = sae.describe(run, name)
    return {
        **{key: record[key] for key in ("fvu", "dead_fraction", "l0")},
        **{key: settings[key] for key in ("dict_size", "k", "relu", "kind")},
    }


def sae_lines(saes: dict[str, dict[str, Any] | None]) -> dict[str, dict[str, str]]:
    """Each complete SAE's line in report.md, as its kind words it: {name: {"label", "summary"}}
    (`saes`: report.json's entries), so that the renderer knows no kind by name."""
    return {
        name: {"label": kinds.get(sae["kind"]).label, "summary": kinds.get(sae["kind"]).summary(sae)}
        for name, sae in saes.items()
        if sae
    }


def select_alpha(record: dict[str, Any], split: str) -> dict[str, Any]:
    """The WiSE-FT alpha with the best score on the validation split `split` (the smallest of
    equal ones, the nearer to zero-shot); only that split is read."""
    scores = record["datasets"][split]["scores"]
    alpha = max(sorted(scores, key=float), key=lambda a: scores[a])
    metric = record["datasets"][split]["metric"]
    return {"split": split, "alpha": float(alpha), "score": scores[alpha], "metric": metric}


def _held_out(run: Run) -> dict[str, float] | None:
    """Which training rows a `val_fraction` validation split holds out (they follow fraction and seed)."""
    fraction = run.config.finetune.val_fraction
    return {"fraction": fraction, "seed": run.config.seed} if fraction else None


def collect(run: Run) -> dict[str, Any]:
    """The report.json content (without the analyses, which `run_stage` adds). Everything called
    selected is chosen on the validation split; the test sets are only scored."""
    in_distribution, shifts = suite(run.config.eval_suite)
    tests, shifts = [spec.name for spec in run.eval_specs()], list(shifts)
    names = list(run.methods)
    evaluations = {name: run.done(evaluate.STAGE, name) for name in names}
    saes = {name: _sae_summary(run, name) for name in sae_names(run.config)}
    validation, report_sae = run.validation.name if run.validation else None, sae.report_sae(run)
    report = {
        "model": str(run.model_path),
        "id_dataset": in_distribution,
        "ood_datasets": shifts,
        "validation": validation,
        "sae": saes.get(report_sae),
        "saes": saes,
        "report_sae": report_sae,
        "held_out": _held_out(run),
        "dataset_metrics": {d: evaluations[names[0]]["datasets"][d]["metric"] for d in tests},
        "reference_dataset_metrics": {
            d: evaluations[names[0]]["datasets"][d]["reference"]["metric"]
            for d in tests
            if "reference" in evaluations[names[0]]["datasets"][d]
        },
        "runs": {"zeroshot": _run_scores(evaluations[names[0]], "0.0", tests, shifts)},
    }
    for name, method in run.methods.items():
        record, trained = evaluations[name], run.done(finetune.STAGE, name)
        wise = {a: _run_scores(record, a, tests, shifts) for a in record["datasets"][tests[0]]["scores"]}
        entry = {
            **wise["1.0"],
            "wise": wise,
            "method": method.describe(),
            "train": trained["train"],
            "fingerprint": trained["fingerprint"],
        }
        if "checkpoint" in trained:  # the step chosen on validation during fine-tuning
            entry["checkpoint"] = {k: trained["checkpoint"][k] for k in ("split", "step", "score", "curve", "rule")}
        if "0.5" in wise:
            entry["fixed_alpha"] = {"alpha": 0.5, **wise["0.5"]}  # the WiSE-FT papers' choice
        if validation:
            entry["selection"] = select_alpha(record, validation)
            entry["selected"] = wise[alpha_key(entry["selection"]["alpha"])]
        report["runs"][name] = entry
    return report


def legend() -> dict[str, Any]:
    """What report.md needs to name what report.json holds (a comparison's too): each registered
    metric's label and every column the registered analyses declare."""
    return {"metrics": metrics.report_labels(), "columns": report_columns()}


def setup(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What report.md says of the run beyond report.json: compute dtype, data, suite, fine-tuning
    settings, and the processes and devices the report was made on."""
    ft = config.finetune
    return {
        "dtype": config.dtype,
        "train_dataset": config.train_dataset,
        "eval_suite": config.eval_suite,
        "batch_size": ft.batch_size,
        "lr": ft.lr,
        "warmup_steps": ft.warmup_steps,
        "weight_decay": ft.weight_decay,
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "platform": jax.devices()[0].platform,
    }


def run_stage(run: Run) -> None:
    """Process 0 computes and writes the report; the others wait."""
    if run.is_writer:
        report = collect(run)
        directory = run.dir(STAGE)
        frozen_sae = sae.load(run, report["report_sae"]) if report["sae"] else None
        vocabulary = _vocabulary(run) if frozen_sae is not None else None
        explanations, comparisons = _changes(run, report, frozen_sae, vocabulary)
        if frozen_sae is not None:
            _across_datasets(run, report, frozen_sae, comparisons)
        details = {
            "setup": setup(run.config),
            "labels": {n: m.label() for n, m in run.methods.items()},
            "recipes": recipes.descriptions(),
            "saes": sae_lines(report["saes"]),
            "legend": legend(),
            "runs": explanations,
            "names": _effect_names(report, frozen_sae, vocabulary) if frozen_sae is not None else {},
        }
        figures = report_figures(report, directory)
        browsers = []
        if frozen_sae is not None:
            figures.update(_feature_grids(run, details, directory))
            browsers.append(_browser(run, report, comparisons, frozen_sae, vocabulary))
            write_json(directory / BROWSER_FILE, browsers[0])
        elif (directory / BROWSER_FILE).exists():  # an earlier report's: not this run's features
            (directory / BROWSER_FILE).unlink()
        write_json(directory / "report.json", report)
        text = render_markdown(report, details, figures)
        storage.write_atomic(directory / "report.md", text)
        storage.write_atomic(directory / "report.html", render_html("SAE-FT report", text, directory, browsers))
        files = ("report.md", "report.json", "report.html", *figures.values(), *([BROWSER_FILE] if browsers else []))
    else:
        files = ()
    sae_name = sae.report_sae(run)
    made_from = (*((evaluate.STAGE, name) for name in run.methods), *([(sae.STAGE, sae_name)] if sae_name else []))
    run.mark_done({}, STAGE, files=files, inputs=made_from)


def _vocabulary(run: Run) -> tuple[list[str], np.ndarray]:
    """Names for features: the training classes (their zero-shot head rows) and the configured concepts."""
    spec = zeroshot.label_spaces(run)[run.train_spec.label_space]
    names, vectors = list(spec.classnames), [zeroshot.zeroshot_head(run, spec.label_space)["W"]]
    concepts = list(run.config.report.concepts)
    if concepts:
        head = build_zeroshot_head(run.model, [[c] for c in concepts], show_progress=False)
        names += concepts
        vectors.append(np.asarray(head["W"]))
    return names, np.concatenate(vectors)


def _changes(
    run: Run, report: dict[str, Any], frozen_sae: FrozenSAE | None, vocabulary
) -> tuple[dict[str, Any], dict[str, dict[str, Comparison]]]:
    """Runs the configured analyses per method and dataset into `report`; returns the feature
    explanation of each method on the first dataset (in distribution when there is one) and the
    comparisons ({method: {dataset: Comparison}})."""
    local = parallel.data_mesh(jax.local_devices())  # only process 0 writes the report
    datasets = report_datasets(report)
    specs = {s.name: s for s in run.eval_specs()}
    zeroshot_embeddings: dict[str, Embeddings] = {}  # every method's alpha 0: the same embeddings, encoded once
    explanations: dict[str, Any] = {}
    comparisons: dict[str, dict[str, Comparison]] = {}
    for name in report_methods(report):
        by_dataset, comparisons[name] = {}, {}
        for dataset in datasets:
            stopping.check(f"in stage report before the analyses of {name} on {dataset}")
            arrays = evaluate.load_arrays(run, name, dataset)
            if dataset not in zeroshot_embeddings:
                zeroshot_embeddings[dataset] = Embeddings(arrays["zeroshot_embeddings"], frozen_sae, local)
            comparison = Comparison(
                zeroshot_embeddings[dataset],
                Embeddings(arrays["finetuned_embeddings"], frozen_sae, local),
                arrays["labels"],
                len(specs[dataset].classnames),
                arrays["indices"],
            )
            comparisons[name][dataset] = comparison
            by_dataset[dataset] = run_analyses(run.config.report.analyses, comparison)
            if dataset == datasets[0] and frozen_sae is not None:
                explanations[name] = _explain(run, specs[dataset], comparison, vocabulary, arrays["indices"])
        report["runs"][name]["changes"] = {
            key: value for key, value in by_dataset[datasets[0]].items() if key != "sae_fvu_zeroshot"
        }
        report["runs"][name]["changes_by_dataset"] = by_dataset
    return explanations, comparisons


def _across_datasets(
    run: Run, report: dict[str, Any], frozen_sae: FrozenSAE, comparisons: dict[str, dict[str, Comparison]]
) -> None:
    """Runs the configured analyses across datasets (`feature_effects`) per method into its entry of
    `report`: the method on the suite's datasets (`comparisons`) and the validation split, each
    scored as the evaluate stage scored it at alpha 1 (the method's head on its own label space,
    the zero-shot head of another; the dataset's projection)."""
    names = [name for name in run.config.report.analyses if ANALYSES[name].across_datasets]
    if not names:
        return
    local = parallel.data_mesh(jax.local_devices())
    validation, train_space = run.validation, run.train_spec.label_space
    specs = {spec.name: spec for spec in [*run.eval_specs(), *([validation] if validation else [])]}
    own_heads = {
        spec.label_space: zeroshot.zeroshot_head(run, spec.label_space)
        for spec in specs.values()
        if spec.label_space != train_space
    }
    zeroshot_validation = None  # the same embeddings for every method, encoded once
    for name in report_methods(report):
        stopping.check(f"in stage report before the effects of {name}'s changes")
        mine = dict(comparisons[name])
        if validation:
            arrays = evaluate.load_arrays(run, name, validation.name)
            if zeroshot_validation is None:
                zeroshot_validation = Embeddings(arrays["zeroshot_embeddings"], frozen_sae, local)
            tuned = Embeddings(arrays["finetuned_embeddings"], frozen_sae, local)
            mine[validation.name] = Comparison(
                zeroshot_validation, tuned, arrays["labels"], len(validation.classnames), arrays["indices"]
            )
        head = finetune.finetuned_head(run, name)
        scorers = {
            d: Scorer(
                head if specs[d].label_space == train_space else own_heads[specs[d].label_space], specs[d].project
            )
            for d in mine
        }
        method = MethodComparison(mine, scorers, report_datasets(report)[0], run.config.report)
        report["runs"][name].update(run_method_analyses(names, method))


def _effect_names(report: dict[str, Any], frozen_sae: FrozenSAE, vocabulary) -> dict[int, list[tuple[str, float]]]:
    """The nearest vocabulary entries of every feature whose change some method's `feature_effects` measured."""
    features = sorted({e["feature"] for run in report["runs"].values() for e in run.get("feature_effects", [])})
    text_names, text = vocabulary
    return interpret.name_features(np.asarray(frozen_sae.params["W_dec"]), text, text_names, features)


def _browser(
    run: Run, report: dict[str, Any], comparisons: dict[str, dict[str, Comparison]], frozen_sae: FrozenSAE, vocabulary
) -> dict[str, Any]:
    """The feature browser's cards, on the first dataset's images (in distribution when there is one)."""
    cfg, dataset = run.config.report, report_datasets(report)[0]
    changes = {m: {d: c.changes for d, c in by_dataset.items()} for m, by_dataset in comparisons.items()}
    features, changed = browser.changed_features(changes, cfg.browser_features)
    text_names, text = vocabulary
    names = interpret.name_features(np.asarray(frozen_sae.params["W_dec"]), text, text_names, features)
    here = {m: by_dataset[dataset] for m, by_dataset in comparisons.items()}
    codes = {"zeroshot": next(iter(here.values())).zeroshot.codes, **{m: c.finetuned.codes for m, c in here.items()}}
    spec = run.spec(dataset)
    effects = {m: report["runs"][m]["feature_effects"] for m in comparisons if "feature_effects" in report["runs"][m]}
    cards = browser.feature_cards(
        codes,
        changes,
        dataset,
        spec.classnames,
        names,
        features,
        dict_size=frozen_sae.dict_size,
        images=cfg.browser_images,
        effects=effects,
        ood=report["ood_datasets"],
    )
    source, indices = run.source(spec), next(iter(here.values())).indices
    for view in (view for card in cards for view in card["models"].values()):
        view["examples"] = [int(indices[row]) for row in view.pop("rows")]  # rows differ by run, examples do not
    examples = sorted({e for card in cards for view in card["models"].values() for e in view["examples"]})
    images = {e: thumbnail(source[e]["image"]) for e in examples}
    sae_name = report["report_sae"]
    digest = run.done(sae.STAGE, sae_name)["files"][sae.PARAMS_FILE]
    return browser_data(sae_name, digest, dataset, report_methods(report), changed, cards, images)


def _explain(run: Run, spec, comparison: Comparison, vocabulary, indices: np.ndarray) -> dict[str, Any]:
    cfg = run.config.report
    names, text = vocabulary
    detail = interpret.explain(
        comparison.changes,
        comparison.zeroshot.codes,
        comparison.finetuned.codes,
        np.asarray(comparison.zeroshot.sae.params["W_dec"]),
        text,
        names,
        spec.classnames,
        top_features=cfg.top_features,
        images_per_feature=cfg.images_per_feature,
        classes_shown=cfg.classes_shown,
    )
    return {"dataset": spec.name, "source_indices": indices, **detail}


def _feature_grids(run: Run, details: dict[str, Any], directory) -> dict[str, str]:
    """One PNG per method: the top-activating images of its most gained and lost features."""
    figures = {}
    for name, detail in details["runs"].items():
        source = run.source(run.spec(detail["dataset"]))
        rows = [
            (
                f"{label} #{e['feature']} ({e['names'][0][0]}): {e['images']} imgs",
                [source[int(detail["source_indices"][i])]["image"] for i in e["top_rows"]],
            )
            for label in ("gained", "lost")
            for e in detail[label]
        ]
        if rows:
            file = f"features_{name}.png"
            plots.image_grid(rows, directory / file, columns=run.config.report.images_per_feature)
            figures[f"features_{name}"] = file
    return figures
