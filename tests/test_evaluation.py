"""WiSE-FT sweep, evaluation and the interpretability measures against direct computations."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY

from saeft_jax import parallel
from saeft_jax.data.preprocess import ImageSpec, clip_eval
from saeft_jax.data.registry import DatasetSpec
from saeft_jax.evaluation import interpret, wise
from saeft_jax.evaluation.evaluate import evaluate_dataset
from saeft_jax.models.clip import CLIP, image_encoder, image_params, init_params
from saeft_jax.models.heads import classify
from saeft_jax.sae import model as sae
from saeft_jax.sae.frozen import FrozenSAE


class ImageSource:
    def __init__(self, n: int, classes: int):
        rng = np.random.RandomState(0)
        self.images = [rng.randint(0, 256, (36 + i % 5, 40, 3), dtype=np.uint8) for i in range(n)]
        self.labels = rng.randint(0, classes, n)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": int(self.labels[i]), "group": i % 2}


@pytest.fixture(scope="module")
def pair():
    model = CLIP(TINY)
    params = init_params(model, jax.random.PRNGKey(0))
    head = {"W": jax.random.normal(jax.random.PRNGKey(1), (3, TINY.projection_dim)) * 10, "b": jnp.zeros(3)}
    theta0 = {"encoder": image_params(params), "head": head}
    noise = jax.random.PRNGKey(2)
    theta_ft = jax.jit(lambda t: jax.tree.map(lambda x: x + 0.3 * jax.random.normal(noise, x.shape), t))(theta0)
    return image_encoder(model), theta0, theta_ft


def test_mix_endpoints_are_exact(pair):
    _, theta0, theta_ft = pair
    for alpha, expected in ((0.0, theta0), (1.0, theta_ft)):
        mixed = wise.mix(theta0, theta_ft, jnp.float32(alpha))
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), mixed, expected)
    half = wise.mix(theta0, theta_ft, 0.5)
    np.testing.assert_allclose(half["head"]["W"], (theta0["head"]["W"] + theta_ft["head"]["W"]) / 2, rtol=1e-6)


def test_single_pass_sweep_equals_separate_evaluations(pair):
    encoder, theta0, theta_ft = pair
    spec = DatasetSpec(
        "toy", "prepared", "toy", "test", "toy", ("{}",), logit_sets=((0, 2), (1,)), fixed_classnames=("a", "b")
    )
    source = ImageSource(11, 2)
    mesh = parallel.data_mesh()
    result = evaluate_dataset(
        encoder,
        theta0,
        theta_ft,
        spec,
        source,
        image_spec=ImageSpec(size=32),
        mesh=mesh,
        global_batch=4,
        alphas=(0.5, 0.3),
        show_progress=False,
    )
    assert result.alphas == (0.0, 0.3, 0.5, 1.0)
    assert result.predictions.shape == (4, 11) and sorted(result.indices) == list(range(11))
    images = np.stack([clip_eval(source[i]["image"], 32) for i in result.indices])
    for row, alpha in enumerate(result.alphas):
        theta = wise.mix(theta0, theta_ft, alpha)
        embeddings = encoder.apply({"params": theta["encoder"]}, images)
        logits = np.asarray(classify(theta["head"], embeddings))
        expected = np.stack([np.maximum(logits[:, 0], logits[:, 2]), logits[:, 1]], axis=1).argmax(1)
        np.testing.assert_array_equal(result.predictions[row], expected)
        assert result.scores[alpha] == pytest.approx(np.mean(expected == source.labels[result.indices]))
        if alpha in (0.0, 1.0):
            stored = result.zeroshot_embeddings if alpha == 0.0 else result.finetuned_embeddings
            np.testing.assert_allclose(stored, embeddings, rtol=1e-5, atol=2e-5)
    assert result.summary()["scores"]["0.3"] == result.scores[0.3]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_the_zeroshot_row_is_the_zeroshot_model_whatever_the_finetuned_one_holds(pair, bad):
    """alpha 0 is theta0 itself: 0 * NaN (or 0 * inf) of the other model never reaches it."""
    encoder, theta0, theta_ft = pair
    broken = {**theta_ft, "head": {"W": theta_ft["head"]["W"].at[0, 0].set(bad), "b": theta_ft["head"]["b"]}}
    images = np.stack([clip_eval(ImageSource(6, 2)[i]["image"], 32) for i in range(6)])
    sweep = wise.make_sweep(encoder, lambda logits: logits, (0.5,), parallel.data_mesh(devices=jax.devices()[:1]))
    predictions, embeddings = sweep(theta0, broken, images)
    direct = encoder.apply({"params": theta0["encoder"]}, images)  # no mix at all
    np.testing.assert_array_equal(predictions[0], np.argmax(np.asarray(classify(theta0["head"], direct)), -1))
    np.testing.assert_allclose(embeddings[0], direct, rtol=1e-6, atol=1e-6)


def hsic_cka(x, y):
    """CKA through Gram matrices and the centering matrix (Kornblith et al. 2019, eq. for HSIC)."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    gram_x, gram_y = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)
    return hsic(gram_x, gram_y) / np.sqrt(hsic(gram_x, gram_x) * hsic(gram_y, gram_y))


