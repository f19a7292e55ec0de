"""Stage evaluate: each fine-tuned model with the zero-shot one on every dataset of the suite,
every WiSE-FT alpha in one pass (`evaluate/<name>/<dataset>.npz` with per-example predictions
and embeddings, `results.json` with the metrics), resumable dataset by dataset."""

from __future__ import annotations

import json

import numpy as np

from saeft_jax import storage
from saeft_jax.evaluation import wise
from saeft_jax.evaluation.evaluate import evaluate_dataset
from saeft_jax.models.clip import image_encoder, image_params
from saeft_jax.stages import finetune, zeroshot
from saeft_jax.stages.context import Run, write_json

STAGE = "evaluate"


def run_stage(run: Run, name: str) -> None:
    model, params = run.clip
    theta_ft = finetune.load_finetuned(run, name)
    train_space = run.train_spec.label_space
    theta0 = {"encoder": image_params(params), "head": zeroshot.load_head(run, train_space)}
    directory = run.dir(STAGE, name)
    alphas, encoder = tuple(run.config.evaluate.alphas), image_encoder(model)
    sweeps = {}  # one compilation per label-space projection, shared by the datasets that use it
    results = {}
    for spec in run.eval_specs():
        path = directory / f"{spec.name}.npz"
        if not path.exists():
            own = {"head": zeroshot.load_head(run, spec.label_space)}  # another label space: its zero-shot head
            pair = (theta0, theta_ft) if spec.label_space == train_space else ({**theta0, **own}, {**theta_ft, **own})
            key = (spec.label_space, spec.logit_sets)
            if key not in sweeps:
                sweeps[key] = wise.make_sweep(encoder, spec.project, alphas, run.mesh)
            result = evaluate_dataset(encoder, *pair, spec, run.source(spec), image_spec=run.image_spec, mesh=run.mesh,
                                      global_batch=run.config.evaluate.batch_size, alphas=alphas,
                                      num_workers=run.config.num_workers, show_progress=run.config.show_progress,
                                      sweep=sweeps[key])
            if run.is_writer:
                write_json(directory / f"{spec.name}.json", result.summary())
                # Last: the .npz marks the dataset as evaluated.
                storage.save_npz(path, labels=result.labels, groups=result.groups, indices=result.indices,
                                 predictions=result.predictions, alphas=np.asarray(result.alphas),
                                 zeroshot_embeddings=result.zeroshot_embeddings,
                                 finetuned_embeddings=result.finetuned_embeddings)
            run.barrier(f"evaluate {name} {spec.name}")
        results[spec.name] = json.loads((directory / f"{spec.name}.json").read_text())
    run.mark_done({"datasets": results}, STAGE, name)


def load_arrays(run: Run, name: str, dataset: str) -> dict[str, np.ndarray]:
    """The per-example arrays of run `name` on `dataset`."""
    return storage.load_npz(run.workdir / STAGE / name / f"{dataset}.npz")
