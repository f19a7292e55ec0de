"""The fine-tuning recipes (what a method trains, from where, with which loss), one registry entry each.

A recipe is a function `build(inputs: Inputs) -> Training` registered with `register`, which also
declares what the config checks and the report ask of it: its description and report label,
whether it reads the probe stage's head, whether it takes a regularizer, and whether gradient
accumulation keeps its loss. The finetune stage hands every recipe the same plain values
(`Inputs`) and trains (or publishes) what it returns, so adding a recipe is one decorated
function here (or registered from outside the package before the config is checked); nothing
else in the package looks at a recipe's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np

from saeft_jax.models.family import Model
from saeft_jax.training.flyp import make_flyp_loss
from saeft_jax.training.step import make_loss
from saeft_jax.zeroshot import build_zeroshot_head, caption_ids


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What a recipe builds its training from: the run's model, the method's bound penalty and
    weight, the training classes' prompts, and loaders of the heads it may start from."""

    model: Model
    penalty: Callable
    reg_lambda: float
    taps: tuple[int, ...]
    label_smoothing: float
    prompts: list[list[str]]  # per training class, its prompts
    templates: int  # how many caption templates the training set has
    flyp_logit_scale: str  # config.finetune.flyp_logit_scale
    show_progress: bool
    zeroshot_head: Callable[[], dict]  # the zero-shot head of the training classes
    probe_head: Callable[[], dict]  # the probe stage's head (only for a recipe that reads it)


@dataclasses.dataclass(frozen=True)
class Training:
    """What a recipe trains: the initial parameters, the loss (None: nothing is trained and the
    parameters are the method's model as they are), how many caption templates the batches draw
    from (0: none), what it adds to the frozen inputs of the step, how the trained parameters
    become {"encoder", "head"[, "text"]}, and which parameters weight decay applies to (None: all,
    the WiSE-FT protocol)."""

    params: dict
    loss: Callable | None
    templates: int = 0
    frozen: dict = dataclasses.field(default_factory=dict)
    tuned: Callable[[dict], dict] = lambda trained: trained
    decay_mask: Callable[[dict], dict] | None = None


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One registry entry. `label`: how the report's method line names it ("" for plain
    fine-tuning, which goes unnamed); `no_penalty` / `no_accumulation`: why it takes no
    regularizer / no gradient accumulation ("" when it does)."""

    name: str
    description: str
    build: Callable[[Inputs], Training]
    label: str = ""
    reads_probe: bool = False
    no_penalty: str = ""
    no_accumulation: str = ""


REGISTRY: dict[str, Recipe] = {}
DEFAULT = "finetune"


def register(
    name: str | None = None,
    *,
    description: str,
    label: str = "",
    reads_probe: bool = False,
    no_penalty: str = "",
    no_accumulation: str = "",
) -> Callable[[Callable[[Inputs], Training]], Callable[[Inputs], Training]]:
    """Registers the decorated `build(inputs) -> Training` as recipe `name` (default: the
    function's name)."""

    def add(build: Callable[[Inputs], Training]) -> Callable[[Inputs], Training]:
        entry_name = name or build.__name__
        if entry_name in REGISTRY:
            raise ValueError(f"recipe {entry_name!r} is registered already")
        REGISTRY[entry_name] = Recipe(entry_name, description, build, label, reads_probe, no_penalty, no_accumulation)
        return build

    return add


def get(name: str) -> Recipe:
    """The registry entry `name`; an unknown name is a `KeyError` that lists the known ones."""
    if name not in REGISTRY:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def descriptions() -> dict[str, str]:
    """{recipe: what it trains}, for the report's summary line."""
    return {name: recipe.description for name, recipe in REGISTRY.items()}


def _classifier(inputs: Inputs, head: dict) -> Training:
    """The image encoder and `head`, trained by cross-entropy plus the method's weighted penalty."""
    model = inputs.model
    loss = make_loss(
        model.image_encoder(),
        inputs.penalty,
        inputs.reg_lambda,
        label_smoothing=inputs.label_smoothing,
        taps=inputs.taps,
    )
    return Training({"encoder": model.image_params(), "head": head}, loss)


@register(description="the image encoder and the head, from the zero-shot head, cross-entropy (+ the penalty)")
def finetune(inputs: Inputs) -> Training:
    return _classifier(inputs, inputs.zeroshot_head())


@register(
    description="the head alone, by logistic regression on the frozen embeddings (stage probe)",
    label="linear probe",
    reads_probe=True,
    no_penalty=(
        "the linear probe trains the head on frozen embeddings, which a penalty on the encoder's features "
        "cannot change (LP-FT, recipe='lp_ft', fine-tunes from the probe and takes a regularizer)"
    ),
)
def linear_probe(inputs: Inputs) -> Training:
    """The zero-shot encoder with the probe's head, published as it is."""
    return Training({"encoder": inputs.model.image_params(), "head": inputs.probe_head()}, None)


@register(
    description="LP-FT: the image encoder and the head, from the linear probe's head (+ the penalty)",
    label="LP-FT",
    reads_probe=True,
)
def lp_ft(inputs: Inputs) -> Training:
    return _classifier(inputs, inputs.probe_head())


@register(
    description=(
        "FLYP: both towers and the loss's temperature (and SigLIP's bias), the model's own contrastive loss on "
        "captions of the labels (+ the penalty)"
    ),
    label="FLYP",
    no_accumulation=(
        "contrastive loss scores every image of the batch against every caption: micro-batches would score "
        "fewer pairs, another loss"
    ),
)
def flyp(inputs: Inputs) -> Training:
    """FLYP: both towers and the family's loss temperature (and bias), with the family's own
    pre-training loss on captions of the training classes; its head is then the zero-shot head of its
    own text tower (the training prompts, its own temperature). `flyp_logit_scale` "clip" clamps
    CLIP's logit_scale to [0, ln 100] and spares the scales weight decay; "flyp" leaves them free
    and decayed, as FLYP's code."""
    model, prompts = inputs.model, inputs.prompts
    as_flyp = inputs.flyp_logit_scale == "flyp"
    trainable = {"encoder": model.image_params(), "text": model.text_params(), "scales": model.scale_params()}
    loss = make_flyp_loss(model, inputs.penalty, inputs.reg_lambda, taps=inputs.taps, clamp_scales=not as_flyp)

    def tuned(trained: dict) -> dict:
        text = {**trained["text"], **model.published_scales(trained["scales"], clamp=not as_flyp)}
        head = build_zeroshot_head(model, prompts, params={**model.params, **text}, show_progress=inputs.show_progress)
        return {"encoder": trained["encoder"], "text": text, "head": {k: np.asarray(v) for k, v in head.items()}}

    def no_decay_on_scales(params: dict) -> dict:
        return {**jax.tree.map(lambda _: True, params), "scales": jax.tree.map(lambda _: False, params["scales"])}

    return Training(
        trainable,
        loss,
        templates=inputs.templates,
        frozen={"captions": caption_ids(model, prompts)},
        tuned=tuned,
        decay_mask=None if as_flyp else no_decay_on_scales,
    )