def test_linear_cka_properties():
    rng = np.random.RandomState(0)
    x = rng.randn(60, 8)
    y = x @ rng.randn(8, 5) + 0.5 * rng.randn(60, 5)
    assert interpret.linear_cka(x, x) == pytest.approx(1.0)
    q, _ = np.linalg.qr(rng.randn(8, 8))
    assert interpret.linear_cka(x @ q * 3.7, y) == pytest.approx(interpret.linear_cka(x, y))
    assert interpret.linear_cka(x, y) == pytest.approx(hsic_cka(x, y))
    assert interpret.linear_cka(x, rng.randn(60, 5)) < 0.5


def test_feature_changes_on_a_hand_built_example():
    # F = 5, k = 2. Image 0 (class 0): {1, 3} -> {1, 4}: adds 4, removes 3.
    # Image 1 (class 1): {0, 2} -> {0, 2}: no change. Image 2 (class 0): {1, 2} -> {3, 4}: adds 3, 4; removes 1, 2.
    codes0 = (np.array([[1.0, 2.0], [1.0, 1.0], [0.5, 0.5]]), np.array([[1, 3], [0, 2], [1, 2]]))
    codes_t = (np.array([[1.5, 1.0], [2.0, 1.0], [1.0, 3.0]]), np.array([[1, 4], [0, 2], [3, 4]]))
    changes = interpret.count_changes(codes0, codes_t, np.array([0, 1, 0]), 5, 2)
    assert changes.added_per_image == pytest.approx(3 / 3) and changes.removed_per_image == pytest.approx(3 / 3)
    np.testing.assert_array_equal(changes.added_count, [0, 0, 0, 1, 2])
    np.testing.assert_array_equal(changes.removed_count, [0, 1, 1, 1, 0])
    np.testing.assert_allclose(
        changes.mean_change, [(2 - 1) / 3, (1.5 - 1 - 0.5) / 3, (1 - 1 - 0.5) / 3, (-2 + 1) / 3, (1 + 3) / 3]
    )
    np.testing.assert_array_equal(changes.class_added[0], [0, 0, 0, 1, 2])
    np.testing.assert_array_equal(changes.class_added[1], 0)
    rows = changes.top_per_class(["zero", "one"], top=2)
    assert rows[0]["class"] == "zero" and rows[0]["added_per_image"] == 1.5 and rows[0]["top_added"] == [(4, 2), (3, 1)]
    assert rows[1]["added_per_image"] == 0 and rows[1]["top_added"] == []


def test_codes_names_and_top_images():
    rng = np.random.RandomState(0)
    params = sae.init_params(jax.random.PRNGKey(0), 6, 12)
    embeddings = rng.randn(20, 6).astype(np.float32) * 4
    values, indices = FrozenSAE(params, 3).codes(embeddings)
    expected = np.asarray(sae.encode(params, sae.unit_norm(embeddings), 3))
    dense = np.zeros((20, 12), np.float32)
    np.put_along_axis(dense, indices, values, 1)
    np.testing.assert_allclose(dense, expected, rtol=1e-5, atol=1e-6)
    atoms = np.eye(3, 4)
    text = np.array([[0, 1, 0, 0], [1, 0.1, 0, 0], [0, 0, -1, 0]], np.float32)
    names = interpret.name_features(atoms, text, ["one", "zero", "minus two"], [0, 1], top=2)
    assert [n for n, _ in names[0]] == ["zero", "one"] and names[1][0][0] == "one"
    codes = (np.array([[0.5, 0.1], [2.0, 0.3], [0.2, 0.9]]), np.array([[7, 1], [7, 2], [3, 1]]))
    np.testing.assert_array_equal(interpret.top_activating(codes, 7, 5), [1, 0])


