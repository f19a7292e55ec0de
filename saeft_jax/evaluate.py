"""Evaluation only: any model the project loads, scored on a suite, without a config file or a run.

    python -m saeft_jax.evaluate --model=PATH_OR_HUB_ID --suite=SUITE_OR_LIST [--head=head.safetensors]
        [--data_dir=DIR] [--out=DIR] [--wise_with=MODEL] [--batch_size=256] [--templates_file=FILE]

The suite is named as in a run (`imagenet`, the demo's `digits`, a prepared folder's
`NAME/SPLIT`, or dataset names separated by commas: the first in distribution, the rest shifts),
and each dataset is scored as a run's evaluate stage scores it: its label space, its projection,
its metric. The model's head for the in-distribution dataset's label space is `--head` (a run's
`finetune/<method>/head.safetensors`) or else, as for every other label space, the zero-shot head
of the model's own text tower. `--wise_with=MODEL` sweeps WiSE-FT, theta(alpha) = (1 - alpha)
theta_with + alpha theta_model, over the alphas of `--alphas`. Writes `OUT/evaluation.json`
(`metrics`: dataset -> value, as report.json gives each run's; `avg_ood`; with `--wise_with`,
`wise`: alpha -> {metrics, avg_ood}) and `OUT/evaluation.md`. A mistake (an unknown suite or
dataset, a model that does not load, a head of the wrong shape) is one paragraph and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

import numpy as np

from saeft_jax import models, parallel, stopping, storage
from saeft_jax.data import folders
from saeft_jax.data.locations import DEFAULT_DATA_DIR
from saeft_jax.data.registry import DatasetSpec, dataset_spec, suite
from saeft_jax.data.sources import open_source
from saeft_jax.demo import digits
from saeft_jax.errors import UsageError
from saeft_jax.evaluation import wise
from saeft_jax.evaluation.evaluate import evaluate_dataset
from saeft_jax.zeroshot import build_zeroshot_head

JSON_FILE, MARKDOWN_FILE = "evaluation.json", "evaluation.md"


def load_model(name_or_path: str) -> models.Model:
    """The one place this command loads a model (any family: a hub id or a local / gs:// directory)."""
    return models.load(name_or_path)


def suite_specs(
    name: str, data_dir: str | None, templates_file: str = ""
) -> tuple[list[DatasetSpec], str | None, list[str]]:
    """The specs of suite `name` (in distribution first), its in-distribution dataset (or None) and
    its shifts. An unknown suite or dataset is a `UsageError` naming it."""
    digits.register(digits.DigitsSetup())  # the demo's suite `digits`, as a demo run names it
    try:
        in_distribution, shifts = suite(name)
        specs = [dataset_spec(n, data_dir) for n in ([in_distribution] if in_distribution else []) + list(shifts)]
    except KeyError as error:
        raise UsageError(f"--suite {name!r}: {error.args[0]}") from error
    if templates_file:
        templates = folders.read_templates(templates_file, "--templates_file")
        specs = [dataclasses.replace(s, templates=templates) if s.prepare_kind == folders.KIND else s for s in specs]
    return [dataclasses.replace(s, data_dir=data_dir) for s in specs], in_distribution, list(shifts)


def zeroshot_heads(loaded: models.Model, specs: list[DatasetSpec]) -> dict[str, dict[str, np.ndarray]]:
    """{label space: the zero-shot head of `loaded`'s text tower}, from the first dataset of each
    space that gives its full class list (as a run's zeroshot stage builds them)."""
    spaces: dict[str, DatasetSpec] = {}
    for spec in specs:
        if spec.logit_sets is None:
            spaces.setdefault(spec.label_space, spec)
    missing = sorted({s.label_space for s in specs} - set(spaces))
    if missing:
        raise UsageError(
            f"--suite: no dataset of it gives the full class list of label space(s) {missing}; add a "
            f"dataset of that space without a projection (e.g. imagenet) to the list."
        )
    return {
        space: {k: np.asarray(v) for k, v in build_zeroshot_head(loaded, spec.prompts(), show_progress=False).items()}
        for space, spec in spaces.items()
    }


def _checked_head(path: str, spec: DatasetSpec, width: int) -> dict[str, np.ndarray]:
    try:
        head = storage.load_safetensors(storage.path(path))
    except Exception as error:  # a missing or damaged file: several error types
        raise UsageError(
            f"--head {path} cannot be read ({error}); pass a head.safetensors written by a run "
            f"(finetune/<method>/head.safetensors)."
        ) from error
    if "W" not in head or np.shape(head["W"]) != (len(spec.classnames), width):
        raise UsageError(
            f"--head {path} holds a head of shape {np.shape(head.get('W'))}, but {spec.name}'s classes "
            f"need ({len(spec.classnames)}, {width}); pass the head trained for this suite's "
            f"in-distribution dataset."
        )
    return {k: np.asarray(v, np.float32) for k, v in head.items()}


def evaluate(
    model: str,
    suite_name: str,
    *,
    head: str = "",
    data_dir: str | None = None,
    wise_with: str = "",
    alphas: tuple[float, ...] = wise.DEFAULT_ALPHAS,
    batch_size: int = 256,
    templates_file: str = "",
    num_workers: int = 0,
    show_progress: bool = True,
) -> dict[str, Any]:
    """The scores of `model` (with `head` for the in-distribution label space) on suite
    `suite_name`; with `wise_with`, of every WiSE-FT mix between it and that model."""
    specs, in_distribution, shifts = suite_specs(suite_name, data_dir, templates_file)
    sources = [open_source(spec, data_dir) for spec in specs]  # a dataset not prepared fails now, before the model
    if head and in_distribution is None:
        raise UsageError(
            f"--head needs a suite with a dataset in distribution (its label space is the head's); "
            f"{suite_name!r} has none. Name the dataset first, e.g. --suite=NAME/test,{suite_name}."
        )
    theirs = load_model(model)
    other = load_model(wise_with) if wise_with else theirs
    width = theirs.embed_dim
    if wise_with and not theirs.same_image_tower(other):
        raise UsageError(
            f"--wise_with {wise_with} (a {other.family.name} model) has another image encoder than "
            f"--model {model} (a {theirs.family.name} model); WiSE-FT mixes the weights of two models of "
            f"one family and architecture."
        )
    own_heads, other_heads = zeroshot_heads(theirs, specs), zeroshot_heads(other, specs) if wise_with else None
    if head:
        own_heads[specs[0].label_space] = _checked_head(head, specs[0], width)
    mesh = parallel.data_mesh()
    encoder = theirs.image_encoder()
    alphas = tuple(alphas) if wise_with else (1.0,)
    datasets, own, others = {}, theirs.image_params(), theirs.image_params(other.params)
    for spec, source in zip(specs, sources):
        theta = {"encoder": own, "head": own_heads[spec.label_space]}
        theta0 = {"encoder": others, "head": other_heads[spec.label_space]} if wise_with else theta
        result = evaluate_dataset(
            encoder,
            theta0,
            theta,
            spec,
            source,
            image_spec=theirs.image_spec,
            mesh=mesh,
            global_batch=batch_size,
            alphas=alphas,
            num_workers=num_workers,
            show_progress=show_progress,
        )
        datasets[spec.name] = {
            "metric": spec.metric,
            "scores": {wise.alpha_key(a): s for a, s in result.scores.items()},
        }

    def scores_at(alpha: str) -> dict[str, Any]:
        metrics = {name: record["scores"][alpha] for name, record in datasets.items()}
        return {"metrics": metrics, "avg_ood": float(np.mean([metrics[n] for n in shifts])) if shifts else None}

    out = {
        "model": model,
        "head": head or None,
        "suite": suite_name,
        "id_dataset": in_distribution,
        "ood_datasets": shifts,
        "dataset_metrics": {n: r["metric"] for n, r in datasets.items()},
        **scores_at("1.0"),
    }
    if wise_with:
        out["wise_with"] = wise_with
        out["wise"] = {a: scores_at(a) for a in datasets[specs[0].name]["scores"]}
    return out


def markdown(result: dict[str, Any]) -> str:
    """The evaluation as a Markdown table: the model's row, and with WiSE-FT one row per alpha."""
    names = list(result["dataset_metrics"])
    average = ["average OOD"] if result["ood_datasets"] else []
    header = [
        "model",
        *(f"{n} ({result['dataset_metrics'][n]}{', ID' if n == result['id_dataset'] else ''})" for n in names),
        *average,
    ]

    def row(label: str, scores: dict[str, Any]) -> str:
        cells = [label, *(f"{100 * scores['metrics'][n]:.1f}" for n in names)]
        cells += [f"{100 * scores['avg_ood']:.1f}"] if average else []
        return "| " + " | ".join(cells) + " |"

    head = f" with head `{result['head']}`" if result["head"] else " (zero-shot heads of its own text tower)"
    lines = [
        "# Evaluation",
        "",
        f"- **Model:** `{result['model']}`{head}.",
        f"- **Suite:** `{result['suite']}`.",
        "",
        "Scores in percent.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        row(f"`{result['model']}`", result),
    ]
    if "wise" in result:
        lines += [row(f"WiSE-FT alpha {a} (0: `{result['wise_with']}`)", s) for a, s in result["wise"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m saeft_jax.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a Hugging Face id or a CLIP directory (a run's final/)")
    parser.add_argument("--suite", required=True, help="a suite, a prepared NAME/SPLIT, or dataset names a,b,c")
    parser.add_argument("--head", default="", help="head.safetensors for the in-distribution label space")
    parser.add_argument("--data_dir", default=DEFAULT_DATA_DIR, help="where datasets are prepared / built")
    parser.add_argument("--out", default="evaluation", help="where evaluation.json and evaluation.md go")
    parser.add_argument("--wise_with", default="", help="a second model: sweep WiSE-FT between the two")
    parser.add_argument("--alphas", default=",".join(map(str, wise.DEFAULT_ALPHAS)), help="WiSE-FT weights")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--templates_file", default="", help="prompts of NAME/SPLIT datasets, one a line with {}")
    parser.add_argument("--num_workers", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        alphas = tuple(float(a) for a in args.alphas.split(","))
    except ValueError:
        parser.error(f"--alphas {args.alphas!r}: give weights in [0, 1] separated by commas, e.g. 0,0.5,1")
    if args.batch_size < 1 or not all(0 <= a <= 1 for a in alphas):
        parser.error("--batch_size must be positive and --alphas in [0, 1]")
    try:
        result = evaluate(
            args.model,
            args.suite,
            head=args.head,
            data_dir=args.data_dir,
            wise_with=args.wise_with,
            alphas=alphas,
            batch_size=args.batch_size,
            templates_file=args.templates_file,
            num_workers=args.num_workers,
        )
        out = storage.path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        storage.write_atomic(out / JSON_FILE, json.dumps(result, indent=1))
        storage.write_atomic(out / MARKDOWN_FILE, markdown(result))
    except stopping.Stopped as stop:
        return stopping.exit_code(stop, "nothing was written, and the same command evaluates again")
    except (UsageError, OSError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(f"done: {out / MARKDOWN_FILE}")
    return 0


if __name__ == "__main__":
    stopping.install("the same command evaluates again")
    sys.exit(main())
