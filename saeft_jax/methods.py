"""Fine-tuning methods: what `config.finetune.methods` holds and how it is checked.

The mapping's keys name the methods (their directories under `finetune/` and `evaluate/`, their
keys in the report); each value holds its `recipe` (what is trained: `saeft_jax.training.recipes`),
the `regularizer` it trains with, its weight `reg_lambda` and the hyperparameters of that
regularizer it sets. `method(...)` builds such an entry; `from_config` checks the mapping once
(`config.finish` calls it) into `Method` values, each hyperparameter the regularizer declares filled
with its default, so `--config.finetune.methods.<name>.<hyperparameter>=v` works for each of them
and a misspelt one is rejected by name before anything runs.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

import ml_collections

from saeft_jax import regularizers, storage
from saeft_jax.errors import ConfigError
from saeft_jax.sae import kinds as sae_kinds
from saeft_jax.training import recipes

SETTINGS = ("recipe", "regularizer", "reg_lambda", "sae", "checkpoint")  # a method's keys besides its hyperparameters
RESERVED = ("zeroshot",)  # the report's zero-shot run
FLOAT32_MAX = 3.4e38  # the largest value a key may hold: values are used in float32 on the device


def method(
    regularizer: str = "none",
    reg_lambda: float | None = None,
    *,
    recipe: str = recipes.DEFAULT,
    sae: str = "",
    checkpoint: str = "",
    **hparams: Any,
) -> ml_collections.ConfigDict:
    """A `config.finetune.methods` entry: its `recipe` (`saeft_jax.training.recipes`: plain
    fine-tuning, the linear probe, LP-FT, FLYP), `regularizer`, `reg_lambda` (required unless the
    regularizer penalizes nothing), for an SAE-based regularizer the name of its SAE in
    `config.saes` (`""`: the first SAE of the kind it reads, `main` if that is one, else by
    name), and the regularizer's hyperparameters it sets (the others keep their defaults, filled
    in by `config.finish`).
    `method(checkpoint=DIR)` is a model fine-tuned elsewhere (a Hugging Face CLIP directory, with
    its head in `head.safetensors` or else the zero-shot head of its own text tower): evaluated
    and analysed like the run's own, never trained."""
    entry = _entry(regularizer, "method(...)")
    where = f"method({regularizer!r}, ...)"
    _reject_unknown(entry, hparams, where)
    _recipe(recipe, entry, checkpoint, where, f"{where}: recipe")
    if checkpoint and entry.penalizes:
        raise ConfigError(
            f"{where}: a method with a checkpoint is not trained, so it takes no regularizer; use "
            f"method(checkpoint={checkpoint!r})."
        )
    return ml_collections.ConfigDict(
        {
            "recipe": recipe,
            "regularizer": regularizer,
            "reg_lambda": _reg_lambda(entry, reg_lambda, where),
            "sae": sae,
            "checkpoint": checkpoint,
            **hparams,
        }
    )


