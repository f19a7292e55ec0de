"""The analyses of what fine-tuning changed, one registry entry each, run by the report for
every method on every dataset; `config.report.analyses` names those a run computes.

An analysis takes a `Comparison` (one dataset's images under the zero-shot and a fine-tuned
model, their labels and the run's SAE) and returns named figures, which go to report.json under
`changes_by_dataset` (and, for the in-distribution set, `changes`). An analysis across datasets
(`across_datasets=True`) takes a `MethodComparison` instead (one method on every dataset, with the
head that scores each) and its figures go to the method's entry of report.json. Codes and FVUs are
computed once per set of embeddings however many analyses use them. An analysis declares the
columns it gives report.md's table of what changed (`columns`: header -> a format string over its
figures), which the report renders whatever the analysis; adding an analysis is one decorated
function here.
"""

from __future__ import annotations

import dataclasses
import functools
import string
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from saeft_jax.evaluation import effects, interpret
from saeft_jax.sae.frozen import FrozenSAE
from saeft_jax.sae.quality import data_statistics, evaluate_sae


@dataclasses.dataclass
class Embeddings:
    """One model's embeddings (N, d) of a dataset's images, with what the SAE makes of them."""

    values: np.ndarray
    sae: FrozenSAE | None
    mesh: object = None  # the devices the SAE's FVU is computed on (default: all)

    @functools.cached_property
    def codes(self) -> interpret.Codes:
        """Top-k codes (values, indices) under the SAE as it was trained."""
        return self.sae.codes(self.values)

    @functools.cached_property
    def statistics(self) -> dict:
        """Mean and total variance per image of the embeddings as the SAE sees them."""
        return data_statistics(self.values, self.sae.normalize_inputs)

    @functools.cached_property
    def quality(self) -> dict:
        """The SAE's FVU, MSE, L0 and dead latents on these embeddings."""
        return evaluate_sae(self.sae, self.values, mesh=self.mesh, stats=self.statistics)


@dataclasses.dataclass
class Comparison:
    """A dataset's images under the zero-shot and one fine-tuned model."""

    zeroshot: Embeddings
    finetuned: Embeddings
    labels: np.ndarray
    num_classes: int
    indices: np.ndarray | None = None  # each row's example in the dataset's source

    @functools.cached_property
    def changes(self) -> interpret.FeatureChanges:
        return interpret.count_changes(
            self.zeroshot.codes, self.finetuned.codes, self.labels, self.zeroshot.sae.dict_size, self.num_classes
        )


@dataclasses.dataclass
class MethodComparison:
    """One method on every dataset it was evaluated on (the suite's and the validation split)."""

    comparisons: dict[str, Comparison]
    scorers: dict[str, effects.Scorer]  # how the method classifies each dataset (head, label-space projection)
    in_distribution: str  # the dataset whose changes rank them
    settings: object  # config.report


@dataclasses.dataclass(frozen=True)
class Analysis:
    """One registry entry: the function, whether it needs an SAE, whether it takes one method on
    every dataset, and its columns in report.md ({header: format string over its figures})."""

    name: str
    compute: Callable[[Comparison], dict[str, float]] | Callable[[MethodComparison], dict]
    uses_sae: bool
    across_datasets: bool = False
    columns: Mapping[str, str] = dataclasses.field(default_factory=dict)


ANALYSES: dict[str, Analysis] = {}


def analysis(*, uses_sae: bool, across_datasets: bool = False, columns: Mapping[str, str] | None = None) -> Callable:
    """Registers the decorated function as an analysis of that name. `columns` maps each column
    header of report.md's table of what changed to a format string over the analysis's figures
    (e.g. `{"CKA": "{cka:.3f}"}`; a figure the run lacks reads "n/a"); the figures are those on the
    in-distribution set, or the method's own for an analysis `across_datasets`. A second analysis
    of a name, or a column report.md cannot render, is a `ValueError` here, not in the report stage."""
    columns = dict(columns or {})

    def add(compute: Callable) -> Callable:
        name = compute.__name__
        if name in ANALYSES:
            raise ValueError(f"analysis {name!r} is registered already")
        for header, template in columns.items():
            _check_column(name, header, template)
        ANALYSES[name] = Analysis(name, compute, uses_sae, across_datasets, columns)
        return compute

    return add


def _check_column(name: str, header: str, template: str) -> None:
    """Refuses a column report.md's table cannot render: a header or cell that is not one line
    without '|', a broken format string, a field that is not a figure's name (`{figure:spec}`, no
    position, attribute, index or conversion), or a format spec that no number takes."""
    where = f"analysis {name!r}: column {header!r}"
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ValueError(f"{where}: {template!r} is not a format string ({error})") from None
    literal = "".join(text for text, _, _, _ in parts)
    if not header.strip() or any(c in header + literal for c in "|\n"):
        raise ValueError(f"{where}: a header and a cell ({template!r}) are each one line without '|' (a table's)")
    fields = [(field, spec, conversion) for _, field, spec, conversion in parts if field is not None]
    if not fields:
        raise ValueError(f"{where} formats no figure ({template!r})")
    for field, spec, conversion in fields:
        if not field.isidentifier() or conversion:
            raise ValueError(f"{where}: {{{field}...}} in {template!r} names no figure; write {{figure:spec}}")
        if not any(_formats(value, spec) for value in (0.5, 1)):
            raise ValueError(f"{where}: format spec {spec!r} of {field!r} in {template!r} formats no number")


