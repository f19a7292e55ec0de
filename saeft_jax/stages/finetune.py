"""Stage finetune: one fine-tuning run per configured regularizer (`finetune/<name>/`): the
train loop with its Orbax checkpoints and metrics, then the final model as a Hugging Face
checkpoint (`final/`), the head (`head.safetensors`) and the parameters' fingerprint."""

from __future__ import annotations

import jax

from saeft_jax import hf, parallel, regularizers, storage
from saeft_jax.config import ConfigError
from saeft_jax.data import pipeline
from saeft_jax.data.preprocess import train_transform
from saeft_jax.fingerprint import fingerprint
from saeft_jax.models.clip import image_encoder, image_params
from saeft_jax.stages import features, sae, zeroshot
from saeft_jax.stages.context import Run
from saeft_jax.training.loop import train_loop
from saeft_jax.training.optim import make_optimizer
from saeft_jax.training.step import init_state, make_loss, make_train_step

STAGE = "finetune"


class Preempted(RuntimeError):
    """The run stopped at a checkpoint (SIGTERM or a preemption notice); rerun to continue."""


def total_steps(run: Run, examples: int) -> int:
    cfg = run.config.finetune
    return cfg.steps if cfg.steps > 0 else max(1, cfg.epochs * examples // cfg.batch_size)


def _regularizer(run: Run, name: str):
    hparams = dict(run.config.finetune.reg_hparams[name])
    sae_params = None
    if name in regularizers.SAE_BASED:
        sae_params, meta = sae.load(run)
        hparams = {"k": meta["k"], **hparams}
    return regularizers.make_regularizer(name, **hparams), sae_params


def run_stage(run: Run, name: str) -> None:
    cfg = run.config.finetune
    model, params = run.clip
    source = run.source(run.train_spec)
    steps = total_steps(run, len(source))
    if cfg.warmup_steps >= steps:
        raise ConfigError(f"config.finetune.warmup_steps ({cfg.warmup_steps}) must be below the run's {steps} steps "
                          f"({'finetune.steps' if cfg.steps else f'{cfg.epochs} epochs of {len(source)} examples'})")
    optimizer, schedule = make_optimizer(cfg.lr, steps, warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
                                         clip_norm=cfg.clip_norm, accumulate_steps=cfg.accumulate_steps)
    regularizer, sae_params = _regularizer(run, name)
    taps = regularizers.ldifs_taps(model.config.vision.num_hidden_layers) if name == "ldifs" else ()
    loss = make_loss(image_encoder(model), regularizer, 0.0 if name == "none" else cfg.reg_lambda,
                     label_smoothing=cfg.label_smoothing, taps=taps)
    head = zeroshot.load_head(run, run.train_spec.label_space)
    state = init_state({"encoder": image_params(params), "head": head}, optimizer)
    sharding = parallel.state_shardings(state, run.mesh, fsdp=True) if cfg.fsdp else None
    step = make_train_step(loss, optimizer, schedule, run.mesh, sharding)
    use_cache = cfg.teacher_cache and name not in ("none", "ldifs")  # ldifs needs the frozen tokens, not f0
    teacher = pipeline.NpyRows(features.features_path(run)) if use_cache else None
    transform = train_transform(run.image_spec, tuple(cfg.crop_scale) if cfg.random_crop else None)
    batches = pipeline.train_batches(source, share=pipeline.Share.of_this_process(cfg.batch_size),
                                     seed=run.config.seed, transform=transform, teacher=teacher,
                                     num_workers=run.config.num_workers)
    directory = run.dir(STAGE, name)
    state, summary = train_loop(step, state, {"encoder": image_params(params), "sae": sae_params}, batches,
                                mesh=run.mesh, workdir=directory, total_steps=steps, log_every=cfg.log_every,
                                checkpoint_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints,
                                show_progress=run.config.show_progress, state_sharding=sharding)
    if summary["preempted"]:
        raise Preempted(f"fine-tuning {name!r} stopped at step {summary['steps']} of {steps} and saved a checkpoint "
                        f"in {directory / 'checkpoints'}; run the same command again to continue")
    tuned = jax.device_get(state["params"])
    if run.is_writer:
        hf.save_clip(model, {**params, **tuned["encoder"]}, directory / "final", tokenizer=run.tokenizer,
                     image_spec=run.image_spec)
        storage.save_safetensors(directory / "head.safetensors", tuned["head"])
    run.mark_done({"regularizer": name, "train": {k: summary[k] for k in ("steps", "final_loss", "final_ce")},
                   "fingerprint": fingerprint(tuned)}, STAGE, name)


def load_finetuned(run: Run, name: str) -> dict:
    """{"encoder", "head"} of fine-tuning run `name`, as saved."""
    directory = run.workdir / STAGE / name
    _, params = hf.load_clip(directory / "final")
    return {"encoder": image_params(params), "head": storage.load_safetensors(directory / "head.safetensors")}