def test_the_fvu_analysis_splits_into_error_and_variance_as_numpy_computes_them():
    from saeft_jax.evaluation.analyses import Comparison, Embeddings, sae_fvu

    rng = np.random.RandomState(1)
    frozen = FrozenSAE(sae.init_params(jax.random.PRNGKey(3), 6, 24), 3)
    zeroshot = rng.randn(40, 6).astype(np.float32)
    finetuned = (zeroshot + 0.3 * rng.randn(40, 6)).astype(np.float32)
    figures = sae_fvu(Comparison(Embeddings(zeroshot, frozen), Embeddings(finetuned, frozen), np.zeros(40, int), 1))
    unit = finetuned / (np.linalg.norm(finetuned, axis=1, keepdims=True) + 1e-8)
    values, indices = frozen.codes(finetuned)
    codes = np.zeros((40, 24))
    np.put_along_axis(codes, indices, values, 1)
    params = {k: np.asarray(v, np.float64) for k, v in frozen.params.items()}
    error = ((codes @ params["W_dec"] + params["b_pre"] - unit) ** 2).sum(1).mean()
    variance = ((unit - unit.mean(0)) ** 2).sum(1).mean()
    assert figures["sae_error"] == pytest.approx(error, rel=1e-4)
    assert figures["variance"] == pytest.approx(variance, rel=1e-5)
    assert figures["sae_fvu"] == pytest.approx(error / variance, rel=1e-4)


def test_a_wilds_metric_is_scored_beside_the_references_definition(pair):
    encoder, theta0, theta_ft = pair
    spec = DatasetSpec(
        "toy",
        "prepared",
        "toy",
        "test",
        "toy",
        ("{}",),
        metric="worst_group",
        ignored_groups=(1,),
        fixed_classnames=("a", "b", "c"),
    )
    source = ImageSource(12, 3)
    result = evaluate_dataset(
        encoder,
        theta0,
        theta_ft,
        spec,
        source,
        image_spec=ImageSpec(size=32),
        mesh=parallel.data_mesh(),
        global_batch=4,
        alphas=(0.5,),
        show_progress=False,
    )
    right = result.predictions == result.labels[None]
    for row, alpha in enumerate(result.alphas):
        per_group = [right[row][result.groups == g].mean() for g in (0, 1)]
        assert result.scores[alpha] == pytest.approx(per_group[0])  # WILDS: group 1 ("Other") left out
        assert result.reference_scores[alpha] == pytest.approx(min(per_group))  # the reference keeps it
    assert result.summary()["reference"]["metric"] == "worst_group_all"


