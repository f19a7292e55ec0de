"""Non-finite tensors in every kind of file a run reads are refused by name (file and tensor)
before use: the checker itself, SAE artifacts, zero-shot and probe heads, the features, fine-tuned
models and heads, imported checkpoints and their heads (also checked for their tensors' names and
shapes); the configured model's check is in test_reliability (preflight)."""

from __future__ import annotations

import shutil
import types

import numpy as np
import pytest
import safetensors.numpy
from etils import epath

from saeft_jax import finite, hf, models, storage
from saeft_jax.errors import UsageError
from saeft_jax.finite import NonFiniteError, check_finite
from saeft_jax.sae.artifact import load_sae, save_sae
from saeft_jax.sae.frozen import FrozenSAE
from saeft_jax.stages import finetune, probe, zeroshot


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_the_checker_names_the_file_the_tensor_and_the_count(bad):
    tensors = {
        "encoder": {"layer": {"kernel": np.ones((3, 4), np.float32)}},
        "head": {"W": np.ones((2, 4), np.float32), "b": np.zeros(2, np.float32)},
        "ids": np.arange(5),
    }
    check_finite(tensors, "model.safetensors", "fix it")  # finite and integer tensors pass
    tensors["head"]["W"][1, [0, 2]] = bad
    with pytest.raises(
        NonFiniteError,
        match=r"^model\.safetensors: tensor head/W holds 2 non-finite values .* of 8"
        r".*; fix it$",
    ):
        check_finite(tensors, "model.safetensors", "fix it")


def test_a_memory_mapped_file_is_counted_chunk_by_chunk_as_numpy_counts_it(tmp_path, monkeypatch):
    monkeypatch.setattr(finite, "_CHUNK", 7)  # chunk edges inside rows and at the end
    rng = np.random.default_rng(0)
    array = rng.normal(size=(13, 5)).astype(np.float32)
    array[rng.random(array.shape) < 0.2] = np.nan
    array[2, 3] = np.inf
    np.save(tmp_path / "train.npy", array)
    mapped = np.load(tmp_path / "train.npy", mmap_mode="r")
    assert finite.nonfinite_count(mapped) == np.sum(~np.isfinite(array)) > 1
    with pytest.raises(
        NonFiniteError,
        match=rf"^train\.npy holds {np.sum(~np.isfinite(array))} non-finite values "
        rf"\(NaN or infinity\) of 65,",
    ):
        check_finite(mapped, "train.npy", "fix it")
    import jax.numpy as jnp

    assert finite.nonfinite_count(jnp.asarray(array)) == np.sum(~np.isfinite(array))


def sae(d=4, dict_size=6) -> FrozenSAE:
    rng = np.random.default_rng(1)
    return FrozenSAE(
        {
            "W_enc": rng.normal(size=(d, dict_size)).astype(np.float32),
            "W_dec": rng.normal(size=(dict_size, d)).astype(np.float32),
            "b_pre": np.zeros(d, np.float32),
        },
        2,
    )


@pytest.mark.parametrize("tensor", ["W_enc", "W_dec", "b_pre"])
def test_an_sae_with_a_nan_is_refused_naming_its_file_and_tensor(tmp_path, tensor):
    save_sae(tmp_path / "ok", sae())
    assert load_sae(tmp_path / "ok", d=4).k == 2
    broken = sae()
    broken.params[tensor][..., 0] = np.nan
    save_sae(tmp_path / "bad", broken)
    with pytest.raises(NonFiniteError, match=rf"bad/sae\.safetensors: tensor {tensor} holds"):
        load_sae(tmp_path / "bad", d=4)


def fake_run(workdir, **fields):
    """The parts of a `Run` the head loaders read: files as their stage wrote them."""
    return types.SimpleNamespace(
        workdir=epath.Path(workdir),
        model_path="the/model",
        command="rerunning it",
        read=lambda parts, name: epath.Path(workdir).joinpath(*parts, name),
        **fields,
    )


