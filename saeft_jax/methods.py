"""Fine-tuning methods: what `config.finetune.methods` holds and how it is checked.

The mapping's keys name the methods (their directories under `finetune/` and `evaluate/`, their
keys in the report); each value holds its `recipe` (what is trained: `RECIPES`), the
`regularizer` it trains with, its weight `reg_lambda` and every hyperparameter that regularizer
declares. `method(...)` builds such an entry with the
declared defaults filled in, so `--config.finetune.methods.<name>.<hyperparameter>=v` works for
each of them and a misspelt one is rejected by name before anything runs.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

import ml_collections

from saeft_jax import regularizers, storage
from saeft_jax.errors import ConfigError

SETTINGS = ("recipe", "regularizer", "reg_lambda", "sae", "checkpoint")  # a method's keys besides its hyperparameters
RESERVED = ("zeroshot",)  # the report's zero-shot run

RECIPES = {  # what a method trains, and from where
    "finetune": "the image encoder and the head, from the zero-shot head, cross-entropy (+ the penalty)",
    "linear_probe": "the head alone, by logistic regression on the frozen embeddings (stage probe)",
    "lp_ft": "LP-FT: the image encoder and the head, from the linear probe's head (+ the penalty)",
    "flyp": (
        "FLYP: both towers and the loss's temperature (and SigLIP's bias), the model's own contrastive loss on "
        "captions of the labels (+ the penalty)"
    ),
}
RECIPE_LABELS = {"linear_probe": "linear probe", "lp_ft": "LP-FT", "flyp": "FLYP"}  # in the report's method lines
PROBE_RECIPES = ("linear_probe", "lp_ft")  # the recipes that read the probe stage's head


def method(
    regularizer: str = "none",
    reg_lambda: float | None = None,
    *,
    recipe: str = "finetune",
    sae: str = "",
    checkpoint: str = "",
    **hparams: Any,
) -> ml_collections.ConfigDict:
    """A `config.finetune.methods` entry: its `recipe` (`RECIPES`: plain fine-tuning, the
    linear probe, LP-FT or FLYP), `regularizer`, `reg_lambda` (required unless the
    regularizer penalizes nothing), for an SAE-based regularizer the name of its SAE in
    `config.saes` (`""`: the first SAE of the kind it reads, `main` if that is one, else by
    name), and every hyperparameter the regularizer declares (its default unless given here).
    `method(checkpoint=DIR)` is a model fine-tuned elsewhere (a Hugging Face CLIP directory, with
    its head in `head.safetensors` or else the zero-shot head of its own text tower): evaluated
    and analysed like the run's own, never trained."""
    entry = _entry(regularizer, "method(...)")
    where = f"method({regularizer!r}, ...)"
    _reject_unknown(entry, hparams, where)
    _check_recipe(recipe, entry, checkpoint, where, f"{where}: recipe")
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
            **entry.hparams,
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
    recipe: str = "finetune"  # what it trains (RECIPES)

    @property
    def uses_probe(self) -> bool:
        """Whether it reads the probe stage's head (the linear probe, LP-FT)."""
        return self.recipe in PROBE_RECIPES

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
            "recipe": self.recipe,
            "regularizer": self.regularizer.name,
            "reg_lambda": self.reg_lambda,
            **sae,
            **self.hparams,
        }

    def label(self) -> str:
        """`name` (regularizer when it is not the name, reg_lambda, hyperparameters off their defaults)."""
        if self.checkpoint:
            return f"`{self.name}` (fine-tuned elsewhere: `{self.checkpoint}`)"
        recipe = [] if self.recipe == "finetune" else [RECIPE_LABELS[self.recipe]]
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
    `config.saes` and `kinds` their kinds (default all "topk"); an SAE-based method without an
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
        recipe = settings.pop("recipe", "finetune")
        _check_recipe(recipe, entry, checkpoint, where, f"{where}.recipe")
        if checkpoint and entry.penalizes:
            raise ConfigError(
                f"{where}: a method with a checkpoint is not trained, so it takes no regularizer "
                f"({entry.name!r} given); leave {where}.regularizer at 'none'."
            )
        settings = _without_other_defaults(entry, settings)
        _reject_unknown(entry, settings, where)
        checked[name] = Method(name, entry, reg_lambda, {**entry.hparams, **settings}, sae, checkpoint, recipe)
    return checked


