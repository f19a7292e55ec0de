"""report.md: what was run, the numbers, the pictures, what changed, in that order, readable
without any other file."""

from __future__ import annotations

from typing import Any

import jax

from saeft_jax.data.registry import dataset_spec

METRIC_NAMES = {"top1": "top-1 accuracy", "macro_f1": "macro-F1 (classes present)",
                "worst_group": "worst-group accuracy"}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _num(value: float | None, digits: int) -> str:
    """`value` with `digits` decimals; "n/a" when the analysis giving it did not run."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def report_datasets(report: dict[str, Any]) -> list[str]:
    """The report's datasets, in-distribution first."""
    return ([report["id_dataset"]] if report["id_dataset"] else []) + report["ood_datasets"]


def report_methods(report: dict[str, Any]) -> list[str]:
    """The fine-tuning methods of the report (every run but zero-shot)."""
    return [m for m in report["runs"] if m != "zeroshot"]


def best_mix(run: dict[str, Any], id_dataset: str | None) -> tuple[str, dict[str, Any]]:
    """(alpha, its scores) of the WiSE-FT mix with the highest ID + average OOD."""
    return max(run["wise"].items(), key=lambda item: (item[1]["avg_ood"] or 0) + item[1]["metrics"].get(id_dataset, 0))


def render_markdown(config, report: dict[str, Any], details: dict[str, Any], figures: dict[str, str]) -> str:
    """The whole report as Markdown; `details` holds each method's `labels` line and the feature
    explanations (`runs`), `figures` the PNG file of each picture."""
    return "\n".join(_what(config, report, details["labels"]) + _numbers(report) + _pictures(figures) +
                     _changed(report, details, figures)) + "\n"


def _what(config, report, labels: dict[str, str]) -> list[str]:
    methods = report_methods(report)
    ft = config.finetune
    steps = report["runs"][methods[0]]["train"]["steps"] if methods else 0
    lines = ["# SAE-FT report", "", "## What was run", "",
             f"- **Model:** `{report['model']}` ({config.dtype} compute), fine-tuned image encoder + "
             f"zero-shot-initialised head.",
             f"- **Fine-tuning data:** `{config.train_dataset}`; **evaluation suite:** `{config.eval_suite}` "
             f"(in distribution: `{report['id_dataset']}`; shifts: "
             + ", ".join(f"`{d}`" for d in report["ood_datasets"]) + ").",
             "- **Methods:** " + ", ".join(labels[m] for m in methods)
             + f"; {steps} steps of batch {ft.batch_size}, lr {ft.lr:g}, warmup {ft.warmup_steps}, "
             f"weight decay {ft.weight_decay:g}.",
             f"- **Hardware:** {jax.process_count()} process(es), {jax.device_count()} "
             f"{jax.devices()[0].platform} device(s)."]
    if report["sae"]:
        sae = report["sae"]
        relu = ", ReLU after Top-K" if sae.get("relu") else ""
        lines.append(f"- **SAE:** dictionary {sae.get('dict_size', config.sae.dict_size)}, k "
                     f"{sae.get('k', config.sae.k)}{relu}; on the training features FVU {sae['fvu']:.3f}, L0 "
                     f"{sae['l0']:.1f}, dead latents {100 * sae['dead_fraction']:.1f}%.")
    raw = [m for m in methods if report["runs"][m]["method"].get("reference_raw_inputs")]
    if raw:
        lines.append("- **Raw SAE inputs:** " + ", ".join(f"`{m}`" for m in raw) + " fed the SAE raw (unnormalised) "
                     "embeddings, reproducing the reference code without `--normalize`, although the SAE was "
                     "trained on unit-norm ones; the analyses below give the SAE unit-norm embeddings, as trained, "
                     "so they read other codes than those penalties did.")
    return lines + [""]


