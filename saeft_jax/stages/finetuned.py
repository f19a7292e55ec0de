"""Stage finetune: one fine-tuned model per method of `config.finetune.methods`
(`finetune/<method>/`), trained by the method's recipe (fine-tuning, LP-FT, FLYP; the linear
probe only publishes its head): the train loop with its Orbax checkpoints and metrics, then the
final model as a Hugging Face checkpoint (`final/`), the head (`head.safetensors`) and the
parameters' fingerprint."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np
from etils import epath

from saeft_jax import hf, parallel, storage
from saeft_jax.data import pipeline
from saeft_jax.data.preprocess import train_transform
from saeft_jax.errors import UsageError
from saeft_jax.fingerprint import fingerprint
from saeft_jax.methods import Method
from saeft_jax.models.clip import image_encoder, image_params, text_encoder, text_params
from saeft_jax.stages import features, heads, probe, trained_sae
from saeft_jax.stages.context import Run
from saeft_jax.training.flyp import MAX_LOGIT_SCALE, make_flyp_loss
from saeft_jax.training.loop import train_loop
from saeft_jax.training.optim import make_optimizer
from saeft_jax.training.step import init_state, make_loss, make_train_step
from saeft_jax.zeroshot import build_zeroshot_head, caption_ids

STAGE = "finetune"


class Preempted(RuntimeError):
    """The run stopped on SIGTERM or a preemption notice (at a checkpoint when fine-tuning);
    rerun to continue."""


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
    _, params = run.clip
    if method.recipe == "linear_probe":  # the zero-shot encoder with the probe's head
        return _publish(run, method, {"encoder": image_params(params), "head": probe.load_head(run)},
                        {"steps": 0, "final_loss": None, "final_ce": None})
    source = run.source(run.train_spec)
    steps = total_steps(run, len(source))  # at least the warm-up plus one (`saeft_jax.preflight`)
    frozen = {"encoder": image_params(params), "sae": trained_sae.load(run, method.sae) if method.sae else None}
    recipe = _flyp(run, method, frozen) if method.recipe == "flyp" else _classifier(run, method)
    optimizer, schedule = make_optimizer(cfg.lr, steps, warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
                                         clip_norm=cfg.clip_norm, decay_mask=recipe.decay_mask)
    state = init_state(recipe.params, optimizer)
    sharding = parallel.state_shardings(state, run.mesh, fsdp=True) if cfg.fsdp else None
    step = make_train_step(recipe.loss, optimizer, schedule, run.mesh, sharding,
                           accumulate_steps=cfg.accumulate_steps)
    directory = run.dir(STAGE, name)
    state, summary = train_loop(step, state, frozen, _batches(run, method, source, recipe.templates), mesh=run.mesh,
                                workdir=directory, total_steps=steps, log_every=cfg.log_every,
                                checkpoint_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints,
                                show_progress=run.config.show_progress, description=f"finetune {name}",
                                state_sharding=sharding)
    if summary["preempted"]:
        raise Preempted(f"fine-tuning method {name!r} stopped at step {summary['steps']} of {steps} and saved a "
                        f"checkpoint in {directory / 'checkpoints'}; run the same command again to continue")
    _publish(run, method, recipe.tuned(jax.device_get(state["params"])),
             {k: summary[k] for k in ("steps", "final_loss", "final_ce")})


@dataclasses.dataclass(frozen=True)
class _Recipe:
    """What a recipe trains: the initial parameters, the loss, how many caption templates the
    batches draw from (0: none), how the trained parameters become {"encoder", "head"[, "text"]},
    and which parameters weight decay applies to (None: all, the WiSE-FT protocol)."""

    params: dict
    loss: Callable
    templates: int = 0
    tuned: Callable[[dict], dict] = lambda trained: trained
    decay_mask: Callable[[dict], dict] | None = None


def _classifier(run: Run, method: Method) -> _Recipe:
    """Fine-tuning (and LP-FT): the image encoder and the head, from the zero-shot head (the probe's)."""
    _, params = run.clip
    head = probe.load_head(run) if method.recipe == "lp_ft" else heads.load_head(run, run.train_spec.label_space)
    return _Recipe({"encoder": image_params(params), "head": head}, _loss(run, method))


def _flyp(run: Run, method: Method, frozen: dict) -> _Recipe:
    """FLYP: both towers and logit_scale, on captions of the training classes; its head is then the
    zero-shot head of its own text tower (the training templates, its own logit_scale).
    `finetune.flyp_logit_scale`: "clip" clamps logit_scale to [0, ln 100] and spares it weight
    decay; "flyp" leaves it free and decayed, as FLYP's code."""
    model, params = run.clip
    as_flyp = run.config.finetune.flyp_logit_scale == "flyp"
    spec = run.train_spec
    frozen["captions"] = caption_ids(run.tokenizer, spec.prompts(), model.config.text.max_position_embeddings)
    trainable = {"encoder": image_params(params), "text": text_params(params), "logit_scale": params["logit_scale"]}
    loss = make_flyp_loss(image_encoder(model), text_encoder(model), method.penalty(), method.reg_lambda,
                          taps=_taps(run, method), max_logit_scale=None if as_flyp else MAX_LOGIT_SCALE)

    def tuned(trained: dict) -> dict:
        scale = trained["logit_scale"] if as_flyp else np.clip(trained["logit_scale"], 0.0, MAX_LOGIT_SCALE)
        text = {**trained["text"], "logit_scale": scale}
        head = build_zeroshot_head(model, {**params, **text}, run.tokenizer, spec.prompts(),
                                   show_progress=run.config.show_progress)
        return {"encoder": trained["encoder"], "text": text, "head": {k: np.asarray(v) for k, v in head.items()}}

    no_decay_on_scale = lambda params: {**jax.tree.map(lambda _: True, params), "logit_scale": False}
    return _Recipe(trainable, loss, len(spec.templates), tuned, None if as_flyp else no_decay_on_scale)


def made_from(run: Run, method: Method) -> tuple[tuple[str, ...], ...]:
    """The artifacts method `method`'s fine-tuning reads: the head, its SAE, the probe, the teacher cache."""
    if method.checkpoint:
        return (("zeroshot",),)
    cached = run.config.finetune.teacher_cache and method.regularizer.teacher_cache
    return (("zeroshot",), *([("sae", method.sae)] if method.sae else []), *([("probe",)] if method.uses_probe else []),
            *([("features",)] if cached else []))


def _publish(run: Run, method: Method, tuned: dict, train: dict) -> None:
    """Writes `tuned` ({"encoder", "head"[, "text"]}: the text tower when it was trained too) as
    method `method`'s final model and marks it done."""
    model, params = run.clip
    directory = run.dir(STAGE, method.name)
    if run.is_writer:
        hf.save_clip(model, {**params, **tuned["encoder"], **tuned.get("text", {})}, directory / "final",
                     tokenizer=run.tokenizer,
                     image_spec=run.image_spec)
        storage.save_safetensors(directory / "head.safetensors", tuned["head"])
    run.mark_done({"method": method.describe(), "train": train, "fingerprint": fingerprint(tuned)}, STAGE,
                  method.name, files=("final", "head.safetensors"), inputs=made_from(run, method))


def _import(run: Run, method: Method) -> None:
    """A model fine-tuned elsewhere, taken in as this method's: its image encoder and its head
    (`head.safetensors` beside its weights, else the zero-shot head of its own text tower over the
    training classes), written where a trained method's go."""
    model, _ = run.clip
    where = storage.path(method.checkpoint)
    theirs_model, theirs = hf.load_clip(where)
    ours, other = model.config, theirs_model.config  # only the image tower and the projection are taken
    if (other.vision, other.projection_dim) != (ours.vision, ours.projection_dim):
        raise UsageError(f"{where} holds a CLIP whose image encoder has another shape than {run.model_path}'s; "
                         f"WiSE-FT mixes the two models' weights, so a checkpoint method must be a fine-tuned copy "
                         f"of this run's model.")
    if (where / "head.safetensors").exists():
        head, made = storage.load_safetensors(where / "head.safetensors"), where / "head.safetensors"
    else:
        spec = run.train_spec
        head = build_zeroshot_head(theirs_model, theirs, hf.load_tokenizer(where), spec.prompts(),
                                   show_progress=run.config.show_progress)
        made = f"the zero-shot head of {where}'s text tower"
    classes = len(run.train_spec.classnames)
    if np.shape(head["W"]) != (classes, ours.projection_dim):
        raise UsageError(f"{made} has shape {np.shape(head['W'])}; the training classes need "
                         f"({classes}, {ours.projection_dim}).")
    _publish(run, method, {"encoder": image_params(theirs), "head": {k: np.asarray(v, np.float32)
                                                                     for k, v in head.items()}},
             {"steps": 0, "final_loss": None, "final_ce": None})


def _loss(run: Run, method: Method):
    """Cross-entropy plus the method's weighted penalty, tapping token features where it asks."""
    model, _ = run.clip
    return make_loss(image_encoder(model), method.penalty(), method.reg_lambda,
                     label_smoothing=run.config.finetune.label_smoothing, taps=_taps(run, method))


def _taps(run: Run, method: Method) -> tuple[int, ...]:
    """The blocks whose token features the method's penalty compares (none for most)."""
    model, _ = run.clip
    return method.regularizer.taps(model.config.vision.num_hidden_layers) if method.regularizer.taps else ()


def _batches(run: Run, method: Method, source, templates: int = 0):
    """This process's training batches, with the cached f0 when the teacher cache is on and
    the method's penalty can use it (it holds embeddings, not token features)."""
    cfg = run.config.finetune
    use_cache = cfg.teacher_cache and method.regularizer.teacher_cache
    teacher = pipeline.NpyRows(features.features_path(run)) if use_cache else None
    transform = train_transform(run.image_spec, tuple(cfg.crop_scale) if cfg.random_crop else None)
    return pipeline.train_batches(source, share=pipeline.Share.of_this_process(cfg.batch_size), seed=run.config.seed,
                                  transform=transform, teacher=teacher, templates=templates,
                                  num_workers=run.config.num_workers)


def load_finetuned(run: Run, name: str) -> dict:
    """{"encoder", "head"} of method `name`'s fine-tuned model, as saved."""
    _, params = hf.load_clip(run.read((STAGE, name), "final"))
    head = storage.load_safetensors(epath.Path(run.read((STAGE, name), "head.safetensors")))
    return {"encoder": image_params(params), "head": head}
