"""report.md: what was run, the numbers, the pictures, what changed, in that order, readable
without any other file.

It reads only JSON: report.json's content and what the report stage passes beside it (the run's
setup, the methods' labels, the recipes' descriptions, and the `legend`: the metrics' labels and
the analyses' declared columns), so a comparison of finished runs renders the same way.
"""

from __future__ import annotations

import math
import string
from typing import Any


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def report_datasets(report: dict[str, Any]) -> list[str]:
    """The report's datasets, in-distribution first."""
    return ([report["id_dataset"]] if report["id_dataset"] else []) + report["ood_datasets"]


def report_methods(report: dict[str, Any]) -> list[str]:
    """The fine-tuning methods of the report (every run but zero-shot)."""
    return [m for m in report["runs"] if m != "zeroshot"]


def selected_alpha(run: dict[str, Any]) -> str:
    """The name (a key of its `wise` sweep) of the WiSE-FT alpha selected for method entry `run`."""
    return next(key for key in run["wise"] if float(key) == run["selection"]["alpha"])


def render_markdown(report: dict[str, Any], details: dict[str, Any], figures: dict[str, str]) -> str:
    """The whole report as Markdown. `details` holds what report.json does not: the run's `setup`
    (dtype, data, suite, fine-tuning settings, processes and devices), each method's `labels` line,
    the `recipes`' descriptions, each complete SAE's line as its kind words it (`saes`: {name: {label,
    summary}}), the `legend` (metrics' labels, analyses' columns), the feature
    explanations (`runs`) and the names of the features whose changes were measured (`names`);
    `figures` the PNG file of each picture."""
    legend = details["legend"]
    return (
        "\n".join(
            _what(report, details)
            + _numbers(report, legend)
            + _reference_numbers(report, legend)
            + _pictures(figures)
            + _changed(report, details, figures)
        )
        + "\n"
    )


def _trained(report, methods: list[str], recipes: dict[str, str]) -> str:
    """What the methods trained, by recipe (`recipes`: each one's description)."""
    used = {report["runs"][m]["method"]["recipe"] for m in methods if "checkpoint" not in report["runs"][m]["method"]}
    if not used:
        return "every method imported from a checkpoint (nothing trained here)"
    return "trained by recipe: " + "; ".join(f"`{r}`, {recipes[r]}" for r in sorted(used))


def _what(report, details) -> list[str]:
    methods, setup, labels = report_methods(report), details["setup"], details["labels"]
    steps = max((report["runs"][m]["train"]["steps"] for m in methods), default=0)  # imported ones have none
    lines = [
        "# SAE-FT report",
        "",
        "## What was run",
        "",
        f"- **Model:** `{report['model']}` ({setup['dtype']} compute), "
        f"{_trained(report, methods, details['recipes'])}.",
        f"- **Fine-tuning data:** `{setup['train_dataset']}`; **evaluation suite:** `{setup['eval_suite']}` "
        f"(in distribution: `{report['id_dataset']}`; {_shifts(report)}).",
        "- **Methods:** "
        + ", ".join(labels[m] for m in methods)
        + f"; {steps} steps of batch {setup['batch_size']}, lr {setup['lr']:g}, warmup {setup['warmup_steps']}, "
        f"weight decay {setup['weight_decay']:g}.",
        f"- **Hardware:** {setup['processes']} process(es), {setup['devices']} {setup['platform']} device(s).",
    ]
    lines += [_checkpoint(m, report["runs"][m]["checkpoint"]) for m in methods if "checkpoint" in report["runs"][m]]
    saes = details["saes"]
    for name, sae in saes.items():
        role = " (the vocabulary of the analyses below)" if name == report.get("report_sae") and len(saes) > 1 else ""
        lines.append(f"- **{sae['label']} `{name}`{role}:** {sae['summary']}")
    raw = [m for m in methods if report["runs"][m]["method"].get("reference_raw_inputs")]
    if raw:
        lines.append(
            "- **Raw SAE inputs:** " + ", ".join(f"`{m}`" for m in raw) + " fed the SAE raw (unnormalised) "
            "embeddings, reproducing the reference code without `--normalize`, although the SAE was "
            "trained on unit-norm ones; the analyses below give the SAE unit-norm embeddings, as trained, "
            "so they read other codes than those penalties did."
        )
    return lines + [""]


