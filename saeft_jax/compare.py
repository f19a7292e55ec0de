"""`python -m saeft_jax.compare WORKDIR... --out DIR`: one report from several runs, their
methods side by side (`report.md`, `report.json`, the PNGs, and `report.html` with the feature
browser: one browser per SAE, the methods of every run that used it on one card per feature).

The runs must be finished (their report stage's completion mark), each named once (also through
a link), share the model, the suite (in-distribution set and shifts) and the validation split
(for `finetune.val_fraction`, the same fraction and seed), and give the same zero-shot scores:
otherwise their numbers are not comparable, and the command stops with one paragraph saying what
differs (exit code 2). Runs whose SAEs differ (other weights: another k, dictionary or seed) do
compare, but each method's row then names its own SAE (`runs.<method>.sae` in report.json, an SAE
column in report.md), and the merged report records no single `sae`. A method keeps its name,
or becomes `<run>/<name>` when two runs use the same name. `--out` must lie outside every
compared workdir, so that no finished report is overwritten; a bucket that does not answer
within `BUCKET_WAIT_S` seconds is named, as is every other place that cannot be read or written.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from etils import epath

from saeft_jax import stopping, storage
from saeft_jax.errors import UsageError, command_exit_code
from saeft_jax.rendering.figures import report_figures
from saeft_jax.rendering.html import render_html
from saeft_jax.rendering.markdown import render_comparison, report_methods
from saeft_jax.sae.artifact import PARAMS_FILE
from saeft_jax.stages import completion
from saeft_jax.stages.report import BROWSER_FILE, legend

SHARED = ("model", "id_dataset", "ood_datasets", "validation", "held_out", "dataset_metrics")
BUCKET_WAIT_S = 60.0  # how long one run in a bucket (or --out there) may take to answer before it is named


def _read_json(path: epath.Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """The JSON object in `path`, which must match the size and hash the report stage recorded for
    it (when its completion mark lists it) and hold `keys`; otherwise a usage error naming the file."""
    recorded = _recorded_digests(path.parent).get(path.name)
    data = None
    if not path.exists():
        problem = "it is missing"
    elif recorded is not None and storage.digest(path) != recorded:
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
    """A finished run's report.json: its report stage's completion mark must be there (a report
    without one may be half-written), and the file must match the hash that mark recorded."""
    directory = storage.path(workdir) / "report"
    if not (directory / "report.json").exists():
        raise UsageError(
            f"{workdir} holds no report ({directory / 'report.json'} is missing); run its pipeline to the end first."
        )
    if completion.read_record(directory.parent, (directory.name,)) is None:
        raise UsageError(
            f"the report stage of {workdir} has not finished ({directory / completion.DONE}, its "
            f"completion mark, is missing or damaged), so its report may be partial; rerun that run's "
            f"command to finish it, then compare."
        )
    return _read_json(directory / "report.json", ("runs",))


def read_sae(workdir: str, report: dict[str, Any]) -> dict[str, Any] | None:
    """The SAE a run's report reads its methods in: its name, shape and quality (report.json) and
    the size and SHA-256 of its weights (its sae stage's mark; None where the run has none); None
    for a run without an SAE."""
    if not report.get("sae"):
        return None
    name = report.get("report_sae")
    record = completion.read_record(storage.path(workdir), ("sae", name)) if name else None
    weights = ((record or {}).get("files") or {}).get(PARAMS_FILE)
    return {"name": name, **report["sae"], "weights": weights}


def read_browser(workdir: str, report: dict[str, Any]) -> dict[str, Any] | None:
    """A run's feature browser data (None for a run without an SAE)."""
    if not report.get("sae"):
        return None
    return _read_json(
        storage.path(workdir) / "report" / BROWSER_FILE,
        ("sae_digest", "dataset", "methods", "changed", "cards", "images"),
    )


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
            merged = by_feature.setdefault(
                card["feature"], {**card, "models": {"zeroshot": card["models"]["zeroshot"]}, "methods": {}}
            )
            merged["models"].update({rename[m]: v for m, v in card["models"].items() if m != "zeroshot"})
            merged["methods"].update({rename[m]: v for m, v in card["methods"].items()})
        group["cards"] = list(by_feature.values())
    for group in groups.values():
        if group["changed"] is not None:
            group["changed"] = len(group["cards"])
        group["cards"].sort(key=lambda card: -sum(m["added"] + m["removed"] for m in card["methods"].values()))
    return list(groups.values())


def merge(
    reports: dict[str, dict[str, Any]], saes: dict[str, dict[str, Any] | None] | None = None
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """(the merged report, {run: its methods as named in the merge}). With `saes` ({run: its SAE,
    `read_sae`}) that differ, each method's entry names its run's SAE and the merge has no `sae`."""
    (first_name, first), *others = reports.items()
    for name, report in others:
        differ = [key for key in SHARED if report.get(key) != first.get(key)]
        if differ:
            raise UsageError(
                f"{name} and {first_name} differ in {', '.join(differ)} ("
                + "; ".join(f"{key}: {report.get(key)!r} vs {first.get(key)!r}" for key in differ)
                + "); only runs of the same model, suite and validation split compare."
            )
        if report["runs"]["zeroshot"]["metrics"] != first["runs"]["zeroshot"]["metrics"]:
            raise UsageError(
                f"{name} and {first_name} give different zero-shot scores, so they did not see the same "
                f"data the same way (data, preprocessing or versions differ); they do not compare."
            )
    counts: dict[str, int] = {}
    for report in reports.values():
        for method in report_methods(report):
            counts[method] = counts.get(method, 0) + 1
    merged = {key: first.get(key) for key in SHARED}
    own = saes is not None and len({json.dumps(_identity(sae), sort_keys=True) for sae in saes.values()}) > 1
    merged["reference_dataset_metrics"] = first.get("reference_dataset_metrics")  # those of the shared metrics
    merged["sae"] = None if own else first.get("sae")
    merged["runs"], sources = {"zeroshot": first["runs"]["zeroshot"]}, {}
    for name, report in reports.items():
        named = {m: (m if counts[m] == 1 else f"{name}/{m}") for m in report_methods(report)}
        sae = {"sae": {"run": name, **saes[name]} if saes[name] else None} if own else {}
        merged["runs"].update({named[m]: {**report["runs"][m], **sae} for m in named})
        sources[name] = list(named.values())
    return merged, sources


def _identity(sae: dict[str, Any] | None) -> Any:
    """What makes two runs' SAEs one: their weights' hash, else (a run without its sae stage's
    mark) their recorded shape and quality."""
    if sae is None:
        return None
    return sae["weights"] or {key: value for key, value in sae.items() if key not in ("weights", "name")}


def compare(workdirs: list[str], out: str) -> epath.Path:
    """Writes the comparison of `workdirs` into `out`; returns the Markdown file. Every refusal
    comes before anything is written."""
    for what, place in [*(("run", w) for w in workdirs), ("--out", out)]:  # an unreachable bucket: one paragraph
        storage.check_reachable(place, what)
    places = [_resolved(w) for w in workdirs]
    repeated = sorted({w for w, place in zip(workdirs, places) if places.count(place) > 1})
    if repeated:
        raise UsageError(
            f"{', '.join(repeated)} given more than once (as the same directory, also through a link); "
            f"name each run once."
        )
    target = _resolved(out)
    for workdir, place in zip(workdirs, places):
        if target == place or target.startswith(place.rstrip("/") + "/"):
            where = "is" if target == place else "lies inside"
            raise UsageError(
                f"--out {out} {where} the compared run {workdir}, whose finished report it would "
                f"overwrite (and that run's next report would delete the comparison); choose a "
                f"directory outside every compared workdir."
            )
    labels = [storage.path(w).name or str(w) for w in workdirs]
    if len(set(labels)) != len(labels):
        labels = [str(w) for w in workdirs]
    reports, saes, browsers = {}, {}, {}
    for label, w in zip(labels, workdirs):
        stopping.check(f"before reading run {w}")
        reports[label] = _answered(w, functools.partial(read_report, w))
        saes[label] = _answered(w, functools.partial(read_sae, w, reports[label]))
    merged, sources = merge(reports, saes)
    for label, w in zip(labels, workdirs):
        browsers[label] = _answered(w, functools.partial(read_browser, w, reports[label]))
    names = {label: dict(zip(report_methods(reports[label]), sources[label])) for label in labels}
    return _answered(
        out, lambda: _write(storage.path(out), merged, sources, merge_browsers(browsers, names)), what="--out"
    )


def _write(
    directory: epath.Path, merged: dict[str, Any], sources: dict[str, list[str]], browsers: list[dict[str, Any]]
) -> epath.Path:
    """The comparison's files in `directory`; a place that cannot hold them is one paragraph."""
    try:
        if directory.exists() and not directory.is_dir():
            raise UsageError(
                f"--out {directory} is a file; name a directory for the comparison (it is created when missing)."
            )
        directory.mkdir(parents=True, exist_ok=True)
        figures = report_figures(merged, directory)
        text = render_comparison(sources, merged, figures, legend())
        storage.write_atomic(directory / "report.json", json.dumps(merged, indent=1))
        storage.write_atomic(directory / "report.md", text)
        storage.write_atomic(directory / "report.html", render_html("SAE-FT comparison", text, directory, browsers))
    except OSError as error:
        raise UsageError(
            f"--out {directory} cannot be written ({getattr(error, 'strerror', None) or error}); choose "
            f"a writable directory (for a bucket, check its name and your credentials)."
        ) from error
    return directory / "report.md"


def _answered(place: str, read: Callable[[], Any], what: str = "the run") -> Any:
    """`read()`, which reads or writes `place`; for a bucket, within `BUCKET_WAIT_S` seconds and
    any failure of the connection named as one paragraph (a local disk answers or fails by itself)."""
    if not storage.is_remote(place):
        return read()
    outcome: dict[str, Any] = {}

    def attempt():
        try:
            outcome["value"] = read()
        except BaseException as error:  # handed to the caller's thread
            outcome["error"] = error

    worker = threading.Thread(target=attempt, daemon=True)  # a hung request must not hold the exit
    worker.start()
    worker.join(BUCKET_WAIT_S)
    unreachable = f"{what} {place} did not answer within {BUCKET_WAIT_S:.0f} s" if worker.is_alive() else None
    error = outcome.get("error")
    if error is not None and not isinstance(error, UsageError):
        unreachable = f"{what} {place} cannot be reached ({type(error).__name__}: {str(error).strip()[:200]})"
    if unreachable:
        raise UsageError(
            f"{unreachable}; check the bucket's name, your credentials and the connection, then run "
            f"the comparison again."
        )
    if error is not None:
        raise error
    return outcome["value"]


def _resolved(place: str) -> str:
    """`place` as one spelling per directory: a local path absolute with every link resolved."""
    return os.fspath(place).rstrip("/") if storage.is_remote(place) else os.path.realpath(os.path.expanduser(place))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m saeft_jax.compare", description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+", help="finished runs' workdirs (local or gs://)")
    parser.add_argument("--out", required=True, help="where the comparison goes")
    args = parser.parse_args(argv)
    return command_exit_code(lambda: compare(args.workdirs, args.out))


if __name__ == "__main__":
    stopping.install("the same command runs the comparison again")
    sys.exit(main())
