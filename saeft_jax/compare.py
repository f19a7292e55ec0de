"""`python -m saeft_jax.compare WORKDIR... --out DIR`: one report from several runs, their
methods side by side (`report.md`, `report.json`, the PNGs).

The runs must share the model, the suite (in-distribution set and shifts) and the validation
split (for `finetune.val_fraction`, the same fraction and seed), and give the same zero-shot scores: otherwise their numbers are not comparable, and the
command stops with one paragraph saying what differs (exit code 2). A method keeps its name, or
becomes `<run>/<name>` when two runs use the same name.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from etils import epath

from saeft_jax import storage
from saeft_jax.errors import UsageError
from saeft_jax.rendering.figures import report_figures
from saeft_jax.rendering.markdown import render_comparison, report_methods

SHARED = ("model", "id_dataset", "ood_datasets", "validation", "held_out", "dataset_metrics")


def read_report(workdir: str) -> dict[str, Any]:
    path = storage.path(workdir) / "report" / "report.json"
    if not path.exists():
        raise UsageError(f"{workdir} holds no report ({path} is missing); run its pipeline to the end first.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UsageError(f"{path} is damaged ({error}); rerun that run's report stage.") from error


def merge(reports: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """(the merged report, {run: its methods as named in the merge})."""
    (first_name, first), *others = reports.items()
    for name, report in others:
        differ = [key for key in SHARED if report.get(key) != first.get(key)]
        if differ:
            raise UsageError(f"{name} and {first_name} differ in {', '.join(differ)} ("
                             + "; ".join(f"{key}: {report.get(key)!r} vs {first.get(key)!r}" for key in differ)
                             + "); only runs of the same model, suite and validation split compare.")
        if report["runs"]["zeroshot"]["metrics"] != first["runs"]["zeroshot"]["metrics"]:
            raise UsageError(f"{name} and {first_name} give different zero-shot scores, so they did not see the same "
                             f"data the same way (data, preprocessing or versions differ); they do not compare.")
    counts: dict[str, int] = {}
    for report in reports.values():
        for method in report_methods(report):
            counts[method] = counts.get(method, 0) + 1
    merged = {key: first.get(key) for key in SHARED}
    merged["sae"], merged["runs"], sources = first.get("sae"), {"zeroshot": first["runs"]["zeroshot"]}, {}
    for name, report in reports.items():
        named = {m: (m if counts[m] == 1 else f"{name}/{m}") for m in report_methods(report)}
        merged["runs"].update({named[m]: report["runs"][m] for m in named})
        sources[name] = list(named.values())
    return merged, sources


def compare(workdirs: list[str], out: str) -> epath.Path:
    """Writes the comparison of `workdirs` into `out`; returns the Markdown file."""
    places = [str(_resolved(w)) for w in workdirs]
    repeated = sorted({w for w, place in zip(workdirs, places) if places.count(place) > 1})
    if repeated:
        raise UsageError(f"{', '.join(repeated)} given more than once (as the same directory); name each run once.")
    labels = [storage.path(w).name or str(w) for w in workdirs]
    if len(set(labels)) != len(labels):
        labels = [str(w) for w in workdirs]
    merged, sources = merge({label: read_report(w) for label, w in zip(labels, workdirs)})
    directory = storage.path(out)
    directory.mkdir(parents=True, exist_ok=True)
    figures = report_figures(merged, directory)
    storage.write_atomic(directory / "report.json", json.dumps(merged, indent=1))
    storage.write_atomic(directory / "report.md", render_comparison(sources, merged, figures))
    return directory / "report.md"


def _resolved(workdir: str) -> epath.Path:
    path = storage.path(workdir)
    return path if storage.is_remote(path) else epath.Path(path.resolve())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m saeft_jax.compare", description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+", help="finished runs' workdirs (local or gs://)")
    parser.add_argument("--out", required=True, help="where the comparison goes")
    args = parser.parse_args(argv)
    try:
        path = compare(args.workdirs, args.out)
    except UsageError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(f"done: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
