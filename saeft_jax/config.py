"""The run configuration: every key with its default (`base_config`), and its validation.

Config files in `configs/` start from `base_config()` and change what they need; the result is
locked, so a misspelt key in a file or in a `--config.a.b=v` override is an error naming it.
Fine-tuning methods are entries of `finetune.methods`, built with `method(...)` (`saeft_jax.methods`).
"""

from __future__ import annotations

import difflib

import ml_collections

from saeft_jax import methods
from saeft_jax.errors import ConfigError
from saeft_jax.evaluation.analyses import ANALYSES
from saeft_jax.evaluation.wise import DEFAULT_ALPHAS
from saeft_jax.methods import method

STAGES = ("zeroshot", "features", "sae", "finetune", "evaluate", "report")


def base_config() -> ml_collections.ConfigDict:
    """All keys, with the defaults of docs/method.md (the ViT-B/16 ImageNet protocol)."""
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
        "methods": ml_collections.ConfigDict({"none": method("none"),
                                              "sae_add_remove": method("sae_add_remove", reg_lambda=70.0)}),
        "batch_size": 512, "epochs": 10, "steps": 0,  # steps > 0 overrides epochs
        "lr": 1e-5, "warmup_steps": 500, "weight_decay": 0.1, "clip_norm": 1.0, "label_smoothing": 0.0,
        "accumulate_steps": 1, "random_crop": True, "crop_scale": (0.9, 1.0), "teacher_cache": False,
        "fsdp": False, "log_every": 10, "checkpoint_every": 500, "keep_checkpoints": 2})
    c.evaluate = ml_collections.ConfigDict({"batch_size": 256, "alphas": DEFAULT_ALPHAS})
    c.report = ml_collections.ConfigDict({"analyses": tuple(ANALYSES), "concepts": (), "top_features": 6,
                                          "images_per_feature": 8, "classes_shown": 10})
    c.lock()  # a misspelt key in a config file fails where it is written, naming the key
    c.finetune.methods.unlock()  # methods are added by name
    return c


