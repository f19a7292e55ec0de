"""SAE training: dictionary recovery, exact resume, streaming, options, artifacts, devices."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import subprocess_env
from PIL import Image
from test_observe import assert_curves_match

from saeft_jax.checkpoints import Checkpoints
from saeft_jax.curves import read_scalars
from saeft_jax.rendering.plots import firing_histogram
from saeft_jax.sae import model as sae_model
from saeft_jax.sae.artifact import SAEArtifactError, describe, load_sae, save_sae
from saeft_jax.sae.frozen import FrozenSAE
from saeft_jax.sae.quality import evaluate_sae, geometric_median
from saeft_jax.sae.training import train_sae
from saeft_jax.stages import report
from saeft_jax.stages import sae as sae_stage
from saeft_jax.stages.sae import EpochLog


def sparse_mixtures(
    n: int, d: int, atoms: int, active: int, seed: int = 0, offset: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Rows that are sparse positive combinations of a random unit-norm dictionary (returned too),
    plus `offset` times a fixed unit vector (CLIP embeddings share such a direction)."""
    rng = np.random.default_rng(seed)
    dictionary = rng.normal(size=(atoms, d))
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    codes = np.zeros((n, atoms))
    for row in range(n):
        codes[row, rng.choice(atoms, active, replace=False)] = rng.uniform(0.5, 2.0, active)
    shared = rng.normal(size=d)
    shared /= np.linalg.norm(shared)
    return (codes @ dictionary + offset * shared).astype(np.float32), dictionary


def recovered(dictionary: np.ndarray, w_dec: np.ndarray, threshold: float = 0.9) -> float:
    atoms = w_dec / np.linalg.norm(w_dec, axis=1, keepdims=True)
    return float(np.mean((dictionary @ atoms.T).max(axis=1) > threshold))


@pytest.fixture(scope="module")
def mixtures():
    return sparse_mixtures(n=20000, d=64, atoms=128, active=4)


def test_recovers_a_known_dictionary(mixtures, tmp_path):
    features, dictionary = mixtures
    epochs = []
    sae, metrics = train_sae(
        features, dict_size=256, k=4, batch_size=256, epochs=20, progress=False, on_epoch=epochs.append
    )
    assert isinstance(sae, FrozenSAE) and (sae.k, sae.relu) == (4, False)
    assert recovered(dictionary, sae.params["W_dec"]) > 0.75
    assert metrics["fvu"] < 0.15 and metrics["l0"] == 4.0
    assert [r["epoch"] for r in epochs] == list(range(20))
    assert epochs[0]["fvu"] > epochs[-1]["fvu"]  # it learned
    firing_histogram(metrics["firing_frequency"], tmp_path / "firing.png")  # what the sae stage draws
    picture = np.asarray(Image.open(tmp_path / "firing.png").convert("L"))
    assert picture.shape[0] > 100 and picture.std() > 10  # drawn, not blank
    tied, tied_metrics = train_sae(
        features, dict_size=256, k=4, batch_size=256, epochs=20, progress=False, tied_init=True
    )
    assert recovered(dictionary, tied.params["W_dec"]) > 0.95 and tied_metrics["fvu"] < metrics["fvu"]


def test_auxk_revives_dead_latents_on_anisotropic_data():
    # Embeddings in a narrow cone (as CLIP's) leave latents whose encoder points away dead.
    features, _ = sparse_mixtures(n=16384, d=64, atoms=256, active=4, offset=3.0)
    kwargs = dict(dict_size=256, k=4, batch_size=256, epochs=6, progress=False)
    _, plain = train_sae(features, **kwargs)
    _, auxk = train_sae(features, auxk=True, dead_after=2048, **kwargs)
    assert plain["dead_fraction"] > 0.5
    assert auxk["dead_fraction"] < plain["dead_fraction"] - 0.2
    assert auxk["fvu"] < plain["fvu"]