@dataclasses.dataclass(frozen=True)
class Method:
    """One fine-tuning method of a run, checked."""

    name: str
    regularizer: regularizers.Regularizer
    reg_lambda: float
    hparams: Mapping[str, Any]
    sae: str | None = None  # the name of its SAE in config.saes, for an SAE-based regularizer
    checkpoint: str | None = None  # a model fine-tuned elsewhere, imported instead of trained
    recipe: recipes.Recipe = dataclasses.field(default_factory=lambda: recipes.get(recipes.DEFAULT))

    @property
    def uses_probe(self) -> bool:
        """Whether its recipe reads the probe stage's head (the linear probe, LP-FT)."""
        return self.recipe.reads_probe

    def penalty(self):
        """The regularizer with this method's hyperparameters bound (`Regularizer.bind`)."""
        return self.regularizer.bind(self.hparams)

    @property
    def reference_raw_inputs(self) -> bool:
        """Whether its penalty feeds the SAE raw embeddings (the reference's behaviour)."""
        return bool(self.hparams.get("reference_raw_inputs", False))

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings: regularizer, reg_lambda, SAE and hyperparameters."""
        if self.checkpoint:
            return {"checkpoint": self.checkpoint}
        sae = {"sae": self.sae} if self.sae else {}
        return {
            "recipe": self.recipe.name,
            "regularizer": self.regularizer.name,
            "reg_lambda": self.reg_lambda,
            **sae,
            **self.hparams,
        }

    def label(self) -> str:
        """`name` (regularizer when it is not the name, reg_lambda, hyperparameters off their defaults)."""
        if self.checkpoint:
            return f"`{self.name}` (fine-tuned elsewhere: `{self.checkpoint}`)"
        recipe = [self.recipe.label] if self.recipe.label else []
        if not self.regularizer.penalizes:
            return f"`{self.name}` ({', '.join(recipe) or 'plain fine-tuning'})"
        parts = recipe + ([] if self.name == self.regularizer.name else [f"`{self.regularizer.name}`"])
        parts.append(f"reg_lambda {self.reg_lambda:g}")
        parts += [f"SAE `{self.sae}`"] if self.sae else []
        parts += [
            f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in self.hparams.items()
            if v != self.regularizer.hparams[k]
        ]
        return f"`{self.name}` ({', '.join(parts)})"


def from_config(
    methods: Mapping[str, Any], saes: tuple[str, ...] = ("main",), kinds: Mapping[str, str] | None = None
) -> dict[str, Method]:
    """The checked methods of `config.finetune.methods`, in order; `saes` are the SAE names of
    `config.saes` and `kinds` their kinds (default all `sae_kinds.DEFAULT`); an SAE-based method without an
    SAE uses the first of the kind its regularizer reads."""
    if not methods:
        raise ConfigError(
            "config.finetune.methods is empty; name at least one method, e.g. "
            "{'none': method('none'), 'sae_add_remove': method('sae_add_remove', reg_lambda=70.0)}"
        )
    checked = {}
    for name, settings in methods.items():
        where = f"config.finetune.methods.{name}"
        if name in RESERVED or not storage.is_plain_name(name):
            raise ConfigError(
                f"{where}: {name!r} cannot name a method: a method's name is a folder under "
                f"finetune/ and evaluate/ and a key of the report, so it is a plain name "
                f"({storage.PLAIN_NAME_RULE}) other than {', '.join(RESERVED)}."
            )
        settings = dict(settings)
        if "regularizer" not in settings and not settings.get("checkpoint"):  # a checkpoint is not trained
            raise ConfigError(
                f"{where} names no regularizer; set {where}.regularizer to one of {', '.join(regularizers.REGISTRY)}"
            )
        entry = _entry(settings.pop("regularizer", "none"), f"{where}.regularizer")
        reg_lambda = _reg_lambda(entry, settings.pop("reg_lambda", None), where)
        sae = _sae(entry, settings.pop("sae", ""), saes, kinds or {}, where)
        checkpoint = settings.pop("checkpoint", "") or None
        recipe = _recipe(settings.pop("recipe", recipes.DEFAULT), entry, checkpoint, where, f"{where}.recipe")
        if checkpoint and entry.penalizes:
            raise ConfigError(
                f"{where}: a method with a checkpoint is not trained, so it takes no regularizer "
                f"({entry.name!r} given); leave {where}.regularizer at 'none'."
            )
        _reject_unknown(entry, settings, where)
        for key, value in settings.items():
            _check_weight(f"{where}.{key}", value)
        checked[name] = Method(name, entry, reg_lambda, {**entry.hparams, **settings}, sae, checkpoint, recipe)
    return checked


def as_config(checked: Mapping[str, Method]) -> ml_collections.ConfigDict:
    """The `config.finetune.methods` of `checked`: every declared hyperparameter and each SAE name
    present, as the run's config.json records them."""
    return ml_collections.ConfigDict(
        {
            name: {
                "recipe": m.recipe.name,
                "regularizer": m.regularizer.name,
                "reg_lambda": m.reg_lambda,
                "sae": m.sae or "",
                "checkpoint": m.checkpoint or "",
                **m.hparams,
            }
            for name, m in checked.items()
        }
    )


def _check_weight(key: str, value: Any) -> None:
    """A hyperparameter is a weight of the loss (zero or more, finite) or a switch."""
    if isinstance(value, bool):
        return
    if not (isinstance(value, (int, float)) and 0 <= value < FLOAT32_MAX):
        raise ConfigError(
            f"{key} is {value!r}, which cannot work: it must be zero or more and finite (a weight of the "
            f"loss). Set it in the config file or with --{key}=..."
        )


