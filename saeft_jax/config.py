"""The run configuration: every key with its default (`base_config`), and its validation.

Config files in `configs/` start from `base_config()` and change what they need; the result is
locked, so a misspelt key in a file or in a `--config.a.b=v` override is an error naming it.
"""

from __future__ import annotations

import ml_collections

from saeft_jax import regularizers
from saeft_jax.evaluation.wise import DEFAULT_ALPHAS

STAGES = ("zeroshot", "features", "sae", "finetune", "evaluate", "report")


def base_config() -> ml_collections.ConfigDict:
    """All keys, with the METHOD.md defaults (ViT-B/16 ImageNet protocol)."""
    c = ml_collections.ConfigDict()
    c.model = "openai/clip-vit-base-patch16"  # Hugging Face id or local directory
    c.dtype = "float32"  # compute dtype: float32 or bfloat16 (parameters stay float32)
    c.remat = False
    c.data_dir = ""  # TFDS data dir and prepared datasets; "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.train_dataset = "imagenet_train"
    c.eval_suite = "imagenet"
    c.seed = 0
    c.num_workers = 0  # grain worker processes per host (0: reader threads only)
    c.stages = STAGES
    c.show_progress = True
    c.demo = ml_collections.ConfigDict({"enabled": False, "cache_dir": "~/.cache/saeft_jax", "pretrain_steps": 1000,
                                        "pretrain_batch_size": 128, "finetune_style": "colored"})

    c.features = ml_collections.ConfigDict({"batch_size": 256, "chunk_steps": 64})
    c.sae = ml_collections.ConfigDict({
        "dict_size": 2048, "k": 16, "batch_size": 1024, "epochs": 100, "lr": 1e-3,
        "auxk": False, "renorm_decoder": False, "relu": False, "b_enc": False, "tied_init": False,
        "b_pre_init": "zeros"})
    c.finetune = ml_collections.ConfigDict({
        "regularizers": ("none", "sae_add_remove"), "reg_lambda": 70.0,
        "reg_hparams": ml_collections.ConfigDict({name: ml_collections.ConfigDict() for name in regularizers.NAMES}),
        "batch_size": 512, "epochs": 10, "steps": 0,  # steps > 0 overrides epochs
        "lr": 1e-5, "warmup_steps": 500, "weight_decay": 0.1, "clip_norm": 1.0, "label_smoothing": 0.0,
        "accumulate_steps": 1, "random_crop": True, "crop_scale": (0.9, 1.0), "teacher_cache": False,
        "fsdp": False, "log_every": 10, "checkpoint_every": 500, "keep_checkpoints": 2})
    c.evaluate = ml_collections.ConfigDict({"batch_size": 256, "alphas": DEFAULT_ALPHAS})
    c.report = ml_collections.ConfigDict({"concepts": (), "top_features": 6, "images_per_feature": 8,
                                          "classes_shown": 10})
    return c


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


def finish(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks values a type check cannot and locks the config against new keys."""
    unknown = [s for s in c.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"config.stages has unknown stages {unknown}; known: {STAGES}")
    bad = [r for r in c.finetune.regularizers if r not in regularizers.NAMES]
    if bad:
        raise ConfigError(f"config.finetune.regularizers has unknown names {bad}; known: {regularizers.NAMES}")
    if c.finetune.steps and c.finetune.warmup_steps >= c.finetune.steps:
        raise ConfigError(f"config.finetune.warmup_steps ({c.finetune.warmup_steps}) must be below "
                          f"config.finetune.steps ({c.finetune.steps})")
    if c.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"config.dtype must be float32 or bfloat16; got {c.dtype!r}")
    c.lock()
    return c