def finish(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks every key and value and the relations between values, fills each method with its
    regularizer's declared hyperparameters, and locks the config against new keys. A key that
    `base_config` lacks or a value that cannot work is a `ConfigError` naming it and what would work."""
    _check_keys(c)
    for key, ok, wanted in _RULES:
        _expect(c, key, ok, wanted)
    _check_relations(c)
    unknown = [s for s in c.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"config.stages has unknown stages {unknown}; known: {STAGES}")
    unknown = [a for a in c.report.analyses if a not in ANALYSES]
    if unknown:
        raise ConfigError(f"config.report.analyses has unknown analyses {unknown}; known: {', '.join(ANALYSES)}")
    with c.unlocked():
        c.finetune.methods = methods.filled(c.finetune.methods)
    for name, method_settings in c.finetune.methods.items():
        for key, value in method_settings.items():
            if key != "regularizer":
                _expect(c, f"finetune.methods.{name}.{key}", _non_negative,
                        "zero or more and finite (a weight of the loss)")
    c.lock()
    return c


def _keys(c: ml_collections.ConfigDict, prefix: str = "") -> set[str]:
    """Every key of `c`, dotted; the methods mapping is checked by `saeft_jax.methods` instead."""
    out = set()
    for key, value in c.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict) and name != "finetune.methods":
            out |= _keys(value, f"{name}.")
        else:
            out.add(name)
    return out


def _check_keys(c: ml_collections.ConfigDict) -> None:
    known, given = _keys(base_config()), _keys(c)
    for unknown in sorted(given - known):
        close = difflib.get_close_matches(unknown, known, n=1)
        raise ConfigError(f"config.{unknown} is not a key of the run configuration"
                          f"{f' (did you mean config.{close[0]}?)' if close else ''}; the keys and their defaults "
                          f"are in saeft_jax/config.py (base_config).")
    missing = sorted(known - given)
    if missing:
        raise ConfigError(f"the config lacks {', '.join(f'config.{k}' for k in missing)}; a config file starts from "
                          f"saeft_jax.config.base_config() and changes what it needs.")


_FLOAT32_MAX = 3.4e38  # values are used in float32 on the device


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < _FLOAT32_MAX


def _non_negative(value) -> bool:
    if isinstance(value, bool):  # a switch, not a weight
        return True
    return isinstance(value, (int, float)) and 0 <= value < _FLOAT32_MAX


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _non_negative_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


_RULES = (
    ("finetune.lr", _positive, "a positive, finite learning rate (the protocol's is 1e-5)"),
    ("sae.lr", _positive, "a positive, finite learning rate (the reference's is 1e-3)"),
    ("finetune.clip_norm", _positive, "a positive gradient-norm bound (the protocol's is 1.0)"),
    ("finetune.weight_decay", _non_negative, "zero or more and finite"),
    ("finetune.label_smoothing", lambda v: _non_negative(v) and v < 1, "in [0, 1)"),
    ("sae.dict_size", _positive_int, "a positive number of latents"),
    ("sae.k", _positive_int, "at least 1 (the latents kept per embedding)"),
    ("sae.batch_size", _positive_int, "a positive batch size"),
    ("sae.epochs", _positive_int, "at least 1"),
    ("sae.b_pre_init", lambda v: v in ("zeros", "mean", "median"), "'zeros', 'mean' or 'median'"),
    ("features.batch_size", _positive_int, "a positive batch size"),
    ("features.chunk_steps", _positive_int, "at least 1 batch per chunk"),
    ("finetune.batch_size", _positive_int, "a positive batch size"),
    ("finetune.steps", _non_negative_int, "0 (the length comes from finetune.epochs) or a positive step count"),
    ("finetune.epochs", _non_negative_int, "zero or more"),
    ("finetune.warmup_steps", _non_negative_int, "zero or more steps"),
    ("finetune.accumulate_steps", _positive_int, "at least 1 micro-batch per update"),
    ("finetune.log_every", _positive_int, "at least 1 step"),
    ("finetune.checkpoint_every", _positive_int, "at least 1 step"),
    ("finetune.keep_checkpoints", _positive_int, "at least 1"),
    ("evaluate.batch_size", _positive_int, "a positive batch size"),
    ("num_workers", _non_negative_int, "0 (reader threads only) or a number of worker processes"),
    ("report.top_features", _non_negative_int, "zero or more"),
    ("report.images_per_feature", _positive_int, "at least 1"),
    ("report.classes_shown", _non_negative_int, "zero or more"),
    ("demo.pretrain_steps", _positive_int, "at least 1 step"),
    ("demo.pretrain_batch_size", _positive_int, "a positive batch size"),
    ("dtype", lambda v: v in ("float32", "bfloat16"), "'float32' or 'bfloat16'"),
)


def _expect(c: ml_collections.ConfigDict, key: str, ok, wanted: str) -> None:
    value = c
    for part in key.split("."):
        value = value[part]
    if not ok(value):
        raise ConfigError(f"config.{key} is {value!r}, which cannot work: it must be {wanted}. Set it in the config "
                          f"file or with --config.{key}=...")


def _check_relations(c: ml_collections.ConfigDict) -> None:
    if c.sae.k > c.sae.dict_size:
        raise ConfigError(f"config.sae.k ({c.sae.k}) exceeds config.sae.dict_size ({c.sae.dict_size}): an SAE cannot "
                          f"keep more latents than it has; lower k or raise dict_size (the paper: k = d/32, F = 4d).")
    ft = c.finetune
    if not ft.steps and not ft.epochs:
        raise ConfigError("config.finetune.steps and config.finetune.epochs are both 0, so fine-tuning has no length; "
                          "set one of them (epochs=10 in the protocol).")
    if ft.steps and ft.warmup_steps >= ft.steps:
        raise ConfigError(f"config.finetune.warmup_steps ({ft.warmup_steps}) must be below "
                          f"config.finetune.steps ({ft.steps})")
    scale = tuple(ft.crop_scale)
    if len(scale) != 2 or not all(_positive(v) for v in scale) or not scale[0] <= scale[1] <= 1:
        raise ConfigError(f"config.finetune.crop_scale is {scale!r}; it must be (low, high) with 0 < low <= high <= 1, "
                          f"the fraction of the image a random crop keeps ((0.9, 1.0) in the protocol).")
    bad = [a for a in c.evaluate.alphas if not (_non_negative(a) and a <= 1)]
    if bad:
        raise ConfigError(f"config.evaluate.alphas holds {bad}, outside [0, 1]: a WiSE-FT weight mixes the zero-shot "
                          f"(0) and fine-tuned (1) models, so it lies between them.")