def test_final_metrics_match_numpy(mixtures):
    features, _ = mixtures
    sae, metrics = train_sae(features[:4096], dict_size=64, k=4, batch_size=512, epochs=2, progress=False)
    params = sae.params
    x = features[:4096].astype(np.float64)
    x /= np.linalg.norm(x, axis=-1, keepdims=True) + 1e-8
    pre = (x - params["b_pre"]) @ params["W_enc"]
    top = np.argsort(-pre, axis=1)[:, :4]
    s = np.zeros_like(pre)
    np.put_along_axis(s, top, np.take_along_axis(pre, top, 1), 1)
    x_hat = s @ params["W_dec"] + params["b_pre"]
    fvu = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert metrics["fvu"] == pytest.approx(fvu, rel=1e-4)
    assert metrics["dead_fraction"] == pytest.approx(np.mean(~np.isin(np.arange(64), top)))
    np.testing.assert_allclose(metrics["firing_frequency"], np.bincount(top.ravel(), minlength=64) / 4096)


def attempt(features, epochs: int, tmp_path, **kwargs):
    """One attempt of the sae stage's training: its checkpoints and metrics.jsonl in `tmp_path`."""
    checkpoints, log = Checkpoints(tmp_path / "ckpt"), EpochLog(tmp_path / "m.jsonl")
    try:
        sae, metrics = train_sae(features, epochs=epochs, checkpoints=checkpoints, on_epoch=log.epoch, **kwargs)
        log.final(metrics)
    finally:
        checkpoints.close()
        log.close()
    return sae


def test_resume_equals_uninterrupted_run(mixtures, tmp_path):
    features = mixtures[0][:4096]
    kwargs = dict(dict_size=64, k=4, batch_size=512, progress=False, auxk=True, dead_after=1024)
    straight, _ = train_sae(features, epochs=4, **kwargs)
    attempt(features, 2, tmp_path, **kwargs)
    resumed = attempt(features, 4, tmp_path, **kwargs)
    for name in straight.params:
        np.testing.assert_array_equal(resumed.params[name], straight.params[name], err_msg=name)
    epochs = [json.loads(line).get("epoch") for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2, 3, None]  # the first attempt's final summary is dropped with the resume
    assert_curves_match(tmp_path, tmp_path / "m.jsonl", step_key="epoch")
    assert {"fvu", "l0", "dead_fraction"} <= set(read_scalars(tmp_path))


def test_memory_mapped_streaming_equals_device_resident(mixtures, tmp_path):
    features = mixtures[0][:4096]
    mapped = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float32, shape=features.shape)
    mapped[:] = features
    mapped.flush()
    resident, _ = train_sae(features, dict_size=64, k=4, batch_size=512, epochs=2, progress=False)
    streamed, _ = train_sae(
        np.load(tmp_path / "f.npy", mmap_mode="r"),
        dict_size=64,
        k=4,
        batch_size=512,
        epochs=2,
        progress=False,
        device_bytes=0,
    )
    for name in resident.params:
        np.testing.assert_array_equal(streamed.params[name], resident.params[name], err_msg=name)


def train_params(features, **settings) -> tuple[dict, dict]:
    """`train_sae`'s SAE as its flat parameter dict, and its metrics."""
    sae, metrics = train_sae(features, **settings)
    return sae.params, metrics


def unit_rows(x: np.ndarray) -> np.ndarray:
    """The rows an SAE is trained on: x / (||x|| + 1e-8), in float64."""
    x = np.asarray(x, np.float64)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-8)


def numpy_codes(params: dict, x: np.ndarray, k: int, relu: bool) -> np.ndarray:
    """Dense Top-K codes of unit rows `x` by the formula of docs/method.md, in float64."""
    pre = (x - params["b_pre"]) @ np.asarray(params["W_enc"], np.float64) + params.get("b_enc", 0.0)
    top = np.argsort(-pre, axis=1)[:, :k]
    codes = np.zeros_like(pre)
    np.put_along_axis(codes, top, np.take_along_axis(pre, top, axis=1), axis=1)
    return np.maximum(codes, 0.0) if relu else codes


