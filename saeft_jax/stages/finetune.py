"""Stage finetune: one fine-tuned model per method of `config.finetune.methods`
(`finetune/<method>/`), trained by the method's recipe (fine-tuning, LP-FT, FLYP; the linear
probe only publishes its head): the train loop with its Orbax checkpoints and metrics, then the
final model as a Hugging Face checkpoint (`final/`), the head (`head.safetensors`) and the
parameters' fingerprint. With `finetune.eval_every` the model is scored on the validation split
every that many updates, and `finetune.select_checkpoint="best_val"` publishes the best of those
checkpoints instead of the last (the record's `checkpoint`: split, step, score, curve)."""

from __future__ import annotations

import signal
from collections.abc import Callable

import jax
import numpy as np
from etils import epath

from saeft_jax import models, parallel, stopping, storage
from saeft_jax.data import pipeline
from saeft_jax.data.preprocess import train_transform
from saeft_jax.errors import UsageError
from saeft_jax.evaluation.evaluate import make_scorer
from saeft_jax.fingerprint import fingerprint
from saeft_jax.finite import check_artifact, check_finite
from saeft_jax.methods import Method
from saeft_jax.stages import features, probe, sae, zeroshot
from saeft_jax.stages.context import Run
from saeft_jax.training import recipes
from saeft_jax.training.loop import train_loop
from saeft_jax.training.optim import make_optimizer
from saeft_jax.training.step import init_state, make_train_step
from saeft_jax.zeroshot import build_zeroshot_head

STAGE = "finetune"