def _formats(value: float, spec: str) -> bool:
    try:
        format(value, spec)
    except (ValueError, TypeError):
        return False
    return True


def report_columns() -> list[dict[str, Any]]:
    """The columns every registered analysis declares, in registration order, as JSON for the
    renderer: {"analysis", "header", "format", "scope": "dataset" | "method"} (where its figures are:
    a dataset's `changes_by_dataset` entry, or the method's entry of report.json)."""
    return [
        {
            "analysis": a.name,
            "header": header,
            "format": template,
            "scope": "method" if a.across_datasets else "dataset",
        }
        for a in ANALYSES.values()
        for header, template in a.columns.items()
    ]


def run_analyses(names, comparison: Comparison) -> dict[str, float]:
    """The figures of analyses `names` on `comparison` (those needing an SAE skipped without one)."""
    figures: dict[str, float] = {}
    for name in names:
        entry = ANALYSES[name]
        if not entry.across_datasets and (comparison.zeroshot.sae is not None or not entry.uses_sae):
            figures.update(entry.compute(comparison))
    return figures


def run_method_analyses(names, method: MethodComparison) -> dict:
    """The figures of the analyses across datasets among `names` on `method` (those needing an SAE
    skipped without one)."""
    figures: dict = {}
    has_sae = next(iter(method.comparisons.values())).zeroshot.sae is not None
    for name in names:
        entry = ANALYSES[name]
        if entry.across_datasets and (has_sae or not entry.uses_sae):
            figures.update(entry.compute(method))
    return figures


@analysis(
    uses_sae=True, columns={"added / image": "{added_per_image:.2f}", "removed / image": "{removed_per_image:.2f}"}
)
def feature_changes(c: Comparison) -> dict[str, float]:
    """Features added (in the fine-tuned codes' support, not the zero-shot one's) and removed, per image."""
    return {"added_per_image": c.changes.added_per_image, "removed_per_image": c.changes.removed_per_image}


@analysis(uses_sae=True, across_datasets=True)
def feature_effects(m: MethodComparison) -> dict:
    """The accuracy each of the `report.effects_top` most frequent in-distribution feature changes
    costs or buys on every dataset, undone one at a time in the SAE's input space, and undoing all
    added, all removed and both at once (`saeft_jax.evaluation.effects`)."""
    changes = effects.top_changes(m.comparisons[m.in_distribution].changes, m.settings.effects_top)
    return effects.method_effects(
        {name: (c.zeroshot, c.finetuned, c.labels, m.scorers[name]) for name, c in m.comparisons.items()}, changes
    )


@analysis(
    uses_sae=True,
    columns={
        "SAE FVU": "{sae_fvu:.3f} ({sae_fvu_zeroshot:.3f})",
        "error / variance": "{sae_error:.3f} / {variance:.3f}",
    },
)
def sae_fvu(c: Comparison) -> dict[str, float]:
    """How well the zero-shot SAE reconstructs the fine-tuned embeddings (and the zero-shot ones),
    with FVU's two parts: the squared reconstruction error per image and the embeddings' total
    variance per image (FVU = error / variance), since a representation that contracts raises FVU
    even at a smaller error."""
    figures = {}
    for suffix, embeddings in (("", c.finetuned), ("_zeroshot", c.zeroshot)):
        figures[f"sae_fvu{suffix}"] = float(embeddings.quality["fvu"])
        figures[f"sae_error{suffix}"] = float(embeddings.quality["mse"] * embeddings.statistics["d"])
        figures[f"variance{suffix}"] = float(embeddings.statistics["variance_per_example"])
    return figures


@analysis(uses_sae=True)
def code_magnitude(c: Comparison) -> dict[str, float]:
    """The mean L1 norm of an image's codes, fine-tuned and zero-shot: a penalty on features that
    appear can be met by weakening every code, which moves the embeddings where the dictionary
    responds little."""
    return {
        "code_l1": float(np.abs(c.finetuned.codes[0]).sum(1).mean()),
        "code_l1_zeroshot": float(np.abs(c.zeroshot.codes[0]).sum(1).mean()),
    }


@analysis(uses_sae=False, columns={"CKA (reference's)": "{cka:.3f} ({cka_reference:.3f})"})
def cka(c: Comparison) -> dict[str, float]:
    """Linear CKA between the zero-shot and fine-tuned representations over the images (`cka`,
    WiSE-FT's Eq. 10), and beside it the reference's variant over the feature dimensions
    (`cka_reference`, `interpret.reference_cka`), to compare with its numbers."""
    return {
        "cka": interpret.linear_cka(c.zeroshot.values, c.finetuned.values),
        "cka_reference": interpret.reference_cka(c.zeroshot.values, c.finetuned.values),
    }