def _recipe(name: str, entry: regularizers.Regularizer, checkpoint: str | None, where: str, key: str) -> recipes.Recipe:
    """The registered recipe `name`, which a checkpoint method (nothing trained) combines with no
    other recipe, and a recipe that declares `no_penalty` with no regularizer."""
    if name not in recipes.REGISTRY:
        close = difflib.get_close_matches(str(name), recipes.REGISTRY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        known = "; ".join(f"{r.name!r}: {r.description}" for r in recipes.REGISTRY.values())
        raise ConfigError(f"{key}: unknown recipe {name!r}{hint}. Known recipes: {known}.")
    recipe = recipes.REGISTRY[name]
    if checkpoint and name != recipes.DEFAULT:
        raise ConfigError(
            f"{where}: a method with a checkpoint is imported, not trained, so it takes no recipe "
            f"({name!r} given); leave the recipe at {recipes.DEFAULT!r}."
        )
    if recipe.no_penalty and entry.penalizes:
        raise ConfigError(f"{where}: {recipe.no_penalty}; leave its regularizer at 'none'.")
    return recipe


def _sae(
    entry: regularizers.Regularizer, sae: str, saes: tuple[str, ...], kinds: Mapping[str, str], where: str
) -> str | None:
    if not entry.uses_sae:
        if sae:
            raise ConfigError(f"{where}.sae is {sae!r}, but regularizer {entry.name!r} uses no SAE; leave it empty.")
        return None
    if sae and sae not in saes:
        raise ConfigError(f"{where}.sae is {sae!r}, which config.saes does not name; it names {', '.join(saes)}.")
    usable = [name for name in saes if kinds.get(name, sae_kinds.DEFAULT) == entry.sae_kind]
    if sae and sae not in usable or not usable:
        given = f"config.saes.{sae} is of kind {kinds.get(sae, sae_kinds.DEFAULT)!r}" if sae else "config.saes has none"
        example = (
            "" if sae_kinds.get(entry.sae_kind).trained else ", dict_size=16"
        )  # a basis as wide as the reference's
        raise ConfigError(
            f"{where}: regularizer {entry.name!r} reads an SAE of kind {entry.sae_kind!r}, but {given}; "
            f"add one, e.g. config.saes.{entry.sae_kind} = sae_settings(kind={entry.sae_kind!r}"
            f"{example}), and name it in {where}.sae."
        )
    return sae or usable[0]


def _entry(name: str, where: str) -> regularizers.Regularizer:
    if name not in regularizers.REGISTRY:
        close = difflib.get_close_matches(name, regularizers.REGISTRY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: unknown regularizer {name!r}{hint}; known: {', '.join(regularizers.REGISTRY)}")
    return regularizers.REGISTRY[name]


def unknown_hparam_hints(name: str) -> list[str]:
    """What a user who wrote the undeclared hyperparameter `name` probably wants."""
    if name == "normalize":
        return [
            "an SAE is given embeddings as it was trained (unit norm); reference_raw_inputs=True gives it raw "
            "ones, as the reference code does without --normalize"
        ]
    return []


def _reg_lambda(entry: regularizers.Regularizer, reg_lambda: float | None, where: str) -> float:
    if not entry.penalizes:
        return float(reg_lambda or 0.0)
    if reg_lambda is not None and not (isinstance(reg_lambda, (int, float)) and 0 <= reg_lambda < FLOAT32_MAX):
        key = f"{where}.reg_lambda" if where.startswith("config.") else f"{where}: reg_lambda"
        raise ConfigError(
            f"{key} is {reg_lambda!r}: regularizer {entry.name!r} needs a positive, finite weight (the "
            f"loss is CE + reg_lambda * R, so a negative one rewards the change the penalty measures)."
        )
    if not reg_lambda:
        why = "0 would make it plain fine-tuning, which is method('none')" if reg_lambda == 0 else "none is given"
        how = f"--{where}.reg_lambda=1" if where.startswith("config.") else f"method({entry.name!r}, reg_lambda=1.0)"
        raise ConfigError(
            f"{where}: regularizer {entry.name!r} needs a positive weight reg_lambda (the loss is "
            f"CE + reg_lambda * R; {why}); set it, e.g. {how}."
        )
    return float(reg_lambda)


def _reject_unknown(entry: regularizers.Regularizer, hparams: Mapping[str, Any], where: str) -> None:
    unknown = sorted(set(hparams) - set(entry.hparams))
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, entry.hparams, n=1)
        if close:
            hints.append(f"{name!r}: did you mean {close[0]!r}?")
        hints += unknown_hparam_hints(name)
    declared = ", ".join(f"{n} (default {v!r})" for n, v in entry.hparams.items()) or "none"
    raise ConfigError(
        f"{where}: regularizer {entry.name!r} has no hyperparameter {', '.join(unknown)}"
        f"{' (' + '; '.join(hints) + ')' if hints else ''}. Its hyperparameters: {declared}; a method "
        f"also takes {', '.join(SETTINGS)}."
    )
