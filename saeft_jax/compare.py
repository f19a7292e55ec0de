"""`python -m saeft_jax.compare WORKDIR... --out DIR`: one report from several runs, their
methods side by side (`report.md`, `report.json`, the PNGs, and `report.html` with the feature
browser: one browser per SAE, the methods of every run that used it on one card per feature).

The runs must share the model, the suite (in-distribution set and shifts) and the validation
split (for `finetune.val_fraction`, the same fraction and seed), and give the same zero-shot
scores: otherwise their numbers are not comparable, and the command stops with one paragraph
saying what differs (exit code 2). A method keeps its name, or becomes `<run>/<name>` when two
runs use the same name.
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
from saeft_jax.rendering.html import render_html
from saeft_jax.rendering.markdown import render_comparison, report_methods
from saeft_jax.stages import completion
from saeft_jax.stages.report import BROWSER_FILE

SHARED = ("model", "id_dataset", "ood_datasets", "validation", "held_out", "dataset_metrics")


def _read_json(path: epath.Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """The JSON object in `path`, which must match the size and hash the report stage recorded for
    it (when its completion mark lists it) and hold `keys`; otherwise a usage error naming the file."""
    recorded = _recorded_digests(path.parent).get(path.name)
    data = None
    if recorded is not None and storage.digest(path) != recorded:
        problem = "it does not match the size and SHA-256 its report stage recorded"
    else:
        try:
            data = json.loads(path.read_bytes())
        except ValueError as error:  # also bytes that are not UTF-8
            problem = f"{type(error).__name__}: {error}"
        else:
            missing = [key for key in keys if key not in data] if isinstance(data, dict) else list(keys)
            problem = f"it lacks {', '.join(missing)}" if missing else None
    if problem:
        raise UsageError(f"{path} is damaged ({problem}); delete that run's report/ and rerun its pipeline.")
    return data


def _recorded_digests(directory: epath.Path) -> dict[str, Any]:
    """{file: its size and hash} from the completion mark in `directory` ({} without a readable one)."""
    files = (completion.read_record(directory.parent, (directory.name,)) or {}).get("files")
    return files if isinstance(files, dict) else {}


def read_report(workdir: str) -> dict[str, Any]:
    path = storage.path(workdir) / "report" / "report.json"
    if not path.exists():
        raise UsageError(f"{workdir} holds no report ({path} is missing); run its pipeline to the end first.")
    return _read_json(path, ("runs",))


def read_browser(workdir: str, report: dict[str, Any]) -> dict[str, Any] | None:
    """A run's feature browser data (None for a run without an SAE, or whose report predates the
    browser: compare then says so)."""
    path = storage.path(workdir) / "report" / BROWSER_FILE
    if not report.get("sae"):
        return None
    if not path.exists():
        print(f"note: {workdir} has no feature browser ({path} is missing: its report was made before report.html "
              f"existed); delete its report/ and rerun its pipeline to add its features.", file=sys.stderr)
        return None
    return _read_json(path, ("sae_digest", "dataset", "methods", "changed", "cards", "images"))


def merge_browsers(browsers: dict[str, dict[str, Any] | None], names: dict[str, dict[str, str]]) -> list[dict]:
    """One browser per SAE (the same weights, read on the same dataset): the cards of the runs
    that used it merged feature by feature, their methods renamed as in the merged report."""
    groups: dict[str, dict[str, Any]] = {}
    for run, data in browsers.items():
        if data is None:
            continue
        key = json.dumps([data["sae_digest"], data["dataset"]])
        rename = names[run]
        group = groups.setdefault(key, {**data, "methods": [], "cards": [], "images": {}, "changed": 0, "runs": []})
        group["runs"].append(run)
        group["methods"] += [rename[m] for m in data["methods"]]
        group["images"].update(data["images"])
        capped = len(data["cards"]) < data["changed"]
        group["changed"] = None if capped or group["changed"] is None else group["changed"]
        by_feature = {card["feature"]: card for card in group["cards"]}
        for card in data["cards"]:
            merged = by_feature.setdefault(card["feature"], {**card, "models": {"zeroshot": card["models"]["zeroshot"]},
                                                             "methods": {}})
            merged["models"].update({rename[m]: v for m, v in card["models"].items() if m != "zeroshot"})
            merged["methods"].update({rename[m]: v for m, v in card["methods"].items()})
        group["cards"] = list(by_feature.values())
    for group in groups.values():
        if group["changed"] is not None:
            group["changed"] = len(group["cards"])
        group["cards"].sort(key=lambda card: -sum(m["added"] + m["removed"] for m in card["methods"].values()))
    return list(groups.values())


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
    merged["reference_dataset_metrics"] = first.get("reference_dataset_metrics")  # those of the shared metrics
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
    reports = {label: read_report(w) for label, w in zip(labels, workdirs)}
    merged, sources = merge(reports)
    browsers = {label: read_browser(w, reports[label]) for label, w in zip(labels, workdirs)}
    names = {label: dict(zip(report_methods(reports[label]), sources[label])) for label in labels}
    directory = storage.path(out)
    directory.mkdir(parents=True, exist_ok=True)
    figures = report_figures(merged, directory)
    text = render_comparison(sources, merged, figures)
    storage.write_atomic(directory / "report.json", json.dumps(merged, indent=1))
    storage.write_atomic(directory / "report.md", text)
    storage.write_atomic(directory / "report.html",
                         render_html("SAE-FT comparison", text, directory, merge_browsers(browsers, names)))
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
