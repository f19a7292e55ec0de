"""Stage evaluate: the scores of each method's fine-tuned model with the zero-shot one on every
dataset of the suite and on the validation split, every WiSE-FT alpha in one pass
(`evaluate/<method>/<dataset>.json` with the metric per alpha, `.npz` with per-example
predictions and embeddings), resumable dataset by dataset."""

from __future__ import annotations

import json

import numpy as np
from etils import epath

from saeft_jax import storage
from saeft_jax.evaluation import wise
from saeft_jax.evaluation.evaluate import evaluate_dataset
from saeft_jax.stages import finetune, zeroshot
from saeft_jax.stages.context import Run, write_json

STAGE = "evaluate"


def run_stage(run: Run, name: str) -> None:
    """Evaluates method `name` on every dataset not yet evaluated, then marks the stage complete."""
    theta_ft = finetune.load_finetuned(run, name)
    train_space = run.train_spec.label_space
    theta0 = {"encoder": run.model.image_params(), "head": zeroshot.zeroshot_head(run, train_space)}
    directory = run.dir(STAGE, name)
    alphas, encoder = tuple(run.config.evaluate.alphas), run.model.image_encoder()
    sweeps = {}  # one compilation per label-space projection, shared by the datasets that use it
    results = {}
    for spec in [*run.eval_specs(), *([run.validation] if run.validation else [])]:
        results[spec.name] = _saved_summary(directory, spec.name)
        if results[spec.name] is not None:
            continue
        own = {"head": zeroshot.zeroshot_head(run, spec.label_space)}  # another label space: its zero-shot head
        pair = (theta0, theta_ft) if spec.label_space == train_space else ({**theta0, **own}, {**theta_ft, **own})
        key = (spec.label_space, spec.logit_sets)
        if key not in sweeps:
            sweeps[key] = wise.make_sweep(encoder, spec.project, alphas, run.mesh)
        result = evaluate_dataset(
            encoder,
            *pair,
            spec,
            run.source(spec),
            image_spec=run.model.image_spec,
            mesh=run.mesh,
            global_batch=run.config.evaluate.batch_size,
            alphas=alphas,
            num_workers=run.config.num_workers,
            show_progress=run.config.show_progress,
            sweep=sweeps[key],
        )
        if run.is_writer:
            (directory / spec.name).parent.mkdir(parents=True, exist_ok=True)  # a folder's NAME/SPLIT: NAME/
            write_json(directory / f"{spec.name}.json", result.summary())
            # Last: the .npz marks the dataset as evaluated.
            storage.save_npz(
                directory / f"{spec.name}.npz",
                labels=result.labels,
                groups=result.groups,
                indices=result.indices,
                predictions=result.predictions,
                alphas=np.asarray(result.alphas),
                zeroshot_embeddings=result.zeroshot_embeddings,
                finetuned_embeddings=result.finetuned_embeddings,
            )
        run.barrier(f"evaluate {name} {spec.name}")
        results[spec.name] = result.summary()
    files = tuple(f"{dataset}.{suffix}" for dataset in results for suffix in ("json", "npz"))
    run.mark_done({"datasets": results}, STAGE, name, files=files, inputs=(("finetune", name), ("zeroshot",)))


def _saved_summary(directory, dataset: str) -> dict | None:
    """The summary of a dataset evaluated before this run stopped, or None to evaluate it (again)."""
    summary, arrays = directory / f"{dataset}.json", directory / f"{dataset}.npz"
    if not (summary.exists() and arrays.exists()):
        return None
    try:
        return json.loads(summary.read_text())
    except json.JSONDecodeError:
        return None


def load_arrays(run: Run, name: str, dataset: str) -> dict[str, np.ndarray]:
    """The per-example arrays of method `name` on `dataset`, checked against their recorded hash."""
    return storage.load_npz(epath.Path(run.read((STAGE, name), f"{dataset}.npz")))
