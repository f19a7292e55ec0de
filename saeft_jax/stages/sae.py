"""Stage sae: the Top-K SAE trained on the training features (`sae.safetensors` + `sae.json`,
per-epoch metrics, the firing histogram), resumable epoch by epoch."""

from __future__ import annotations

import jax

from saeft_jax.sae_artifact import load_sae, save_sae
from saeft_jax.sae_training import train_sae
from saeft_jax.stages.context import Run
from saeft_jax.stages.features import load_features

STAGE = "sae"
OPTIONS = ("auxk", "renorm_decoder", "relu", "b_enc", "tied_init", "b_pre_init")


def run_stage(run: Run) -> None:
    """Process 0 trains on its own devices (the SAE is small next to fine-tuning); the others wait.
    Epoch checkpoints are kept on a single-process run only: Orbax saves arrays of all processes
    together, and these live on process 0 alone (a stopped multi-host SAE stage starts over)."""
    record = None
    if run.is_writer:
        cfg = run.config.sae
        directory = run.dir(STAGE)
        options = {name: cfg[name] for name in OPTIONS}
        params, metrics = train_sae(
            load_features(run), dict_size=cfg.dict_size, k=cfg.k, batch_size=cfg.batch_size, epochs=cfg.epochs,
            lr=cfg.lr, seed=run.config.seed,
            checkpoint_dir=str(directory / "checkpoints") if jax.process_count() == 1 else None,
            metrics_path=str(directory / "metrics.jsonl"), histogram_path=str(directory / "firing.png"),
            progress=run.config.show_progress, devices=tuple(jax.local_devices()), **options)
        save_sae(directory, params, k=cfg.k, options=options, metrics=metrics)
        record = {key: float(metrics[key]) for key in ("fvu", "mse", "l0", "dead_fraction")}
    run.mark_done(record, STAGE)


def load(run: Run) -> tuple[dict, dict]:
    """(SAE parameters, its sae.json), checked against the model's embedding width."""
    model, _ = run.clip
    return load_sae(run.workdir / STAGE, d=model.config.projection_dim)