@pytest.mark.parametrize("kind", ["zeroshot", "probe"])
def test_a_head_with_a_nan_is_refused_and_deleting_its_stage_is_the_advice(tmp_path, kind):
    head = {"W": np.ones((3, 4), np.float32), "b": np.zeros(3, np.float32)}
    parts, name = (("zeroshot",), "digits.safetensors") if kind == "zeroshot" else (("probe",), "head.safetensors")
    (tmp_path.joinpath(*parts)).mkdir(parents=True)
    storage.save_safetensors(epath.Path(tmp_path.joinpath(*parts, name)), head)
    load = (lambda run: zeroshot.zeroshot_head(run, "digits")) if kind == "zeroshot" else probe.probe_head
    np.testing.assert_array_equal(load(fake_run(tmp_path))["W"], head["W"])
    head["b"][2] = np.inf
    storage.save_safetensors(epath.Path(tmp_path.joinpath(*parts, name)), head)
    with pytest.raises(
        NonFiniteError,
        match=rf"{kind}/{name}: tensor b holds 1 non-finite value .*Delete "
        rf"{tmp_path}/{kind} and its stage makes it again on rerunning it\.",
    ):
        load(fake_run(tmp_path))


@pytest.fixture(scope="module")
def tiny_saved(tmp_path_factory):
    """A tiny CLIP saved as a Hugging Face checkpoint, and what loading it gives."""
    import jax

    from saeft_jax.models.clip import CLIP, init_params
    from tests.conftest import TINY

    model = CLIP(TINY)
    where = tmp_path_factory.mktemp("tiny") / "clip"
    hf.save_clip(model, init_params(model, jax.random.PRNGKey(0)), where)
    return where, models.load(where)


@pytest.fixture
def importing(tiny_saved, tmp_path):
    """A run of a tiny CLIP with 3 training classes, and a copy of that CLIP to import as a method."""
    from tests.conftest import TINY

    where = tmp_path / "theirs"
    shutil.copytree(tiny_saved[0], where)
    run = types.SimpleNamespace(
        model=tiny_saved[1],
        model_path="the/model",
        train_spec=types.SimpleNamespace(classnames=("a", "b", "c"), templates=("{}",)),
        config=types.SimpleNamespace(show_progress=False),
    )
    method = types.SimpleNamespace(checkpoint=str(where), name="imported")
    return run, method, where, TINY.projection_dim


@pytest.mark.parametrize(
    "head, says",
    [
        ({"weight": (3, 32), "bias": (3,)}, r"\{'bias': \(3,\), 'weight': \(3, 32\)\}"),
        ({"W": (3, 32)}, r"\{'W': \(3, 32\)\}"),
        ({"W": (3, 16), "b": (3,)}, r"\{'W': \(3, 16\), 'b': \(3,\)\}"),
        ({"W": (4, 32), "b": (4,)}, r"\{'W': \(4, 32\), 'b': \(4,\)\}"),
        ({"W": (3, 32), "b": (3, 1)}, r"\{'W': \(3, 32\), 'b': \(3, 1\)\}"),
    ],
)
def test_an_imported_head_of_other_tensors_is_refused_naming_them_and_the_form_wanted(importing, head, says):
    run, method, where, width = importing
    storage.save_safetensors(epath.Path(where / "head.safetensors"), {k: np.zeros(s) for k, s in head.items()})
    wanted = rf"head\.safetensors holds the tensors {says}; .*W \(3, {width}\) .* and b \(3,\)"
    with pytest.raises(UsageError, match=wanted):
        finetune._import(run, method)


def test_an_imported_head_or_checkpoint_with_a_nan_is_refused_by_name(importing):
    run, method, where, width = importing
    head = {"W": np.ones((3, width), np.float32), "b": np.zeros(3, np.float32)}
    head["W"][0, 0] = np.nan
    storage.save_safetensors(epath.Path(where / "head.safetensors"), head)
    with pytest.raises(NonFiniteError, match=r"theirs/head\.safetensors: tensor W holds 1 non-finite value"):
        finetune._import(run, method)
    weights = safetensors.numpy.load_file(where / "model.safetensors")
    name = "vision_model.encoder.layers.1.mlp.fc2.weight"
    weights[name][4, :3] = np.inf
    safetensors.numpy.save_file(weights, where / "model.safetensors")
    with pytest.raises(
        NonFiniteError,
        match=r"theirs \(its weights\): tensor vision_model/encoder/layers/1/mlp/fc2/"
        r"\w+ holds 3 non-finite values .*methods\.imported\.checkpoint",
    ):
        finetune._import(run, method)