def weiszfeld(x: np.ndarray, tolerance: float = 1e-12) -> np.ndarray:
    """The geometric median of the rows of `x` by Weiszfeld's iteration from the coordinate-wise median."""
    median = np.median(x, axis=0)
    for _ in range(10_000):
        weights = 1.0 / np.linalg.norm(x - median, axis=1)
        moved = weights @ x / weights.sum()
        if np.linalg.norm(moved - median) < tolerance:
            break
        median = moved
    return moved


SMALL = dict(dict_size=16, k=12, batch_size=256, progress=False)  # k near dict_size: some selected values are < 0


@pytest.fixture(scope="module")
def trained_with_and_without_options(mixtures):
    """Two SAEs trained for 2 epochs from the same seed, with renorm_decoder, b_enc and relu and without."""
    features = mixtures[0][:1024]
    options = dict(renorm_decoder=True, b_enc=True, relu=True)
    with_options = train_params(features, epochs=2, **SMALL, **options)
    without = train_params(features, epochs=2, **SMALL, **{name: False for name in options})
    return features, with_options, without


def test_renorm_decoder_keeps_decoder_rows_at_unit_norm(trained_with_and_without_options):
    _, (params, _), (plain, _) = trained_with_and_without_options
    np.testing.assert_allclose(np.linalg.norm(params["W_dec"], axis=1), 1.0, rtol=1e-5)
    assert np.abs(np.linalg.norm(plain["W_dec"], axis=1) - 1.0).max() > 1e-3  # without it, training moves them


def test_b_enc_adds_an_encoder_bias_that_is_trained_and_used(trained_with_and_without_options):
    features, (params, _), (plain, _) = trained_with_and_without_options
    assert "b_enc" not in plain and params["b_enc"].shape == (16,)
    assert np.abs(params["b_enc"]).max() > 1e-4  # it starts at zero: the steps moved it
    untrained, _ = train_params(features, epochs=0, **SMALL, b_enc=True)
    np.testing.assert_array_equal(untrained["b_enc"], np.zeros(16))
    x = unit_rows(features)
    sae = FrozenSAE(params, 12, relu=True)
    np.testing.assert_allclose(sae.encode(x.astype(np.float32)), numpy_codes(params, x, 12, relu=True), atol=1e-5)
    assert not np.allclose(numpy_codes({**params, "b_enc": 0.0}, x, 12, relu=True), numpy_codes(params, x, 12, True))


def test_relu_makes_the_codes_non_negative_where_top_k_alone_keeps_negative_values(trained_with_and_without_options):
    features, (params, metrics), _ = trained_with_and_without_options
    x = unit_rows(features)
    signed = numpy_codes(params, x, 12, relu=False)
    assert (signed < 0).mean() > 0.05  # without relu, these Top-K codes are negative
    codes = np.asarray(FrozenSAE(params, 12, relu=True).encode(x.astype(np.float32)))
    assert codes.min() >= 0.0
    np.testing.assert_allclose(codes, np.maximum(signed, 0.0), atol=1e-5)
    np.testing.assert_allclose(np.asarray(FrozenSAE(params, 12).encode(x.astype(np.float32))), signed, atol=1e-5)
    assert metrics["l0"] == pytest.approx((signed > 0).sum(1).mean(), rel=1e-3)  # fewer than k are active


@pytest.mark.parametrize("b_pre_init", ["zeros", "mean", "median"])
def test_b_pre_init_starts_at_zero_the_mean_or_the_geometric_median_of_the_unit_rows(mixtures, b_pre_init):
    features = mixtures[0][:1024]
    params, _ = train_params(features, epochs=0, **SMALL, b_pre_init=b_pre_init)
    x = unit_rows(features)
    expected = {"zeros": np.zeros(x.shape[1]), "mean": x.mean(0), "median": weiszfeld(x)}[b_pre_init]
    np.testing.assert_allclose(params["b_pre"], expected, atol=1e-5)
    if b_pre_init == "median":  # a minimum of the summed distances: the unit vectors towards the rows cancel
        towards = (x - params["b_pre"]) / np.linalg.norm(x - params["b_pre"], axis=1, keepdims=True)
        assert np.linalg.norm(towards.mean(0)) < 1e-4 < np.linalg.norm(x.mean(0) - expected)