def total_steps(run: Run, examples: int) -> int:
    """Fine-tuning steps: `finetune.steps`, or `finetune.epochs` over `examples` at the batch size."""
    cfg = run.config.finetune
    return cfg.steps if cfg.steps > 0 else max(1, cfg.epochs * examples // cfg.batch_size)


def run_stage(run: Run, name: str) -> None:
    """Trains method `name` by its recipe, continuing from its newest checkpoint (or imports the
    model a `checkpoint` method names, or publishes the linear probe)."""
    cfg, method = run.config.finetune, run.methods[name]
    if method.checkpoint:
        return _import(run, method)
    training = method.recipe.build(_inputs(run, method))
    if training.loss is None:  # nothing to train (the linear probe): the model as the recipe gives it
        return _publish(run, method, training.params, {"steps": 0, "final_loss": None, "final_ce": None})
    source = run.source(run.train_spec)
    steps = total_steps(run, len(source))  # at least the warm-up plus one (`saeft_jax.preflight`)
    frozen = {
        "encoder": run.model.image_params(),
        "sae": sae.load(run, method.sae) if method.sae else None,
        **training.frozen,
    }
    optimizer, schedule = make_optimizer(
        cfg.lr,
        steps,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        clip_norm=cfg.clip_norm,
        decay_mask=training.decay_mask,
    )
    state = init_state(training.params, optimizer)
    sharding = parallel.state_shardings(state, run.mesh, fsdp=True) if cfg.fsdp else None
    step = make_train_step(
        training.loss, optimizer, schedule, run.mesh, sharding, accumulate_steps=cfg.accumulate_steps
    )
    directory = run.dir(STAGE, name)
    keep_best = cfg.select_checkpoint == "best_val"
    state, summary = train_loop(
        step,
        state,
        frozen,
        _batches(run, method, source, training.templates),
        mesh=run.mesh,
        workdir=directory,
        total_steps=steps,
        log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every,
        keep_checkpoints=cfg.keep_checkpoints,
        show_progress=run.config.show_progress,
        description=f"finetune {name}",
        state_sharding=sharding,
        validate=_validator(run, training),
        eval_every=cfg.eval_every,
        keep_best=keep_best,
    )
    if summary["preempted"]:
        signum = stopping.requested() or signal.SIGTERM  # else JAX's preemption notice
        raise stopping.Stopped(
            f"{stopping.signal_name(signum)}: fine-tuning method {name!r} stopped at step "
            f"{summary['steps']} of {steps} and saved a checkpoint in {directory / 'checkpoints'}",
            signum,
        )
    chosen = summary["best"]["params"] if keep_best else state["params"]
    _publish(
        run,
        method,
        training.tuned(jax.device_get(chosen)),
        {k: summary[k] for k in ("steps", "final_loss", "final_ce")},
        _checkpoint_record(run, summary),
    )


def _validator(run: Run, training: recipes.Training) -> Callable[[dict], float] | None:
    """`validate(trained params) -> score` on the validation split (the recipe's model, its metric),
    when `finetune.eval_every` asks for one; else None."""
    if not run.config.finetune.eval_every:
        return None
    spec = run.validation
    score = make_scorer(
        run.model.image_encoder(),
        spec,
        run.source(spec),
        image_spec=run.model.image_spec,
        mesh=run.mesh,
        global_batch=run.config.evaluate.batch_size,
        num_workers=run.config.num_workers,
    )
    return lambda params: score(training.tuned(params))


def _checkpoint_record(run: Run, summary: dict) -> dict | None:
    """Which checkpoint became the method's model: {"split", "rule", "step", "score", "curve"}
    (None without evaluations during fine-tuning)."""
    cfg = run.config.finetune
    if not cfg.eval_every:
        return None
    if cfg.select_checkpoint == "best_val":
        step, score = summary["best"]["step"], summary["best"]["score"]
    else:  # the last step, scored when it is an evaluation point
        step = summary["steps"]
        score = dict(map(tuple, summary["curve"])).get(step)
    return {
        "split": run.validation.name,
        "rule": cfg.select_checkpoint,
        "step": step,
        "score": score,
        "curve": summary["curve"],
    }


def _inputs(run: Run, method: Method) -> recipes.Inputs:
    """What method `method`'s recipe builds from: the model, the bound penalty, the training prompts, the heads."""
    spec = run.train_spec
    return recipes.Inputs(
        model=run.model,
        penalty=method.penalty(),
        reg_lambda=method.reg_lambda,
        taps=method.regularizer.taps(run.model.vision_layers) if method.regularizer.taps else (),
        label_smoothing=run.config.finetune.label_smoothing,
        prompts=spec.prompts(),
        templates=len(spec.templates),
        flyp_logit_scale=run.config.finetune.flyp_logit_scale,
        show_progress=run.config.show_progress,
        zeroshot_head=lambda: zeroshot.zeroshot_head(run, spec.label_space),
        probe_head=lambda: probe.probe_head(run),
    )


def made_from(run: Run, method: Method) -> tuple[tuple[str, ...], ...]:
    """The artifacts method `method`'s fine-tuning reads: the head, its SAE, the probe, the teacher cache."""
    if method.checkpoint:
        return (("zeroshot",),)
    cached = run.config.finetune.teacher_cache and method.regularizer.teacher_cache
    return (
        ("zeroshot",),
        *([("sae", method.sae)] if method.sae else []),
        *([("probe",)] if method.recipe.reads_probe else []),
        *([("features",)] if cached else []),
    )


def _publish(run: Run, method: Method, tuned: dict, train: dict, checkpoint: dict | None = None) -> None:
    """Writes `tuned` ({"encoder", "head"[, "text"]}: the text tower when it was trained too) as
    method `method`'s final model and marks it done (with `checkpoint`, the record of the step
    chosen on validation, when there is one)."""
    model = run.model
    directory = run.dir(STAGE, method.name)
    if run.is_writer:
        model.save(
            directory / "final", params={**model.params, **tuned["encoder"], **tuned.get("text", {})}, overwrite=True
        )  # what an interrupted attempt left
        storage.save_safetensors(directory / "head.safetensors", tuned["head"])
    run.mark_done(
        {
            "method": method.describe(),
            "train": train,
            "fingerprint": fingerprint(tuned),
            **({"checkpoint": checkpoint} if checkpoint else {}),
        },
        STAGE,
        method.name,
        files=("final", "head.safetensors"),
        inputs=made_from(run, method),
    )


def _import(run: Run, method: Method) -> None:
    """A model fine-tuned elsewhere, taken in as this method's: its image encoder and its head
    (`head.safetensors` beside its weights, else the zero-shot head of its own text tower over the
    training classes), written where a trained method's go."""
    model = run.model
    where = storage.path(method.checkpoint)
    theirs = models.load(where)  # only the image tower (and the head) are taken
    if not model.same_image_tower(theirs):
        kind = (
            f"a {theirs.family.name} model, while this run's {run.model_path} is a {model.family.name} model"
            if theirs.family.name != model.family.name
            else f"a {theirs.family.name} model whose image encoder has another shape than {run.model_path}'s"
        )
        raise UsageError(
            f"config.finetune.methods.{method.name}.checkpoint: {where} holds {kind}. WiSE-FT mixes the "
            f"two models' weights, so a checkpoint method must be a fine-tuned copy of this run's model "
            f"(same family and architecture)."
        )
    check_finite(
        model.image_params(theirs.params),
        f"{where} (its weights)",
        f"config.finetune.methods.{method.name}.checkpoint must name a usable model: replace it with an intact copy.",
    )
    if (where / "head.safetensors").exists():
        head, made = storage.load_safetensors(where / "head.safetensors"), where / "head.safetensors"
    else:
        spec = run.train_spec
        head = build_zeroshot_head(theirs, spec.prompts(), show_progress=run.config.show_progress)
        made = f"the zero-shot head of {where}'s text tower"
    classes = len(run.train_spec.classnames)
    shapes = {name: np.shape(head[name]) for name in sorted(head)}
    wanted = {"W": (classes, model.embed_dim), "b": (classes,)}
    if shapes != wanted:
        raise UsageError(
            f"{made} holds the tensors {shapes}; a head for this run's {classes} training classes is "
            f"W {wanted['W']} (one row per class over the {model.embed_dim}-wide embedding) and b "
            f"{wanted['b']}. Write it in that form, or remove it to use the zero-shot head of the "
            f"checkpoint's own text tower."
        )
    check_finite(
        head,
        str(made),
        "replace it with an intact head, or remove it to use the zero-shot head of the checkpoint's own text tower.",
    )
    _publish(
        run,
        method,
        {"encoder": model.image_params(theirs.params), "head": {k: np.asarray(v, np.float32) for k, v in head.items()}},
        {"steps": 0, "final_loss": None, "final_ce": None},
    )


def _batches(run: Run, method: Method, source, templates: int = 0):
    """This process's training batches, with the cached f0 when the teacher cache is on and
    the method's penalty can use it (it holds embeddings, not token features)."""
    cfg = run.config.finetune
    use_cache = cfg.teacher_cache and method.regularizer.teacher_cache
    teacher = pipeline.NpyRows(features.features_path(run)) if use_cache else None
    transform = train_transform(run.model.image_spec, tuple(cfg.crop_scale) if cfg.random_crop else None)
    return pipeline.train_batches(
        source,
        share=pipeline.Share.of_this_process(cfg.batch_size),
        seed=run.config.seed,
        transform=transform,
        teacher=teacher,
        templates=templates,
        num_workers=run.config.num_workers,
    )


def load_finetuned(run: Run, name: str) -> dict:
    """{"encoder", "head"} of method `name`'s fine-tuned model, as saved, checked finite."""
    params = run.model.image_params(models.load(run.read((STAGE, name), "final")).params)
    check_artifact(params, run.workdir, (STAGE, name), "final", _cause(run, name), run.command)
    return {"encoder": params, "head": finetuned_head(run, name)}


def finetuned_head(run: Run, name: str) -> dict:
    """The head of method `name`'s fine-tuned model, as saved and checked finite (without its encoder)."""
    head = storage.load_safetensors(epath.Path(run.read((STAGE, name), "head.safetensors")))
    check_artifact(head, run.workdir, (STAGE, name), "head.safetensors", _cause(run, name), run.command)
    return head


def _cause(run: Run, name: str) -> str:
    checkpoint = run.methods[name].checkpoint
    return f"it is method {name}'s model" + (f", imported from {checkpoint}" if checkpoint else "")
