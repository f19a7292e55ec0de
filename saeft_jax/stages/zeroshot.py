"""Stage zeroshot: the zero-shot heads (each class's prompts, `DatasetSpec.prompts()`, through the
text tower), one per label space in use: the training classes and every other label space of the evaluation suite."""

from __future__ import annotations

import numpy as np
from etils import epath

from saeft_jax import storage
from saeft_jax.data.registry import DatasetSpec
from saeft_jax.finite import check_artifact
from saeft_jax.stages.context import Run
from saeft_jax.zeroshot import build_zeroshot_head

STAGE = "zeroshot"


def label_spaces(run: Run) -> dict[str, DatasetSpec]:
    """For each label space in use, a dataset whose classes are that space's (logits unprojected)."""
    spaces: dict[str, DatasetSpec] = {}
    for spec in [run.train_spec, *run.eval_specs()]:
        if spec.logit_sets is None:
            spaces.setdefault(spec.label_space, spec)
    missing = {s.label_space for s in run.eval_specs()} - set(spaces)
    if missing:
        raise ValueError(
            f"no dataset gives the full class list of label space(s) {sorted(missing)}; train on or "
            f"evaluate a dataset of that space without a projection (e.g. 'imagenet')"
        )
    return spaces


def run_stage(run: Run) -> None:
    """Builds and saves every head not yet saved, then marks the stage complete."""
    summary = {}
    for space, spec in label_spaces(run).items():
        path = run.dir(STAGE) / f"{space}.safetensors"
        if not path.exists():
            head = build_zeroshot_head(run.model, spec.prompts(), show_progress=run.config.show_progress)
            if run.is_writer:
                storage.save_safetensors(path, head)
        summary[space] = {"classes": len(spec.classnames), "templates": len(spec.templates)}
    run.mark_done({"spaces": summary}, STAGE, files=tuple(f"{space}.safetensors" for space in summary))


def zeroshot_head(run: Run, space: str) -> dict[str, np.ndarray]:
    """The zero-shot head of label space `space`, checked finite."""
    name = f"{space}.safetensors"
    head = storage.load_safetensors(epath.Path(run.read((STAGE,), name)))
    check_artifact(
        head,
        run.workdir,
        (STAGE,),
        name,
        f"it was built from the text tower of {run.model_path}, so check that checkpoint's weights if it comes back",
        run.command,
    )
    return head