def _checkpoint(method: str, checkpoint: dict[str, Any]) -> str:
    """Which fine-tuning step is method `method`'s model, and its validation curve."""
    score = "not scored there" if checkpoint["score"] is None else f"{_pct(checkpoint['score'])}% there"
    why = "the best on" if checkpoint["rule"] == "best_val" else "the last step; scored on"
    curve = ", ".join(f"{step}: {_pct(value)}" for step, value in checkpoint["curve"])
    return (
        f"- **Checkpoint of `{method}`:** step {checkpoint['step']}, {why} the validation split "
        f"`{checkpoint['split']}` ({score}; ties go to the earlier step). Validation curve, step: %: {curve}."
    )


def _numbers(report, legend) -> list[str]:
    """One row per model (zero-shot; each method; its mix selected on validation; its mix at 0.5),
    one column per dataset."""
    methods, datasets, validation = report_methods(report), report_datasets(report), report.get("validation")
    average = ["average OOD"] if report["ood_datasets"] else []  # a suite without shifts has none
    header = ["model", *(f"{d}{' (ID)' if d == report['id_dataset'] else ''}" for d in datasets), *average]
    metrics = sorted({legend["metrics"].get(m, m) for m in report["dataset_metrics"].values()})
    fixed = any("fixed_alpha" in report["runs"][m] for m in methods)
    how = (
        f"the *selected* mix is the alpha with the best score on the validation split `{validation}` (no test "
        f"set is looked at)"
        if validation
        else "no validation split is configured (`finetune.val_dataset` or `finetune.val_fraction`), so no alpha is "
        "selected"
    )
    how += "; the *fixed* mix is the WiSE-FT papers' alpha 0.5" if fixed else " (0.5 is not among evaluate.alphas)"
    lines = [
        "## Results",
        "",
        f"Scores in percent ({', '.join(metrics)}); WiSE-FT mixes the zero-shot and fine-tuned "
        f"weights, theta(a) = (1 - a) theta_0 + a theta_ft; {how}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]

    def row(label: str, scores: dict[str, Any]) -> str:
        cells = [label, *(_pct(scores["metrics"][d]) for d in datasets)]
        cells += [_pct(scores["avg_ood"])] if average else []
        return "| " + " | ".join(cells) + " |"

    lines.append(row("zero-shot", report["runs"]["zeroshot"]))
    for m in methods:
        run = report["runs"][m]
        lines.append(row(f"`{m}`", run))
        if "selection" in run:
            choice = run["selection"]
            lines.append(
                row(f"`{m}`, selected a={selected_alpha(run)} (validation {_pct(choice['score'])})", run["selected"])
            )
        if "fixed_alpha" in run:
            lines.append(row(f"`{m}`, fixed a=0.5", run["fixed_alpha"]))
    return lines + [""]


def _reference_numbers(report, legend) -> list[str]:
    """The datasets whose metric the reference's evaluation defines otherwise, by its definition
    (WILDS's stay the primary figures above): one row per model and mix, as in the results."""
    defined = report.get("reference_dataset_metrics") or {}
    if not defined:
        return []
    datasets = [d for d in report_datasets(report) if d in defined]
    names = "; ".join(f"`{d}`: {legend['metrics'].get(defined[d], defined[d])}" for d in datasets)
    lines = [
        (
            "The same models scored by the reference's definitions (Fabian-Mor/sae-ft `src/testing_models.py`; "
            f"to compare with numbers it reports; the table above is WILDS's): {names}."
        ),
        "",
        "| model | " + " | ".join(f"{d} (reference's)" for d in datasets) + " |",
        "|" + "---|" * (len(datasets) + 1),
    ]

    def row(label: str, scores: dict[str, Any]) -> str:
        return "| " + " | ".join([label, *(_pct(scores.get("reference_metrics", {}).get(d)) for d in datasets)]) + " |"

    lines.append(row("zero-shot", report["runs"]["zeroshot"]))
    for m in report_methods(report):
        run = report["runs"][m]
        lines.append(row(f"`{m}`", run))
        if "selection" in run:
            lines.append(row(f"`{m}`, selected a={selected_alpha(run)}", run["selected"]))
        if "fixed_alpha" in run:
            lines.append(row(f"`{m}`, fixed a=0.5", run["fixed_alpha"]))
    return lines + [""]


def _pictures(figures) -> list[str]:
    lines = ["## Pictures", ""]
    if "wise" in figures:
        lines += [
            "ID against average OOD along each method's WiSE-FT sweep (star: zero-shot; square: fine-tuned; "
            "ring: the alpha selected on validation), on linear and on logit axes, then per shift:",
            "",
            f"![WiSE-FT sweep]({figures['wise']}) ![WiSE-FT sweep, logit axes]({figures['wise_logit']})",
            "",
            f"![WiSE-FT sweep per shift]({figures['wise_shifts']})",
            "",
        ]
    if "datasets" in figures:
        lines += [
            "Every dataset for zero-shot, each method and its selected mix:",
            "",
            f"![per dataset]({figures['datasets']})",
            "",
        ]
    return lines


def _changed(report, details, figures) -> list[str]:
    methods = report_methods(report)
    if not report["sae"]:
        return ["## What changed", "", "No SAE was trained in this run, so there is no feature-level account.", ""]
    id_name = report["id_dataset"] or report["ood_datasets"][0]
    lines = _changes_table(report, methods, id_name, details["legend"]["columns"])
    lines += ["", _reading(report, methods, id_name), ""]
    for m in methods:
        lines += _method_details(m, details["runs"].get(m), figures)
    return lines + _effects(report, methods, id_name, details.get("names", {}))


EFFECTS_SHOWN = 5  # rows per table of the changes that matter most


def ood_effect(effects: dict[str, float], ood: list[str]) -> float | None:
    """The mean of `effects` over the shifts `ood` (None without shifts)."""
    return sum(effects[d] for d in ood) / len(ood) if ood else None


def _effects(report, methods, id_name, names: dict[int, list]) -> list[str]:
    """Per method: the measured changes whose undoing raises average OOD accuracy most (the costliest
    for robustness), those whose undoing lowers ID accuracy most (the most useful), and undoing all
    added, all removed and both; `names` holds each measured feature's nearest text entries."""
    measured = [m for m in methods if report["runs"][m].get("feature_effects")]
    if not measured:
        return []
    ood, validation = report["ood_datasets"], report.get("validation")
    zeroshot_ood = report["runs"]["zeroshot"]["avg_ood"]
    columns = [id_name, *ood, *([validation] if validation else [])]
    lines = [
        "## Which changes matter",
        "",
        f"Each of a method's most frequent feature changes on `{id_name}`, undone alone on the images it "
        "happened on: in the SAE's input space the embedding moves by (s0_j - st_j) W_dec[j] and the method's "
        "head classifies it again (a first-order counterfactual, not a retraining). The figures are the change "
        "in top-1 accuracy, in points, when the change is undone: positive, the change cost that much; "
        "negative, it bought that much. Images: those of `" + id_name + "` it happened on.",
        "",
    ]
    header = [
        "change",
        "names",
        "images",
        *(f"{d}{' (ID)' if d == id_name else ''}" for d in columns),
        *(["average OOD"] if ood else []),
    ]
    for m in measured:
        run = report["runs"][m]

        def row(entry) -> str:
            nearest = ", ".join(name for name, _ in names.get(entry["feature"], [])[:2])
            cells = [
                f"#{entry['feature']} {entry['change']}",
                nearest,
                str(entry["images"][id_name]),
                *(f"{100 * entry['effects'][d]:+.1f}" for d in columns),
            ]
            cells += [f"{100 * ood_effect(entry['effects'], ood):+.1f}"] if ood else []
            return "| " + " | ".join(cells) + " |"

        table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += [f"### `{m}`", ""]
        if ood:
            costly = sorted(
                (e for e in run["feature_effects"] if ood_effect(e["effects"], ood) > 0),
                key=lambda e: -ood_effect(e["effects"], ood),
            )[:EFFECTS_SHOWN]
            lines += ["Costliest for robustness (undoing them raises average OOD accuracy most):", ""]
            lines += [*table, *map(row, costly), ""] if costly else ["- none of the measured changes", ""]
        useful = sorted(
            (e for e in run["feature_effects"] if e["effects"][id_name] < 0), key=lambda e: e["effects"][id_name]
        )[:EFFECTS_SHOWN]
        lines += ["Most useful in distribution (undoing them lowers ID accuracy most):", ""]
        lines += [*table, *map(row, useful), ""] if useful else ["- none of the measured changes", ""]
        together = run["undo_all"]
        parts = [
            f"{label}: ID {100 * together[kind][id_name]:+.1f}"
            + (f", average OOD {100 * ood_effect(together[kind], ood):+.1f}" if ood else "")
            for kind, label in (("added", "all added"), ("removed", "all removed"), ("both", "both"))
        ]
        moved = (
            f" (fine-tuning moved average OOD by {100 * (run['avg_ood'] - zeroshot_ood):+.1f})"
            if ood and run["avg_ood"] is not None
            else ""
        )
        lines += [
            f"Undoing every change of a kind at once (all images, all features), {'; '.join(parts)}{moved}; "
            "what undoing both leaves of fine-tuning's change is the part the dictionary cannot name.",
            "",
        ]
    return lines


def _changes_table(report, methods, id_name, columns: list[dict[str, str]]) -> list[str]:
    """Per method: its ID and average OOD scores, then every column the analyses declare
    (`legend["columns"]`: header, format string, and where the figures are)."""
    own = any(report["runs"][m].get("sae") for m in methods)  # a comparison of runs whose SAEs differ
    vocabulary = (
        "In the vocabulary of each row's own SAE (its run and name in the SAE column: the runs' SAEs "
        "differ, so feature counts compare only between rows of one SAE)"
        if own
        else "In the SAE's vocabulary"
    )
    lines = [
        "## What changed",
        "",
        f"{vocabulary}, on `{id_name}`: a feature is *added* to an image when the fine-tuned "
        f"embedding's top-k codes hold it and the zero-shot one's do not, *removed* in the converse case. "
        f"SAE FVU on the fine-tuned embeddings measures how well the zero-shot dictionary still explains them "
        f"(zero-shot in brackets); it is the squared reconstruction error per image over the embeddings' "
        f"variance per image, both shown, so a representation that contracts shows a high FVU at a low error. "
        f"CKA compares the two representations over the images (1: same geometry; in brackets the "
        f"reference's variant over the feature dimensions, which a rotation lowers).",
        "",
        "| method |" + (" SAE |" if own else "") + " ID | avg OOD |" + "".join(f" {c['header']} |" for c in columns),
        "|---|---|---|" + "---|" * len(columns) + ("---|" if own else ""),
    ]
    for m in methods:
        run = report["runs"][m]
        figures = {"dataset": run.get("changes_by_dataset", {}).get(id_name, {}), "method": run}
        sae = run.get("sae")
        named = f" {sae['run']}: `{sae['name']}` ({sae.get('dict_size')}, k {sae.get('k')}) |" if sae else " none |"
        cells = "".join(f" {_cell(c['format'], figures[c['scope']])} |" for c in columns)
        lines.append(
            f"| {m} |{named if own else ''} {_pct(run['metrics'].get(id_name))} | {_pct(run['avg_ood'])} |{cells}"
        )
    return lines


def _cell(template: str, figures: dict[str, Any]) -> str:
    """`template` (a format string) filled from `figures`; "n/a" for each figure they lack (the
    analysis giving it did not run)."""
    parts = []
    for literal, field, spec, _ in string.Formatter().parse(template):
        parts.append(literal)
        if field is not None:
            value = figures.get(field)
            parts.append("n/a" if value is None else format(value, spec))
    return "".join(parts)


def _shifts(report) -> str:
    """The suite's shifts, or that it has none (a transfer set's own suite)."""
    if not report["ood_datasets"]:
        return "no distribution shifts"
    return "shifts: " + ", ".join(f"`{d}`" for d in report["ood_datasets"])


def render_comparison(
    sources: dict[str, list[str]], report: dict[str, Any], figures: dict[str, str], legend: dict[str, Any]
) -> str:
    """The comparison of several runs as Markdown: which runs, the numbers, the pictures, and what
    changed, each method read in the vocabulary of its own run's SAE (`legend` as `render_markdown`'s)."""
    lines = [
        "# SAE-FT comparison",
        "",
        "## What was compared",
        "",
        f"- **Model:** `{report['model']}`; in distribution `{report['id_dataset']}`; {_shifts(report)}"
        + (f"; validation split `{report['validation']}`." if report.get("validation") else "."),
        *(f"- `{workdir}`: " + ", ".join(f"`{m}`" for m in methods) for workdir, methods in sources.items()),
        "",
    ]
    methods = report_methods(report)
    id_name = report["id_dataset"] or report["ood_datasets"][0]
    changed = any("changes" in report["runs"][m] for m in methods)
    changes = _changes_table(report, methods, id_name, legend["columns"]) if changed else []
    numbers = _numbers(report, legend) + _reference_numbers(report, legend)
    return "\n".join(lines + numbers + _pictures(figures) + changes) + "\n"


def _reading(report, methods, id_name) -> str:
    zs = report["runs"]["zeroshot"]
    parts = []
    for m in methods:
        run, c = report["runs"][m], report["runs"][m]["changes"]
        part = f"`{m}` moves ID by {100 * (run['metrics'][id_name] - zs['metrics'][id_name]):+.1f} points"
        if run["avg_ood"] is not None and zs["avg_ood"] is not None:  # a suite without shifts has no average
            part += f" and average OOD by {100 * (run['avg_ood'] - zs['avg_ood']):+.1f}"
        if "added_per_image" in c:
            part += f", adding {c['added_per_image']:.2f} and removing {c['removed_per_image']:.2f} features per image"
        parts.append(part)
    return "**Reading.** " + "; ".join(parts) + "." + _fvu_reading(report, methods, id_name)


def _fvu_reading(report, methods, id_name) -> str:
    """Which part of FVU moved for each method whose FVU rose: the error, or the variance."""
    sentences = []
    for m in methods:
        c = report["runs"][m].get("changes_by_dataset", {}).get(id_name, {})
        if not {"sae_fvu", "sae_error", "variance", "sae_error_zeroshot", "variance_zeroshot"} <= set(c):
            continue
        if c["sae_fvu"] <= 1.5 * c["sae_fvu_zeroshot"]:
            continue
        error, variance = c["sae_error"] / c["sae_error_zeroshot"], c["variance"] / c["variance_zeroshot"]
        grew, contracted = math.log(error), -math.log(variance)
        cause = (
            " mostly because the embeddings contracted"
            if contracted > 2 * grew
            else " mostly because the error grew"
            if grew > 2 * contracted
            else ""
        )
        codes = f"; the codes' L1 went from {c['code_l1_zeroshot']:.2f} to {c['code_l1']:.2f}" if "code_l1" in c else ""
        sentences.append(
            f"`{m}`'s FVU is {c['sae_fvu'] / c['sae_fvu_zeroshot']:.1f}x the zero-shot one{cause}: its "
            f"error per image is {error:.1f}x and its variance per image {variance:.2f}x the zero-shot "
            f"ones{codes}"
        )
    return (" " + "; ".join(sentences) + ".") if sentences else ""


def _method_details(method, detail, figures) -> list[str]:
    if not detail:
        return []

    def describe(entries):
        return [
            f"- #{e['feature']} in {e['images']} images (mean activation change {e['mean_change']:+.3f}): "
            + ", ".join(f"{name} ({cos:.2f})" for name, cos in e["names"])
            for e in entries
        ] or ["- none"]

    lines = [
        f"### `{method}`",
        "",
        "Features most often gained (nearest text entries, cosine; the mean change of the "
        "feature's activation over all images):",
        "",
        *describe(detail["gained"]),
        "",
        "Features most often lost:",
        "",
        *describe(detail["lost"]),
        "",
    ]
    if f"features_{method}" in figures:
        lines += [
            "Top-activating test images of each (gained: fine-tuned codes; lost: zero-shot codes):",
            "",
            f"![features of {method}]({figures[f'features_{method}']})",
            "",
        ]
    lines += [
        "Classes with the most change:",
        "",
        "| class | images | added / image | removed / image | most gained | most lost |",
        "|---|---|---|---|---|---|",
    ]
    for row in detail["per_class"]:
        gained = ", ".join(f"#{f} ({n})" for f, n in row["top_added"]) or "-"
        lost = ", ".join(f"#{f} ({n})" for f, n in row["top_removed"]) or "-"
        lines.append(
            f"| {row['class']} | {row['images']} | {row['added_per_image']:.2f} | "
            f"{row['removed_per_image']:.2f} | {gained} | {lost} |"
        )
    return lines + [""]