def test_tied_init_starts_the_encoder_as_the_decoders_transpose(mixtures):
    features = mixtures[0][:1024]
    tied, _ = train_params(features, epochs=0, **SMALL, tied_init=True)
    untied, _ = train_params(features, epochs=0, **SMALL)
    np.testing.assert_array_equal(tied["W_enc"], tied["W_dec"].T)
    np.testing.assert_array_equal(untied["W_dec"], tied["W_dec"])  # the same seed: the same atoms
    bound = 64**-0.5  # untied: torch's nn.Linear default, uniform within 1/sqrt(d)
    assert np.abs(untied["W_enc"]).max() <= bound and not np.allclose(untied["W_enc"], tied["W_enc"])


def test_geometric_median_of_symmetric_points_is_their_centre():
    centre = np.array([3.0, 0.0, 0.0])
    offsets = np.array([[0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1], [0.2, 0, 0], [-0.2, 0, 0]])
    points = centre + offsets  # normalizing keeps the symmetry about the x axis
    median = geometric_median(points.astype(np.float32))
    np.testing.assert_allclose(median[1:], 0.0, atol=1e-6)
    assert median[0] > 0.9


def test_bad_arguments_are_named():
    features = np.ones((600, 8), np.float32)
    with pytest.raises(TypeError, match=r"unknown train_sae options \['lr_schedule'\]"):
        train_sae(features, dict_size=16, k=2, batch_size=64, lr_schedule="cosine")
    with pytest.raises(ValueError, match="fewer than one batch"):
        train_sae(features, dict_size=16, k=2, batch_size=1024)
    with pytest.raises(ValueError, match="b_pre_init"):
        train_sae(features, dict_size=16, k=2, batch_size=64, b_pre_init="mode")


