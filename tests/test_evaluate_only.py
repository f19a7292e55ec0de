"""`python -m saeft_jax.evaluate`: a model scored on a suite of prepared folders against a
zero-shot classifier built by hand from the towers' outputs, and its mistakes as one paragraph,
exit code 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from saeft_jax import evaluate
from saeft_jax.data import prepare
from saeft_jax.data.preprocess import clip_eval
from saeft_jax.data.registry import dataset_spec
from saeft_jax.data.sources import open_source

CLASSES = ("circle", "square", "stripes")


def write_shapes(root, seed: int, per_class: int = 4) -> None:
    """Small random RGB images in one folder per class (their content only has to be fixed)."""
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        for i in range(per_class):
            path = root / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny random CLIP saved as a Hugging Face checkpoint with a character tokenizer, and the
    model and parameters it was saved from."""
    import jax
    from conftest import TINY, write_char_tokenizer

    from saeft_jax import hf
    from saeft_jax.models.clip import CLIP, init_params

    model = CLIP(TINY)
    params = init_params(model, jax.random.key(3))
    path = tmp_path_factory.mktemp("tiny_clip") / "model"
    hf.save_clip(model, params, path)
    write_char_tokenizer(path)
    return path, model, params


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate_only")
    for split, seed in (("test", 1), ("shift", 2)):
        write_shapes(root / split, seed)
        prepare.prepare("folder", root / split, root / "data", name="shapes", split=split, show_progress=False)
    return root / "data"


def reference_top1(model, params, tokenizer, spec, data_dir) -> tuple[float, np.ndarray]:
    """Top-1 of the zero-shot classifier built as CLIP's paper builds it (per class, the normalised
    mean of the normalised prompt embeddings; the nearest class of the normalised image embedding),
    in float64 from the towers' outputs on every image read one by one."""
    prompts = [t.format(c) for c in spec.classnames for t in spec.templates]
    ids = tokenizer(
        prompts,
        padding="max_length",
        truncation=True,
        max_length=model.config.text.max_position_embeddings,
        return_tensors="np",
    )["input_ids"].astype(np.int32)
    source = open_source(spec, data_dir)
    examples = [source[i] for i in range(len(source))]
    pixels = np.stack([clip_eval(e["image"], model.config.vision.image_size) for e in examples])
    text = np.asarray(model.apply({"params": params}, ids, method=model.encode_text), np.float64)
    image = np.asarray(model.apply({"params": params}, pixels, method=model.encode_image), np.float64)
    text = text / np.linalg.norm(text, axis=-1, keepdims=True)
    weights = text.reshape(len(spec.classnames), len(spec.templates), -1).mean(1)
    weights /= np.linalg.norm(weights, axis=-1, keepdims=True)
    image /= np.linalg.norm(image, axis=-1, keepdims=True)
    predictions = np.argmax(image @ weights.T, axis=-1)
    return float(np.mean(predictions == np.array([e["label"] for e in examples]))), predictions


def test_a_model_is_scored_on_a_list_of_prepared_folders_as_clip_scores_them(tiny_clip, data_dir, tmp_path):
    from saeft_jax import hf

    path, model, params = tiny_clip
    assert (
        evaluate.main(
            [
                f"--model={path}",
                "--suite=shapes/test,shapes/shift",
                f"--data_dir={data_dir}",
                f"--out={tmp_path}",
                "--batch_size=8",
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "evaluation.json").read_text())
    tokenizer = hf.load_tokenizer(path)
    reference = {
        name: reference_top1(model, params, tokenizer, dataset_spec(name, str(data_dir)), data_dir)
        for name in ("shapes/test", "shapes/shift")
    }
    assert all(len(set(predictions)) > 1 for _, predictions in reference.values())  # the answer is no constant
    expected = {name: top1 for name, (top1, _) in reference.items()}
    assert result["metrics"] == pytest.approx(expected, abs=1e-12)
    assert result["id_dataset"] == "shapes/test" and result["ood_datasets"] == ["shapes/shift"]
    assert result["avg_ood"] == pytest.approx(expected["shapes/shift"])
    assert result["dataset_metrics"] == {"shapes/test": "top1", "shapes/shift": "top1"}
    assert "| `" + str(path) + "` |" in (tmp_path / "evaluation.md").read_text()


def test_a_head_replaces_the_zero_shot_one_in_its_label_space_and_wise_ft_sweeps(tiny_clip, data_dir, tmp_path):
    from saeft_jax import storage

    path = tiny_clip[0]
    labels = np.array(
        [open_source(dataset_spec("shapes/test", str(data_dir)), data_dir)[i]["label"] for i in range(12)]
    )
    constant = {"W": np.zeros((3, 32), np.float32), "b": np.array([0.0, 0.0, 1.0], np.float32)}  # always "stripes"
    storage.save_safetensors(tmp_path / "head.safetensors", constant)
    result = evaluate.evaluate(
        str(path),
        "shapes/test,shapes/shift",
        head=str(tmp_path / "head.safetensors"),
        data_dir=str(data_dir),
        wise_with=str(path),
        alphas=(0.5,),
        batch_size=8,
        show_progress=False,
    )
    assert result["metrics"]["shapes/test"] == pytest.approx(np.mean(labels == 2))  # the head's constant class
    zero_shot = evaluate.evaluate(
        str(path), "shapes/test,shapes/shift", data_dir=str(data_dir), batch_size=8, show_progress=False
    )
    assert result["wise"]["0.0"]["metrics"] == zero_shot["metrics"]  # alpha 0: the --wise_with model alone
    assert result["wise"]["1.0"]["metrics"] == result["metrics"] and set(result["wise"]) == {"0.0", "0.5", "1.0"}


@pytest.mark.parametrize(
    "args, says",
    [
        (["--suite=shapes/tset"], "--suite 'shapes/tset': unknown dataset 'shapes/tset'"),
        (["--suite=nothing"], "--suite 'nothing': unknown suite 'nothing'"),
        (["--suite=shapes/test", "--head=HEAD"], "--head HEAD holds a head of shape (2, 32)"),
        (["--suite=shapes/test", "--model=/no/such/model"], "/no/such/model"),
    ],
)
def test_mistakes_are_one_paragraph_and_exit_2(tiny_clip, data_dir, tmp_path, capsys, args, says):
    from saeft_jax import storage

    path = tiny_clip[0]
    storage.save_safetensors(
        tmp_path / "head.safetensors", {"W": np.zeros((2, 32), np.float32), "b": np.zeros(2, np.float32)}
    )
    args = [a.replace("HEAD", str(tmp_path / "head.safetensors")) for a in args]
    says = says.replace("HEAD", str(tmp_path / "head.safetensors"))
    model = [] if any(a.startswith("--model") for a in args) else [f"--model={path}"]
    assert evaluate.main([*model, *args, f"--data_dir={data_dir}", f"--out={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err and err.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()  # nothing written