def test_features_with_an_infinity_are_refused_where_they_are_read(tmp_path):
    from saeft_jax.stages import features

    (tmp_path / "features").mkdir()
    embeddings = np.random.default_rng(2).normal(size=(13, 5)).astype(np.float32)
    np.save(tmp_path / "features" / "train.npy", embeddings)
    run = fake_run(
        tmp_path,
        model=types.SimpleNamespace(embed_dim=5),
        source=lambda spec: [None] * 13,
        train_spec=None,
        config=types.SimpleNamespace(train_dataset="toy"),
    )
    np.testing.assert_array_equal(features.load_features(run), embeddings)
    embeddings[7, 1] = -np.inf
    np.save(tmp_path / "features" / "train.npy", embeddings)
    with pytest.raises(
        NonFiniteError,
        match=rf"features/train\.npy holds 1 non-finite value .* of 65.*Delete "
        rf"{tmp_path}/features and its stage",
    ):
        features.load_features(run)


@pytest.mark.parametrize("file", ["final", "head.safetensors"])
def test_a_finetuned_model_or_head_with_a_nan_is_refused_where_evaluation_reads_it(tiny_saved, tmp_path, file):
    where = tmp_path / "finetune" / "mine"
    shutil.copytree(tiny_saved[0], where / "final")
    width = tiny_saved[1].embed_dim
    head = {"W": np.ones((3, width), np.float32), "b": np.zeros(3, np.float32)}
    if file == "head.safetensors":
        head["W"][2, 2] = np.nan
    else:
        weights = safetensors.numpy.load_file(where / "final" / "model.safetensors")
        weights["visual_projection.weight"][0, 0] = np.nan
        safetensors.numpy.save_file(weights, where / "final" / "model.safetensors")
    storage.save_safetensors(epath.Path(where / "head.safetensors"), head)
    run = fake_run(tmp_path, methods={"mine": types.SimpleNamespace(checkpoint="")}, model=tiny_saved[1])
    with pytest.raises(
        NonFiniteError,
        match=rf"finetune/mine/{file}: tensor \S+ holds 1 non-finite value .*method "
        rf"mine's model\. Delete {tmp_path}/finetune/mine and its stage",
    ):
        finetune.load_finetuned(run, "mine")


def test_a_checkpoint_with_a_nan_is_skipped_for_the_previous_one_and_none_finite_is_named(tmp_path, capfd):
    """A checkpoint is never saved non-finite (a diverged step stops unsaved), so one that holds a NaN
    was damaged later: like a checkpoint that does not restore, the previous one is used."""
    from saeft_jax.checkpoints import Checkpoints, CheckpointsUnusable

    like = {"w": np.zeros((3, 4), np.float32), "bad_step": np.array(-1, np.int32)}
    good, damaged = (
        {"w": np.full((3, 4), 2.0, np.float32), "bad_step": np.array(-1, np.int32)},
        {"w": np.ones((3, 4), np.float32)},
    )
    damaged["w"][1, 2], damaged["bad_step"] = np.nan, np.array(-1, np.int32)
    checkpoints = Checkpoints(tmp_path / "checkpoints", async_save=False)
    checkpoints.save(1, good, {"data": 1})
    checkpoints.save(2, damaged, {"data": 2})
    checkpoints.close()
    step, state, meta = Checkpoints(tmp_path / "checkpoints").restore_latest(like)
    assert step == 1 and meta == {"data": 1}
    np.testing.assert_array_equal(np.asarray(state["w"]), good["w"])
    err = capfd.readouterr().err
    assert f"warning: checkpoint 2 in {tmp_path / 'checkpoints'} does not restore (tensor w holds 1 NaN" in err, err
    assert "continuing from checkpoint 1 and deleting it" in err
    assert Checkpoints(tmp_path / "checkpoints").latest_step() == 1  # the damaged one is gone

    only = Checkpoints(tmp_path / "only", async_save=False)
    only.save(3, damaged)
    only.close()
    with pytest.raises(CheckpointsUnusable, match=r"no checkpoint in .*only restores \(step 3: tensor w holds 1 NaN"):
        Checkpoints(tmp_path / "only").restore_latest(like)