def _numbers(report) -> list[str]:
    methods = report_methods(report)
    datasets = report_datasets(report)
    header = ["dataset (metric)", "zero-shot", *methods, *(f"{m}: best WiSE mix" for m in methods)]
    best = {m: best_mix(report["runs"][m], report["id_dataset"]) for m in methods}
    lines = ["## Results", "", "Scores in percent; WiSE-FT mixes the zero-shot and fine-tuned weights, "
             "theta(a) = (1 - a) theta_0 + a theta_ft; the best mix maximises ID + average OOD.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for d in datasets:
        metric = METRIC_NAMES.get(dataset_spec(d).metric, dataset_spec(d).metric)
        tag = " (ID)" if d == report["id_dataset"] else ""
        cells = [f"{d}{tag}, {metric}", _pct(report["runs"]["zeroshot"]["metrics"][d]),
                 *(_pct(report["runs"][m]["metrics"][d]) for m in methods),
                 *(f"{_pct(best[m][1]['metrics'][d])} (a={best[m][0]})" for m in methods)]
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["**average OOD**", _pct(report["runs"]["zeroshot"]["avg_ood"]),
             *(_pct(report["runs"][m]["avg_ood"]) for m in methods),
             *(f"{_pct(best[m][1]['avg_ood'])} (a={best[m][0]})" for m in methods)]
    return lines + ["| " + " | ".join(cells) + " |", ""]


def _pictures(figures) -> list[str]:
    lines = ["## Pictures", ""]
    if "wise" in figures:
        lines += ["ID against average OOD along each method's WiSE-FT sweep (star: zero-shot; square: fine-tuned):",
                  "", f"![WiSE-FT sweep]({figures['wise']})", ""]
    if "datasets" in figures:
        lines += ["Every dataset for zero-shot, each method and its best mix:", "",
                  f"![per dataset]({figures['datasets']})", ""]
    return lines


def _changed(report, details, figures) -> list[str]:
    methods = report_methods(report)
    if not report["sae"]:
        return ["## What changed", "", "No SAE was trained in this run, so there is no feature-level account.", ""]
    id_name = report["id_dataset"] or report["ood_datasets"][0]
    lines = ["## What changed", "",
             f"In the SAE's vocabulary, on `{id_name}`: a feature is *added* to an image when the fine-tuned "
             f"embedding's top-k codes hold it and the zero-shot one's do not, *removed* in the converse case. "
             f"SAE FVU on the fine-tuned embeddings measures how well the zero-shot dictionary still explains them "
             f"(zero-shot in brackets); CKA compares the two representations over the images (1: same geometry).",
             "", "| method | ID | avg OOD | added / image | removed / image | SAE FVU | CKA |",
             "|---|---|---|---|---|---|---|"]
    for m in methods:
        c, run = report["runs"][m]["changes_by_dataset"][id_name], report["runs"][m]
        fvu = f"{_num(c.get('sae_fvu'), 3)} ({_num(c.get('sae_fvu_zeroshot'), 3)})"
        lines.append(f"| {m} | {_pct(run['metrics'].get(id_name))} | {_pct(run['avg_ood'])} | "
                     f"{_num(c.get('added_per_image'), 2)} | {_num(c.get('removed_per_image'), 2)} | {fvu} | "
                     f"{_num(c.get('cka'), 3)} |")
    lines += ["", _reading(report, methods, id_name), ""]
    for m in methods:
        lines += _method_details(m, details["runs"].get(m), figures)
    return lines


def _reading(report, methods, id_name) -> str:
    zs = report["runs"]["zeroshot"]
    parts = []
    for m in methods:
        run, c = report["runs"][m], report["runs"][m]["changes"]
        part = (f"`{m}` moves ID by {100 * (run['metrics'][id_name] - zs['metrics'][id_name]):+.1f} points and "
                f"average OOD by {100 * ((run['avg_ood'] or 0) - (zs['avg_ood'] or 0)):+.1f}")
        if "added_per_image" in c:
            part += (f", adding {c['added_per_image']:.2f} and removing {c['removed_per_image']:.2f} features "
                     f"per image")
        parts.append(part)
    return "**Reading.** " + "; ".join(parts) + "."


def _method_details(method, detail, figures) -> list[str]:
    if not detail:
        return []
    def describe(entries):
        return [f"- #{e['feature']} in {e['images']} images (mean activation change {e['mean_change']:+.3f}): "
                + ", ".join(f"{name} ({cos:.2f})" for name, cos in e["names"]) for e in entries] or ["- none"]
    lines = [f"### `{method}`", "", "Features most often gained (nearest text entries, cosine; the mean change of the "
             "feature's activation over all images):", "",
             *describe(detail["gained"]), "", "Features most often lost:", "", *describe(detail["lost"]), ""]
    if f"features_{method}" in figures:
        lines += ["Top-activating test images of each (gained: fine-tuned codes; lost: zero-shot codes):", "",
                  f"![features of {method}]({figures[f'features_{method}']})", ""]
    lines += ["Classes with the most change:", "", "| class | images | added / image | removed / image | "
              "most gained | most lost |", "|---|---|---|---|---|---|"]
    for row in detail["per_class"]:
        gained = ", ".join(f"#{f} ({n})" for f, n in row["top_added"]) or "-"
        lost = ", ".join(f"#{f} ({n})" for f, n in row["top_removed"]) or "-"
        lines.append(f"| {row['class']} | {row['images']} | {row['added_per_image']:.2f} | "
                     f"{row['removed_per_image']:.2f} | {gained} | {lost} |")
    return lines + [""]