def test_an_analysis_registered_alone_gets_its_declared_column_in_the_report(tmp_path):
    """Adding an analysis is its decorated function alone: registered here (no other file edited),
    it runs on a comparison and its declared column shows in report.md and report.html, with its
    figure formatted as declared, beside the other analyses' columns (n/a for the SAE's without one)."""
    from saeft_jax.evaluation.analyses import ANALYSES, Comparison, Embeddings, analysis, run_analyses
    from saeft_jax.rendering.html import render_html
    from saeft_jax.rendering.markdown import render_markdown
    from saeft_jax.stages.report import legend
    from saeft_jax.training.recipes import descriptions

    @analysis(uses_sae=False, columns={"mean shift (norm)": "{mean_shift:.4f}"})
    def mean_shift(c: Comparison) -> dict[str, float]:
        return {"mean_shift": float(np.linalg.norm(c.finetuned.values.mean(0) - c.zeroshot.values.mean(0)))}

    try:
        rng = np.random.default_rng(0)
        zeroshot, finetuned = rng.normal(size=(30, 6)), rng.normal(0.5, 1.0, size=(30, 6))
        comparison = Comparison(Embeddings(zeroshot, None), Embeddings(finetuned, None), rng.integers(0, 3, 30), 3)
        figures = run_analyses(["mean_shift", "cka"], comparison)
        expected = np.sqrt(np.sum((finetuned.mean(0) - zeroshot.mean(0)) ** 2))
        scores = {"metrics": {"id": 0.5}, "avg_ood": None}
        report = {
            "model": "m",
            "id_dataset": "id",
            "ood_datasets": [],
            "validation": None,
            "dataset_metrics": {"id": "top1"},
            "sae": {"dict_size": 8, "k": 2, "fvu": 0.1, "l0": 2.0, "dead_fraction": 0.0},
            "runs": {
                "zeroshot": scores,
                "tuned": {
                    **scores,
                    "method": {"recipe": "finetune"},
                    "train": {"steps": 1},
                    "changes": figures,
                    "changes_by_dataset": {"id": figures},
                },
            },
        }
        setup = dict(dtype="float32", train_dataset="t", eval_suite="s", batch_size=2, lr=1e-5, warmup_steps=0)
        setup.update(weight_decay=0.1, processes=1, devices=1, platform="cpu")
        details = {
            "setup": setup,
            "labels": {"tuned": "`tuned`"},
            "recipes": descriptions(),
            "saes": {},
            "legend": legend(),
            "runs": {},
        }
        text = render_markdown(report, details, {})
    finally:
        del ANALYSES["mean_shift"]
    header = next(line for line in text.splitlines() if line.startswith("| method |"))
    assert header.endswith("| CKA (reference's) | mean shift (norm) |")
    row = next(line for line in text.splitlines() if line.startswith("| tuned |"))
    cka = f"{interpret.linear_cka(zeroshot, finetuned):.3f} ({interpret.reference_cka(zeroshot, finetuned):.3f})"
    assert row == f"| tuned | 50.0 | n/a | n/a | n/a | n/a (n/a) | n/a / n/a | {cka} | {expected:.4f} |"
    assert "<th>mean shift (norm)</th>" in render_html("r", text, tmp_path, [])


@pytest.mark.parametrize(
    "name, header, template, says",
    [
        ("cka", "CKA again", "{cka:.2f}", "'cka' is registered already"),
        ("bad_column", "x", "{cka:.3f", "not a format string"),
        ("bad_column", "x", "{cka:.3q}", "format spec '.3q' of 'cka'"),
        ("bad_column", "x", "{cka:.{digits}f}", "format spec '.{digits}f' of 'cka'"),
        ("bad_column", "x", "{} and {cka:.3f}", "names no figure"),
        ("bad_column", "x", "{0:.3f}", "names no figure"),
        ("bad_column", "x", "{cka.real:.3f}", "names no figure"),
        ("bad_column", "x", "{cka!r}", "names no figure"),
        ("bad_column", "x", "no figure", "formats no figure"),
        ("bad_column", "a | b", "{cka:.3f}", "one line without '|'"),
        ("bad_column", "x", "{cka:.3f} | {cka_reference:.3f}", "one line without '|'"),
        ("bad_column", "", "{cka:.3f}", "one line without '|'"),
    ],
)
def test_an_analysis_registered_twice_or_with_a_column_report_md_cannot_render_is_a_clear_error(
    name, header, template, says
):
    """Registration, not the report stage at the end of a run, refuses a second analysis of a name
    (the first one stays) and a column report.md's table cannot render (a broken format string, a
    format spec no number takes, a field that is not a figure's name, a '|' or line break that
    would split the table), naming the analysis and the column."""
    from saeft_jax.evaluation.analyses import ANALYSES, Comparison, analysis

    before = dict(ANALYSES)

    def compute(c: Comparison) -> dict[str, float]:
        return {}

    compute.__name__ = name
    try:
        with pytest.raises(ValueError, match=re.escape(says)) as error:
            analysis(uses_sae=False, columns={header: template})(compute)
    finally:
        registered = dict(ANALYSES)
        ANALYSES.clear()
        ANALYSES.update(before)
    assert registered == before
    assert f"analysis {name!r}" in str(error.value)
    if name == "bad_column":
        assert f"column {header!r}" in str(error.value)