def filled(
    methods: ml_collections.ConfigDict, saes: tuple[str, ...], kinds: Mapping[str, str] | None = None
) -> ml_collections.ConfigDict:
    """`methods` with every declared hyperparameter and each SAE name present (a config that
    wrote an entry by hand, or switched a regularizer)."""
    checked = from_config(methods, saes, kinds)
    return ml_collections.ConfigDict(
        {
            name: {
                "recipe": m.recipe,
                "regularizer": m.regularizer.name,
                "reg_lambda": m.reg_lambda,
                "sae": m.sae or "",
                "checkpoint": m.checkpoint or "",
                **m.hparams,
            }
            for name, m in checked.items()
        }
    )


def _check_recipe(recipe: str, entry: regularizers.Regularizer, checkpoint: str | None, where: str, key: str) -> None:
    """A known recipe, which a linear probe (nothing but the head trained) and a checkpoint method
    (nothing trained) combine with no regularizer and the other recipes."""
    if recipe not in RECIPES:
        close = difflib.get_close_matches(str(recipe), RECIPES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        known = "; ".join(f"{name!r}: {what}" for name, what in RECIPES.items())
        raise ConfigError(f"{key}: unknown recipe {recipe!r}{hint}. Known recipes: {known}.")
    if checkpoint and recipe != "finetune":
        raise ConfigError(
            f"{where}: a method with a checkpoint is imported, not trained, so it takes no recipe "
            f"({recipe!r} given); leave the recipe at 'finetune'."
        )
    if recipe == "linear_probe" and entry.penalizes:
        raise ConfigError(
            f"{where}: the linear probe trains the head on frozen embeddings, which a penalty on the "
            f"encoder's features cannot change; leave its regularizer at 'none' (LP-FT, "
            f"recipe='lp_ft', fine-tunes from the probe and takes a regularizer)."
        )


def _sae(
    entry: regularizers.Regularizer, sae: str, saes: tuple[str, ...], kinds: Mapping[str, str], where: str
) -> str | None:
    if not entry.uses_sae:
        if sae:
            raise ConfigError(f"{where}.sae is {sae!r}, but regularizer {entry.name!r} uses no SAE; leave it empty.")
        return None
    if sae and sae not in saes:
        raise ConfigError(f"{where}.sae is {sae!r}, which config.saes does not name; it names {', '.join(saes)}.")
    usable = [name for name in saes if kinds.get(name, "topk") == entry.sae_kind]
    if sae and sae not in usable or not usable:
        given = f"config.saes.{sae} is of kind {kinds.get(sae, 'topk')!r}" if sae else "config.saes has none"
        raise ConfigError(
            f"{where}: regularizer {entry.name!r} reads an SAE of kind {entry.sae_kind!r}, but {given}; "
            f"add one, e.g. config.saes.{entry.sae_kind} = sae_settings(kind={entry.sae_kind!r}"
            f"{', dict_size=16' if entry.sae_kind == 'pca' else ''}), and name it in {where}.sae."
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
    if not reg_lambda:
        why = "0 would make it plain fine-tuning, which is method('none')" if reg_lambda == 0 else "none is given"
        how = f"--{where}.reg_lambda=1" if where.startswith("config.") else f"method({entry.name!r}, reg_lambda=1.0)"
        raise ConfigError(
            f"{where}: regularizer {entry.name!r} needs a positive weight reg_lambda (the loss is "
            f"CE + reg_lambda * R; {why}); set it, e.g. {how}."
        )
    return float(reg_lambda)


def _without_other_defaults(entry: regularizers.Regularizer, settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` less the hyperparameters another regularizer declares, at that one's default: what
    is left of an entry built for another regularizer when its regularizer is switched (on the
    command line, say), so that the switch brings the new regularizer's defaults instead."""

    def leftover(name: str, value: Any) -> bool:
        return name not in entry.hparams and any(
            name in other.hparams and other.hparams[name] == value for other in regularizers.REGISTRY.values()
        )

    return {name: value for name, value in settings.items() if not leftover(name, value)}


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
