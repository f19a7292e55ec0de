"""The report's standard pictures, drawn from a report.json dict (a run's or a comparison's)."""

from __future__ import annotations

from typing import Any

from saeft_jax.rendering import plots
from saeft_jax.rendering.markdown import report_datasets, report_methods, selected_alpha


def report_figures(report: dict[str, Any], directory) -> dict[str, str]:
    """Writes the report's pictures into `directory`; returns {name: file}: the WiSE-FT sweeps
    (ID against average OOD, on linear and logit axes, and per shift) and the per-dataset bars."""
    datasets, methods = report_datasets(report), report_methods(report)
    selected = {m: selected_alpha(report["runs"][m]) for m in methods if "selection" in report["runs"][m]}
    figures = {}
    if report["id_dataset"] and report["ood_datasets"] and methods:  # the sweeps plot ID against OOD

        def curves(score) -> plots.Curves:
            out = {}
            for method in methods:
                wise = report["runs"][method]["wise"]
                alphas = sorted(wise, key=float)
                out[method] = (
                    alphas,
                    [wise[a]["metrics"][report["id_dataset"]] for a in alphas],
                    [score(wise[a]) for a in alphas],
                )
            return out

        average = curves(lambda scores: scores["avg_ood"])
        plots.wise_curves(average, directory / "wise.png", id_name=report["id_dataset"], selected=selected)
        plots.wise_curves(
            average, directory / "wise_logit.png", id_name=report["id_dataset"], selected=selected, logit=True
        )
        per_shift = {
            shift: curves(lambda scores, shift=shift: scores["metrics"][shift]) for shift in report["ood_datasets"]
        }
        plots.wise_per_shift(per_shift, directory / "wise_shifts.png", id_name=report["id_dataset"], selected=selected)
        figures.update(wise="wise.png", wise_logit="wise_logit.png", wise_shifts="wise_shifts.png")
    series = {"zero-shot": [report["runs"]["zeroshot"]["metrics"][d] for d in datasets]}
    for method in methods:
        run = report["runs"][method]
        series[method] = [run["metrics"][d] for d in datasets]
        if "selected" in run:
            label = f"{method} a={selected_alpha(run)}"
            series[label] = [run["selected"]["metrics"][d] for d in datasets]
    plots.dataset_bars(datasets, series, directory / "datasets.png")
    figures["datasets"] = "datasets.png"
    return figures