def test_artifact_round_trip_and_mismatches(mixtures, tmp_path):
    features = mixtures[0][:2048]
    sae, metrics = train_sae(features, dict_size=64, k=4, batch_size=512, epochs=1, progress=False)
    save_sae(tmp_path / "sae", sae, options={"auxk": False}, metrics=metrics)
    loaded = load_sae(tmp_path / "sae", d=64, dict_size=64, k=4)
    for name in sae.params:
        np.testing.assert_array_equal(loaded.params[name], sae.params[name])
    assert (loaded.k, loaded.relu, loaded.normalize_inputs, loaded.fed_raw) == (4, False, True, False)
    meta = json.loads((tmp_path / "sae" / "sae.json").read_text())
    assert meta["metrics"]["fvu"] == pytest.approx(metrics["fvu"]) and meta["normalize_inputs"]
    assert describe(tmp_path / "sae") == meta and (meta["k"], meta["kind"], meta["dict_size"]) == (4, "topk", 64)
    assert evaluate_sae(loaded, features, batch_size=512)["fvu"] == pytest.approx(metrics["fvu"], rel=1e-5)
    with pytest.raises(SAEArtifactError, match="d is 64 in the artifact but 512 here"):
        load_sae(tmp_path / "sae", d=512)
    with pytest.raises(SAEArtifactError, match="dict_size is 64 in the artifact but 2048 here.*k is 4"):
        load_sae(tmp_path / "sae", dict_size=2048, k=16)
    with pytest.raises(SAEArtifactError, match="sae.json missing"):
        load_sae(tmp_path)
    (tmp_path / "sae" / "sae.json").write_text(json.dumps({key: v for key, v in meta.items() if key != "kind"}))
    with pytest.raises(SAEArtifactError, match="sae.json lacks kind: an older version wrote it. Delete"):
        load_sae(tmp_path / "sae")
    (tmp_path / "sae" / "sae.json").write_text(json.dumps(meta))
    (tmp_path / "sae" / "sae.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(SAEArtifactError, match="not readable"):
        load_sae(tmp_path / "sae")


def test_penalty_and_report_read_the_same_settings(tmp_path):
    """The penalty's SAE (`stages.sae.load`) and the report's SAE entry take k, ReLU, dict_size
    and kind from the artifact's sae.json, not from the stage's completion record (which once
    restated them: a record saying another k must not be what the report shows)."""
    rng = np.random.default_rng(0)
    params = {"W_enc": rng.normal(size=(8, 32)), "W_dec": rng.normal(size=(32, 8)), "b_pre": np.zeros(8)}
    save_sae(tmp_path / "sae" / "main", FrozenSAE(params, 5, relu=True), kind="topk")
    record = {"fvu": 0.25, "mse": 0.1, "l0": 5.0, "dead_fraction": 0.5, "k": 99, "dict_size": 7, "relu": False}
    run = types.SimpleNamespace(
        workdir=tmp_path,
        model=types.SimpleNamespace(embed_dim=8),
        read=lambda parts, name: tmp_path.joinpath(*parts, name),
        done=lambda *parts: record if parts == ("sae", "main") else None,
    )
    penalty = sae_stage.load(run, "main")
    assert (penalty.k, penalty.relu, penalty.dict_size) == (5, True, 32)
    assert report._sae_summary(run, "main") == {
        "fvu": 0.25,
        "dead_fraction": 0.5,
        "l0": 5.0,
        "dict_size": 32,
        "k": 5,
        "relu": True,
        "kind": "topk",
    }
    assert report._sae_summary(run, "other") is None  # not complete


EIGHT_DEVICES = textwrap.dedent("""
    import sys, numpy as np, jax
    from test_sae_training import sparse_mixtures
    from saeft_jax.sae.training import train_sae
    assert len(jax.devices()) == 8, jax.devices()
    features = sparse_mixtures(4096, 64, 128, 4)[0]
    kwargs = dict(dict_size=64, k=4, batch_size=512, epochs=2, progress=False, auxk=True, dead_after=1024)
    one, m1 = train_sae(features, devices=(jax.devices()[0],), **kwargs)
    eight, m8 = train_sae(features, **kwargs)
    np.savez(sys.argv[1], fvu=[m1["fvu"], m8["fvu"]], **{"one_" + k: v for k, v in one.params.items()},
             **{"eight_" + k: v for k, v in eight.params.items()})
""")


@pytest.mark.slow
def test_same_result_on_one_and_eight_devices(tmp_path):
    env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = tmp_path / "result.npz"
    subprocess.run([sys.executable, "-c", EIGHT_DEVICES, str(out)], check=True, env=env, timeout=300)
    result = np.load(out)
    for name in ("W_enc", "W_dec", "b_pre"):
        np.testing.assert_allclose(result["eight_" + name], result["one_" + name], rtol=1e-4, atol=1e-6)
    assert result["fvu"][1] == pytest.approx(result["fvu"][0], rel=1e-4)


def test_a_relu_sae_gives_the_penalty_the_codes_the_report_reads(mixtures, tmp_path):
    """The artifact carries relu, so the fine-tuning penalty and the report's analyses encode alike."""
    import jax.numpy as jnp

    from saeft_jax import regularizers
    from saeft_jax.evaluation.analyses import Comparison, Embeddings, feature_changes

    features = mixtures[0][:2048]
    trained, metrics = train_sae(features, dict_size=64, k=48, batch_size=512, epochs=1, progress=False, relu=True)
    save_sae(tmp_path / "sae", trained, options={"relu": True}, metrics=metrics)
    sae = load_sae(tmp_path / "sae")
    assert sae.relu
    rng = np.random.default_rng(1)
    f0 = features[:32]
    f = (f0 + 0.5 * rng.normal(size=f0.shape)).astype(np.float32)
    _, _, st, s0 = regularizers.sae_codes(jnp.asarray(f), jnp.asarray(f0), sae)  # inside the penalty
    values, indices = Embeddings(f, sae).codes  # what the report reads
    dense = np.zeros((len(f), 64), np.float32)
    np.put_along_axis(dense, indices, values, 1)
    np.testing.assert_allclose(np.asarray(st), dense, rtol=1e-5, atol=1e-6)
    assert dense.min() >= 0  # ReLU after Top-K
    without_relu = FrozenSAE(sae.params, 48).codes(f)[0]
    assert without_relu.min() < 0  # k = 48 of 64 reaches negative pre-activations: relu changes the codes
    _, penalty_metrics = regularizers.sae_add_remove(jnp.asarray(f), jnp.asarray(f0), sae=sae)
    report = feature_changes(Comparison(Embeddings(f0, sae), Embeddings(f, sae), np.zeros(len(f), int), 1))
    assert float(penalty_metrics["added_per_image"]) == pytest.approx(report["added_per_image"])


def test_auxk_normalized_as_gao_et_al_on_a_known_case():
    """Gao et al.'s AuxK term (openai/sparse_autoencoder `normalized_mse`): the error of rebuilding
    the residual from the k_aux largest pre-activations of dead latents, over the residual's
    variance about its batch mean; worked out here in NumPy."""
    rng = np.random.default_rng(5)
    d, f, b, k_aux = 4, 6, 5, 2
    params = {
        "W_enc": rng.normal(size=(d, f)).astype(np.float32),
        "W_dec": rng.normal(size=(f, d)).astype(np.float32),
        "b_pre": rng.normal(size=d).astype(np.float32),
    }
    x = rng.normal(size=(b, d)).astype(np.float32)
    residual = rng.normal(size=(b, d)).astype(np.float32)
    dead = np.array([True, False, True, True, False, True])
    pre = (x - params["b_pre"]) @ params["W_enc"]
    rebuilt = np.zeros((b, d))
    for row in range(b):
        top = sorted(np.flatnonzero(dead), key=lambda j: -pre[row, j])[:k_aux]
        rebuilt[row] = sum(pre[row, j] * params["W_dec"][j] for j in top)
    error = np.mean((rebuilt - residual) ** 2)
    variance = np.mean((residual - residual.mean(0)) ** 2)
    args = (
        {n: jnp.asarray(v) for n, v in params.items()},
        jnp.asarray(x),
        jnp.asarray(residual),
        jnp.asarray(dead),
        k_aux,
    )
    assert float(sae_model.auxk_loss(*args)) == pytest.approx(error, rel=1e-5)
    assert float(sae_model.auxk_loss(*args, normalized=True)) == pytest.approx(error / variance, rel=1e-5)
    assert float(sae_model.auxk_loss(*args[:3], jnp.zeros(f, bool), k_aux, normalized=True)) == 0.0  # none dead


@pytest.mark.parametrize("fails", ["Checkpoints", "EpochLog"])
def test_the_sae_stage_closes_what_it_opened_when_the_other_cannot_open(tmp_path, monkeypatch, fails):
    """The sae stage's checkpoints (an Orbax manager, which must finish and release its saves) and
    its metrics log are closed on every path, also when the other of the two cannot be opened (a
    directory it may not write, a bucket it cannot reach)."""
    from saeft_jax.stages import sae

    opened, closed = [], []

    def kind(name: str):
        class Opened:
            def __init__(self, path):
                if name == fails:
                    raise OSError(f"{name} cannot open {path}")
                opened.append(name)

            def close(self):
                closed.append(name)

        return Opened

    for name in ("Checkpoints", "EpochLog"):
        monkeypatch.setattr(sae, name, kind(name))
    with pytest.raises(OSError, match=f"{fails} cannot open"):
        sae._train(None, None, {}, tmp_path)
    assert sorted(closed) == sorted(opened)  # whichever opened before the failure
