"""Stage sae: the Top-K SAE trained on the training features (`sae/sae.safetensors` +
`sae.json`, per-epoch metrics, the firing histogram), resumable epoch by epoch."""

from __future__ import annotations

import jax

from saeft_jax.sae.artifact import META_FILE, PARAMS_FILE, load_sae, save_sae
from saeft_jax.sae.frozen import FrozenSAE
from saeft_jax.sae.training import train_sae
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
        save_sae(directory, FrozenSAE(params, cfg.k, relu=cfg.relu), options=options, metrics=metrics)
        record = {**{key: float(metrics[key]) for key in ("fvu", "mse", "l0", "dead_fraction")},
                  "dict_size": cfg.dict_size, "k": cfg.k, "relu": cfg.relu}
    run.mark_done(record, STAGE, files=("sae.safetensors", "sae.json"), inputs=(("features",),))


def load(run: Run) -> FrozenSAE:
    """The run's SAE, checked against its recorded hashes and the model's embedding width."""
    for name in (PARAMS_FILE, META_FILE):
        run.read((STAGE,), name)
    model, _ = run.clip
    return load_sae(run.workdir / STAGE, d=model.config.projection_dim)
