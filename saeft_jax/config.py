"""The run configuration: every key with its default, description and rule (`KEYS`, from which
`base_config` is built and `finish` checks), and its validation.

Config files in `configs/` start from `base_config()` and change what they need; `finish` checks
the result (a misspelt key in a file or in a `--config.a.b=v` override is an error naming it)
and locks it.
Fine-tuning methods are entries of `finetune.methods`, built with `method(...)` (`saeft_jax.methods`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from saeft_jax import methods, storage
from saeft_jax.data.labels import CORRUPTIONS, EXTRA_CORRUPTIONS, SEVERITIES
from saeft_jax.errors import ConfigError
from saeft_jax.evaluation.analyses import ANALYSES
from saeft_jax.evaluation.wise import DEFAULT_ALPHAS
from saeft_jax.methods import method
from saeft_jax.sae import kinds

STAGES = ("zeroshot", "features", "sae", "probe", "finetune", "evaluate", "report")


@dataclasses.dataclass(frozen=True)
class Key:
    """One key of the run configuration, written in one place (`KEYS`): its dotted `name`, its
    `default` (a function for the name-keyed mappings `saes` and `finetune.methods`, called for
    each config, which changes them in place), what it means (`doc`), and the `rule` its value must
    meet with the words `finish` says when it does not (`wanted`); no rule: any value, or one
    checked with others (`finish`'s relation checks) or entry by entry (the mappings)."""

    name: str
    default: Any
    doc: str = ""
    rule: Callable[[Any], bool] | None = None
    wanted: str = ""


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < methods.FLOAT32_MAX


def _non_negative(value) -> bool:
    if isinstance(value, bool):  # a switch, not a weight
        return True
    return isinstance(value, (int, float)) and 0 <= value < methods.FLOAT32_MAX


# Counts, sizes and seeds end up in int32 device arrays and in NumPy's and grain's seeds: a larger
# integer overflows there (OverflowError) long after the run started, so every integer key stays below.
_INT_MAX = 2**31 - 1


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _INT_MAX


def _non_negative_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _INT_MAX


def _wandb_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("wandb") is not None


_BATCH = "a positive batch size"

# Every key by section (finish checks the rules in this order), with docs/method.md's defaults (ViT-B/16, ImageNet).
KEYS = (
    Key("model", "openai/clip-vit-base-patch16", "Hugging Face id or local directory"),
    Key(
        "dtype",
        "float32",
        "compute dtype (parameters stay float32)",
        lambda v: v in ("float32", "bfloat16"),
        "'float32' or 'bfloat16'",
    ),
    Key("remat", False, "recompute the encoder's activations in the backward pass (less memory)"),
    Key("data_dir", "", "TFDS data dir and prepared datasets; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets"),
    Key("train_dataset", "imagenet_train", "the fine-tuning data"),
    Key(
        "eval_suite", "imagenet", "a suite's name, or dataset names 'a,b' (the first in distribution, the rest shifts)"
    ),
    Key("templates_file", "", "prompts of NAME/SPLIT folder datasets, one a line with {} ('': the preparation's)"),
    Key(
        "seed",
        0,
        "seeds the data order, the SAE and the held-out rows",
        _non_negative_int,
        "an integer from 0 on (it seeds the data order, the SAE and the held-out rows)",
    ),
    Key(
        "num_workers",
        0,
        "grain worker processes per host (0: reader threads only)",
        _non_negative_int,
        "0 (reader threads only) or a number of worker processes",
    ),
    Key("stages", STAGES, "the stages to run, of STAGES"),
    Key("show_progress", True, "progress bars"),
    Key(
        "wandb_project",
        "",
        "also send the training curves to this W&B project ('' = TensorBoard files only)",
        lambda v: v == "" or (isinstance(v, str) and _wandb_installed()),
        "'' unless the wandb package is installed (pip install wandb; WANDB_MODE=offline logs without an account)",
    ),
    Key("demo.enabled", False, "run the demo's own small CLIP on its digits (config.model 'demo')"),
    Key("demo.cache_dir", "~/.cache/saeft_jax", "where the demo's data and pretrained model are kept"),
    Key(
        "demo.pretrain_steps",
        1000,
        "the demo model's pretraining steps",
        lambda v: _positive_int(v) and v > 100,
        "more than 100 steps (its warm-up)",
    ),
    Key("demo.pretrain_batch_size", 128, "the demo model's pretraining batch", _positive_int, _BATCH),
    Key("demo.finetune_style", "colored", "the demo's fine-tuning digits"),
    Key(
        "demo.family",
        "clip",
        "the demo model's family: 'clip' or 'siglip'",
        lambda v: v in ("clip", "siglip"),
        "'clip' or 'siglip' (the family of the demo's own model)",
    ),
    Key("features.batch_size", 256, "images per feature-extraction batch", _positive_int, _BATCH),
    Key("features.chunk_steps", 64, "batches per saved chunk", _positive_int, "at least 1 batch per chunk"),
    Key(
        "saes", lambda: ml_collections.ConfigDict({"main": sae_settings()}), "name -> sae_settings(...); see sae_names"
    ),
    # the linear probe (recipes linear_probe and lp_ft): logistic regression with weight l2 / 2 * ||W||^2,
    # L-BFGS until the gradient norm is under `tolerance` (saeft_jax.training.probe); of several l2s the
    # one best on the validation split (finetune.val_dataset / val_fraction) is kept
    Key(
        "probe.l2s",
        (1e-4, 1e-5, 1e-6),
        "the probe's weights, chosen between on the validation split",
        lambda v: isinstance(v, (tuple, list)) and len(v) > 0 and all(_positive(x) for x in v),
        "one or more positive weights, e.g. (1e-5,) (the probe's logistic regression is then strictly convex)",
    ),
    Key("probe.max_iterations", 1000, "L-BFGS iterations at most", _positive_int, "at least 1 L-BFGS iteration"),
    Key(
        "probe.tolerance",
        1e-5,
        "the gradient norm L-BFGS stops under",
        _positive,
        "a positive bound on the gradient norm",
    ),
    Key(
        "finetune.methods",
        lambda: ml_collections.ConfigDict(
            {"none": method("none"), "sae_add_remove": method("sae_add_remove", reg_lambda=70.0)}
        ),
        "name -> method(...) (saeft_jax.methods)",
    ),
    Key("finetune.batch_size", 512, "images per update", _positive_int, _BATCH),
    Key("finetune.epochs", 10, "passes over the training data", _non_negative_int, "zero or more"),
    Key(
        "finetune.steps",
        0,
        "steps > 0 overrides epochs",
        _non_negative_int,
        "0 (the length comes from finetune.epochs) or a positive step count",
    ),
    # the validation split every selection (the WiSE-FT alpha) is made on: a dataset of its own
    # (e.g. WILDS id_val) or a fraction held out of the training set; neither: nothing selected
    Key("finetune.val_dataset", "", "a validation dataset of its own"),
    Key(
        "finetune.val_fraction",
        0.0,
        "a fraction of the training set held out for validation",
        lambda v: _non_negative(v) and v <= 0.5,
        "in [0, 0.5] (0: no held-out split)",
    ),
    # score the model on the validation split every eval_every updates (0: never); "best_val" makes the
    # best of those checkpoints (ties: the earlier step) the method's model, "last" the last step's
    Key(
        "finetune.eval_every",
        0,
        "updates between validation scores",
        _non_negative_int,
        "0 (no validation during fine-tuning) or a number of updates",
    ),
    Key(
        "finetune.select_checkpoint",
        "last",
        "which checkpoint is the method's model",
        lambda v: v in ("last", "best_val"),
        "'last' (the last step's model) or 'best_val' (the checkpoint best on the validation split)",
    ),
    Key(
        "finetune.lr",
        1e-5,
        "the peak learning rate",
        _positive,
        "a positive, finite learning rate (WiSE-FT's is 3e-5 at batch 512, the reference README's 1e-5 at batch 32)",
    ),
    Key("finetune.warmup_steps", 500, "linear warm-up steps", _non_negative_int, "zero or more steps"),
    Key("finetune.weight_decay", 0.1, "AdamW's weight decay", _non_negative, "zero or more and finite"),
    Key(
        "finetune.clip_norm",
        1.0,
        "the gradient-norm bound",
        _positive,
        "a positive gradient-norm bound (the protocol's is 1.0)",
    ),
    Key("finetune.label_smoothing", 0.0, "label smoothing", lambda v: _non_negative(v) and v < 1, "in [0, 1)"),
    Key(
        "finetune.accumulate_steps",
        1,
        "micro-batches per update",
        _positive_int,
        "at least 1 micro-batch per update",
    ),
    Key("finetune.random_crop", True, "random resized crops of the training images"),
    Key("finetune.crop_scale", (0.9, 1.0), "the fraction of the image a random crop keeps"),
    Key("finetune.teacher_cache", False, "keep the zero-shot model's features instead of recomputing them"),
    Key("finetune.fsdp", False, "shard the parameters and optimiser state over the devices"),
    Key("finetune.log_every", 10, "steps between logged training figures", _positive_int, "at least 1 step"),
    Key("finetune.checkpoint_every", 500, "steps between checkpoints", _positive_int, "at least 1 step"),
    Key("finetune.keep_checkpoints", 2, "checkpoints kept", _positive_int, "at least 1"),
    Key(
        "finetune.flyp_logit_scale",
        "clip",
        "FLYP's logit_scale: 'clip' (clamped to [0, ln 100], no weight decay) or 'flyp' (FLYP's: free, decayed)",
        lambda v: v in ("clip", "flyp"),
        "'clip' (clamped to [0, ln 100], no weight decay) or 'flyp' (free and decayed, as FLYP's code)",
    ),
    Key("evaluate.batch_size", 256, "images per evaluation batch", _positive_int, _BATCH),
    Key("evaluate.alphas", DEFAULT_ALPHAS, "the WiSE-FT weights scored"),
    # what CIFAR-10-C / CIFAR-100-C read: these corruptions (default: the benchmark's 15) at this severity (1-5)
    Key("corruptions.names", CORRUPTIONS, "the corruptions CIFAR-10-C / -100-C read"),
    Key("corruptions.severity", 5, "their severity (1-5)"),
    Key("report.analyses", tuple(ANALYSES), "the analyses of the fine-tuning's changes"),
    Key("report.concepts", (), "words the features are also named by"),
    Key("report.top_features", 6, "features explained per method", _non_negative_int, "zero or more"),
    Key("report.images_per_feature", 8, "images shown per feature", _positive_int, "at least 1"),
    Key("report.classes_shown", 10, "classes shown per feature", _non_negative_int, "zero or more"),
    Key("report.browser_features", 300, "features in the feature browser", _positive_int, "at least 1"),
    Key("report.browser_images", 6, "images per feature in the browser", _positive_int, "at least 1"),
    Key(
        "report.effects_top",
        20,
        "feature_effects: how many of the most frequent ID changes are undone",
        _non_negative_int,
        "zero or more",
    ),
)


def base_config() -> ml_collections.ConfigDict:
    """Every key of `KEYS` with its default (docs/method.md's ViT-B/16 ImageNet protocol)."""
    c = ml_collections.ConfigDict()
    for key in KEYS:
        *groups, last = key.name.split(".")
        parent = c
        for group in groups:
            if group not in parent:
                parent[group] = ml_collections.ConfigDict()
            parent = parent[group]
        parent[last] = key.default() if callable(key.default) else key.default
    return c  # unlocked: `finish` names a key it does not define, then locks it


def sae_names(c: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The SAEs of `config.saes`, the default first: `main` when there is one, else the first by
    name. An SAE-based method without `sae` uses the default; the report reads every method in
    its vocabulary."""
    return tuple(sorted(c.saes, key=lambda name: (name != "main", name)))


def sae_kinds(c: ml_collections.ConfigDict) -> dict[str, str]:
    """{SAE name: its kind} (a name of `saeft_jax.sae.kinds.REGISTRY`: "topk", "pca", ...)."""
    return {name: c.saes[name].kind for name in sae_names(c)}


def sae_settings(**changes) -> ml_collections.ConfigDict:
    """A `config.saes` entry: the defaults of `saeft_jax.sae.kinds.Settings` (the reference's SAE)
    with `changes`."""
    unknown = sorted(set(changes) - set(kinds.DEFAULTS))
    if unknown:
        raise ConfigError(
            f"sae_settings(...) has no setting {', '.join(unknown)}; its settings: {', '.join(kinds.DEFAULTS)}"
        )
    return ml_collections.ConfigDict({**kinds.DEFAULTS, **changes})


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A checked run configuration (what `finish` returns): the locked config, every key filled (as
    the workdir's config.json records it), and what is parsed from it once: the methods and the SAEs'
    settings, which the run reads instead of the config's copies."""

    config: ml_collections.ConfigDict
    methods: Mapping[str, methods.Method]
    saes: Mapping[str, kinds.Settings]  # in `sae_names` order: the default first


def finish(c: ml_collections.ConfigDict) -> RunConfig:
    """Checks every key and value and the relations between values, fills each method with its
    regularizer's declared hyperparameters and each SAE with the default settings, and locks the
    config. A key that `base_config` lacks or a value that cannot work is a `ConfigError` naming it
    and what would work."""
    _check_keys(c)
    for key in KEYS:
        if key.rule is not None:
            _expect(c, key.name, key.rule, key.wanted)
    _check_relations(c)
    _check_corruptions(c)
    _check_demo_model(c)
    unknown = [s for s in c.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"config.stages has unknown stages {unknown}; known: {STAGES}")
    unknown = [a for a in c.report.analyses if a not in ANALYSES]
    if unknown:
        raise ConfigError(f"config.report.analyses has unknown analyses {unknown}; known: {', '.join(ANALYSES)}")
    saes = _check_saes(c)
    checked = methods.from_config(c.finetune.methods, sae_names(c), sae_kinds(c))
    with c.unlocked():
        c.finetune.methods = methods.as_config(checked)
    _check_accumulation(c, checked)
    _check_probe(c, checked)
    c.lock()
    return RunConfig(c, types.MappingProxyType(checked), types.MappingProxyType(saes))


# The mappings whose keys are names the config file chooses (methods, SAEs), checked on their own.
NAME_KEYED = ("finetune.methods", "saes")


def _keys(c: ml_collections.ConfigDict, prefix: str = "") -> set[str]:
    """Every key of `c`, dotted; the name-keyed mappings (methods, SAEs) are checked on their own."""
    out = set()
    for key, value in c.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict) and name not in NAME_KEYED:
            out |= _keys(value, f"{name}.")
        else:
            out.add(name)
    return out


def _unknown_key(unknown: str, known: set[str]) -> ConfigError:
    close = difflib.get_close_matches(unknown, known, n=1)
    return ConfigError(
        f"config.{unknown} is not a key of the run configuration"
        f"{f' (did you mean config.{close[0]}?)' if close else ''}; the keys and their defaults "
        f"are in saeft_jax/config.py (base_config)."
    )


def check_override_keys(keys: list[str]) -> None:
    """A `ConfigError` for the first dotted key of `--config.<key>=<value>` overrides that names no
    key of `base_config` (ml_collections refuses such an override before `finish` could name it);
    keys inside the name-keyed mappings (`finetune.methods.<name>`, `saes.<name>`) are the config
    file's to define and pass."""
    known, named = _keys(base_config()), tuple(f"{mapping}." for mapping in NAME_KEYED)
    for key in keys:
        if key in known or key.startswith(named) or any(k.startswith(f"{key}.") for k in known):
            continue
        leaf = next((k for k in known if key.startswith(f"{k}.")), None)
        if leaf is not None:
            raise ConfigError(
                f"config.{key} is not a key of the run configuration: config.{leaf} is a value, not a "
                f"group of keys; set it as --config.{leaf}=<value>."
            )
        raise _unknown_key(key, known)


def _check_keys(c: ml_collections.ConfigDict) -> None:
    known, given = _keys(base_config()), _keys(c)
    for unknown in sorted(given - known):
        raise _unknown_key(unknown, known)
    missing = sorted(known - given)
    if missing:
        raise ConfigError(
            f"the config lacks {', '.join(f'config.{k}' for k in missing)}; a config file starts from "
            f"saeft_jax.config.base_config() and changes what it needs."
        )


def _expect(c: ml_collections.ConfigDict, key: str, ok, wanted: str) -> None:
    value = c
    for part in key.split("."):
        value = value[part]
    if not ok(value):
        if isinstance(value, int) and not isinstance(value, bool) and value > _INT_MAX:
            wanted += f", at most 2**31 - 1 = {_INT_MAX}"
        raise ConfigError(
            f"config.{key} is {value!r}, which cannot work: it must be {wanted}. Set it in the config "
            f"file or with --config.{key}=..."
        )


_SAE_RULES = (
    ("lr", _positive, "a positive, finite learning rate (the reference's is 1e-3)"),
    ("dict_size", _positive_int, "a positive number of latents"),
    ("k", _positive_int, "at least 1 (the latents kept per embedding)"),
    ("batch_size", _positive_int, "a positive batch size"),
    ("epochs", _positive_int, "at least 1"),
    ("b_pre_init", lambda v: v in ("zeros", "mean", "median"), "'zeros', 'mean' or 'median'"),
    ("kind", lambda v: v in kinds.REGISTRY, "a registered kind (saeft_jax.sae.kinds)"),
)


def _check_saes(c: ml_collections.ConfigDict) -> dict[str, kinds.Settings]:
    """Every SAE: a plain name, known settings (the missing ones filled with defaults), workable
    values, its kind's rules. Returns the settings by name, the default SAE first."""
    if not c.saes:
        raise ConfigError("config.saes is empty; name at least one SAE, e.g. {'main': sae_settings()}")
    with c.unlocked():
        for name in list(c.saes):
            where = f"config.saes.{name}"
            if not storage.is_plain_name(name):
                raise ConfigError(
                    f"{where}: {name!r} cannot name an SAE: it is a folder under sae/, so a plain name "
                    f"({storage.PLAIN_NAME_RULE})."
                )
            unknown = sorted(set(c.saes[name]) - set(kinds.DEFAULTS))
            if unknown:
                close = difflib.get_close_matches(unknown[0], kinds.DEFAULTS, n=1)
                raise ConfigError(
                    f"{where}.{unknown[0]} is not an SAE setting"
                    f"{f' (did you mean {close[0]}?)' if close else ''}; the settings: "
                    f"{', '.join(kinds.DEFAULTS)}."
                )
            c.saes[name] = ml_collections.ConfigDict({**kinds.DEFAULTS, **c.saes[name]})
            for key, ok, wanted in _SAE_RULES:
                if key == "kind" and not ok(c.saes[name].kind):
                    wanted = "one of " + "; ".join(f"{k.name!r} ({k.description})" for k in kinds.REGISTRY.values())
                _expect(c, f"saes.{name}.{key}", ok, wanted)
            c.saes[name] = ml_collections.ConfigDict(kinds.get(c.saes[name].kind).check(where, c.saes[name].to_dict()))
    return {name: kinds.Settings(**c.saes[name]) for name in sae_names(c)}


def _check_probe(c: ml_collections.ConfigDict, checked: dict[str, methods.Method]) -> None:
    """Several probe weights are chosen between on the validation split, so a run needs one."""
    users = [name for name, checked_method in checked.items() if checked_method.recipe.reads_probe]
    if users and len(c.probe.l2s) > 1 and not (c.finetune.val_dataset or c.finetune.val_fraction):
        raise ConfigError(
            f"config.probe.l2s lists {len(c.probe.l2s)} weights for the linear probe of "
            f"{', '.join(users)}, which are chosen between on the validation split, but this run has "
            f"none; set config.finetune.val_dataset or val_fraction, or name one weight, e.g. "
            f"--config.probe.l2s='(1e-5,)'."
        )


def _check_accumulation(c: ml_collections.ConfigDict, checked: dict[str, methods.Method]) -> None:
    """Gradient accumulation averages a loss over micro-batches: right for a mean over rows only."""
    if c.finetune.accumulate_steps == 1:
        return
    for name, checked_method in checked.items():
        entry, recipe = checked_method.regularizer, checked_method.recipe
        if recipe.no_accumulation:
            label = recipe.label or recipe.name
            raise ConfigError(
                f"config.finetune.methods.{name} is {label}, whose {recipe.no_accumulation}; but "
                f"config.finetune.accumulate_steps is {c.finetune.accumulate_steps}. Set "
                f"accumulate_steps=1 (with a batch that fits, or config.remat / finetune.fsdp) for {label}."
            )
        if not entry.batch_mean:
            raise ConfigError(
                f"config.finetune.methods.{name} uses {entry.name!r}, a penalty of the whole batch (a "
                f"matrix norm), but config.finetune.accumulate_steps is {c.finetune.accumulate_steps}: "
                f"averaged over micro-batches it would be another penalty. Set accumulate_steps=1 "
                f"(with a batch that fits) for this method's run."
            )


def _check_corruptions(c: ml_collections.ConfigDict) -> None:
    """CIFAR-10-C / -100-C read `corruptions.names` (known ones, each once) at `corruptions.severity`."""
    names, severity, known = c.corruptions.names, c.corruptions.severity, CORRUPTIONS + EXTRA_CORRUPTIONS
    how = '--config.corruptions.names=\'("fog", "snow")\''
    if isinstance(names, str) or not names:
        raise ConfigError(
            f"config.corruptions.names is {names!r}; it must be a tuple of one or more corruption names "
            f"from {', '.join(known)} (e.g. {how})."
        )
    unknown = [n for n in names if n not in known]
    if unknown or len(set(names)) < len(names):
        what = f"has unknown corruptions {unknown}" if unknown else f"names a corruption twice ({list(names)})"
        raise ConfigError(
            f"config.corruptions.names {what}; CIFAR-10-C and CIFAR-100-C have {', '.join(known)} (the "
            f"first 15 are the benchmark's and the default). Set it with {how}."
        )
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise ConfigError(
            f"config.corruptions.severity is {severity!r}; it must be an integer from 1 to 5 (the "
            f"strength of the CIFAR-10-C / -100-C corruptions; 5 in the reference). Set it with "
            f"--config.corruptions.severity=3."
        )


def _check_demo_model(c: ml_collections.ConfigDict) -> None:
    """The demo runs its own CLIP (config.model "demo"), which nothing else builds."""
    if c.demo.enabled and c.model != "demo":
        raise ConfigError(
            f"config.model is {c.model!r}, but config.demo.enabled runs the demo's own small CLIP, "
            f"pretrained on its digits (config.model 'demo'), and takes no other model. Leave "
            f"config.model out with configs/demo.py, or run {c.model!r} with a config of its own "
            f"(e.g. configs/vitb16.py, or --config.demo.enabled=False with your data)."
        )


def _check_relations(c: ml_collections.ConfigDict) -> None:
    ft = c.finetune
    if not ft.steps and not ft.epochs:
        raise ConfigError(
            "config.finetune.steps and config.finetune.epochs are both 0, so fine-tuning has no length; "
            "set one of them (epochs=10 in the protocol)."
        )
    if ft.steps and ft.warmup_steps >= ft.steps:
        raise ConfigError(
            f"config.finetune.warmup_steps ({ft.warmup_steps}) must be below config.finetune.steps ({ft.steps})"
        )
    if ft.select_checkpoint == "best_val" and not ft.eval_every:
        raise ConfigError(
            "config.finetune.select_checkpoint is 'best_val', but config.finetune.eval_every is 0, so no "
            "checkpoint is scored on validation; set --config.finetune.eval_every=N (updates between "
            "scores) or select_checkpoint='last'."
        )
    if ft.eval_every and not (ft.val_dataset or ft.val_fraction):
        raise ConfigError(
            f"config.finetune.eval_every is {ft.eval_every}, but this run has no validation split to "
            f"score on; set config.finetune.val_dataset (a split of its own) or "
            f"config.finetune.val_fraction (held out of the training set), or eval_every=0."
        )
    if ft.val_dataset and ft.val_fraction:
        raise ConfigError(
            f"config.finetune.val_dataset ({ft.val_dataset!r}) and config.finetune.val_fraction "
            f"({ft.val_fraction}) both name a validation split; keep one."
        )
    scale = tuple(ft.crop_scale)
    if len(scale) != 2 or not all(_positive(v) for v in scale) or not scale[0] <= scale[1] <= 1:
        raise ConfigError(
            f"config.finetune.crop_scale is {scale!r}; it must be (low, high) with 0 < low <= high <= 1, "
            f"the fraction of the image a random crop keeps ((0.9, 1.0) in the protocol)."
        )
    bad = [a for a in c.evaluate.alphas if not (_non_negative(a) and a <= 1)]
    if bad:
        raise ConfigError(
            f"config.evaluate.alphas holds {bad}, outside [0, 1]: a WiSE-FT weight mixes the zero-shot "
            f"(0) and fine-tuned (1) models, so it lies between them."
        )
    fine = [a for a in c.evaluate.alphas if abs(round(a, 2) - a) > 1e-9]
    if fine:
        raise ConfigError(
            f"config.evaluate.alphas holds {fine}, with more than two decimals; the sweep names each "
            f"weight by two at most (0.25), so round them (e.g. {[round(a, 2) for a in fine]})."
        )
