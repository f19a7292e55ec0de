"""Own data by name: folders prepared with `prepare folder` addressed as NAME/SPLIT in a run's
config (train set, validation split, suites as lists), their class names and prompts; a config
method that only names a checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_main, smoke_config
from PIL import Image

from saeft_jax.data import folders, prepare, registry, sources
from saeft_jax.errors import UsageError

DIGITS = {"one": 1, "two": 2, "zero": 0}  # class folder -> digit, the folders in the (sorted) order of their labels
DIGIT_CLASSES = tuple(DIGITS)


def write_digit_folders(root, splits=("train", "val", "test"), per_class=(60, 15, 15)) -> dict[str, dict]:
    """scikit-learn's handwritten digits 0-2 (folders named as the demo names them) as 24x24 PNGs in
    `root/<split>/<class>/`, disjoint across splits; returns {split: {file name: (RGB pixels, label)}}
    for checking what is read."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    written: dict[str, dict] = {split: {} for split in splits}
    for label, name in enumerate(DIGIT_CLASSES):
        rows = np.flatnonzero(digits.target == DIGITS[name])
        start = 0
        for split, count in zip(splits, per_class):
            for row in rows[start : start + count]:
                pixels = (digits.images[row] * (255 / 16)).astype(np.uint8)
                pixels = np.repeat(np.repeat(pixels, 3, axis=0), 3, axis=1)  # 24x24, as the demo renders
                path = root / split / name / f"{row:04d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
                written[split][path.name] = (np.stack([pixels] * 3, -1), label)
            start += count
    return written


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Three splits of the digits prepared as `digits_mine`, a templates file given with the test split."""
    root = tmp_path_factory.mktemp("folders")
    written = write_digit_folders(root / "src")
    (root / "prompts.txt").write_text("# my prompts\na sketch of the digit {}.\n\nthe number {}, handwritten.\n")
    data_dir = root / "data"
    for split in ("train", "val", "test"):
        args = [
            "folder",
            f"--source={root / 'src' / split}",
            "--name=digits_mine",
            f"--split={split}",
            f"--data_dir={data_dir}",
        ] + ([f"--templates={root / 'prompts.txt'}"] if split == "test" else [])
        assert prepare.main(args) == 0
    return root, data_dir, written


def test_a_prepared_folder_is_named_by_name_and_split_with_its_classes_and_prompts(prepared):
    _, data_dir, written = prepared
    spec = registry.dataset_spec("digits_mine/val", str(data_dir))
    assert spec.classnames == DIGIT_CLASSES
    assert spec.templates == ("a sketch of the digit {}.", "the number {}, handwritten.")  # kept for every split
    assert spec.metric == "top1" and spec.logit_sets is None
    source = sources.open_source(spec, data_dir)
    assert len(source) == len(written["val"])
    for index in range(len(source)):  # what the run reads is what the folder held, with the folder's label
        example = source[index]
        pixels, label = written["val"][index_file(source, index)]
        np.testing.assert_array_equal(example["image"], pixels)
        assert example["label"] == label
    train = registry.dataset_spec("digits_mine/train", str(data_dir))
    assert train.label_space == spec.label_space  # one head scores every split


def index_file(source, index: int) -> str:
    """The file name preparation recorded for example `index`."""
    from saeft_jax.data import records

    return records.decode(source._records[index])["file"]


def test_folders_with_the_same_classes_share_a_label_space_and_others_do_not(prepared, tmp_path):
    _, data_dir, _ = prepared
    for name, classes in (("sketches", DIGIT_CLASSES), ("others", ("one", "zero"))):
        for label, folder in enumerate(classes):
            path = tmp_path / name / folder / "a.png"
            path.parent.mkdir(parents=True)
            Image.fromarray(np.full((8, 8), 40 * label, np.uint8)).save(path)
        prepare.prepare("folder", tmp_path / name, data_dir, name=name, split="test", show_progress=False)
    mine = registry.dataset_spec("digits_mine/test", str(data_dir))
    assert registry.dataset_spec("sketches/test", str(data_dir)).label_space == mine.label_space
    assert registry.dataset_spec("others/test", str(data_dir)).label_space != mine.label_space
    assert registry.dataset_spec("sketches/test", str(data_dir)).templates == folders.DEFAULT_TEMPLATES


def test_a_suite_is_a_name_or_a_list_of_datasets_the_first_in_distribution():
    assert registry.suite("mine/test") == ("mine/test", ())
    assert registry.suite("mine/test, sketches/test,imagenet_v2") == ("mine/test", ("sketches/test", "imagenet_v2"))
    assert registry.suite("imagenet") == registry.SUITES["imagenet"]
    with pytest.raises(KeyError, match="empty dataset name"):
        registry.suite("mine/test,")
    with pytest.raises(KeyError, match="unknown suite 'nope'"):
        registry.suite("nope")


def test_unknown_folder_names_say_how_to_prepare_them(prepared):
    _, data_dir, _ = prepared
    with pytest.raises(
        KeyError,
        match=r"no dataset 'mystery' is prepared in .*prepare folder --source=YOUR_FOLDER "
        r"--name=mystery --split=test",
    ):
        registry.dataset_spec("mystery/test", str(data_dir))
    with pytest.raises(KeyError, match=r"has the splits test, train, val, not 'tset'"):
        registry.dataset_spec("digits_mine/tset", str(data_dir))
    with pytest.raises(KeyError, match="two plain names"):
        registry.dataset_spec("digits_mine/../x", str(data_dir))


def test_templates_files_are_checked_and_the_config_one_replaces_the_preparations(prepared, tmp_path):
    from saeft_jax.stages.context import Run

    _, data_dir, _ = prepared
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of a {}.\na photo\n")
    with pytest.raises(
        UsageError, match=r"--templates .*bad.txt' holds lines without exactly one \{\} \(\['a photo'\]"
    ):
        folders.read_templates(bad, "--templates")
    with pytest.raises(UsageError, match="cannot be read"):
        folders.read_templates(tmp_path / "missing.txt", "--templates")
    good = tmp_path / "good.txt"
    good.write_text("a drawing of a {}.\n")
    from saeft_jax.config import finish

    run = Run(finish(smoke_config(data_dir=str(data_dir), templates_file=str(good))), tmp_path / "w")
    assert run.spec("digits_mine/test").templates == ("a drawing of a {}.",)
    assert run.spec("cifar10").templates == ("a photo of a {}.",)  # only folder datasets take it


@pytest.mark.parametrize(
    "key, value, says",
    [
        ("train_dataset", "nothere/train", "no dataset 'nothere' is prepared"),
        ("eval_suite", "digits_mine/test,digits_mine/tset", "not 'tset'"),
        ("finetune.val_dataset", "digits_mine/valid", "not 'valid'"),
    ],
)
def test_an_unknown_dataset_name_exits_2_with_one_paragraph_before_any_stage(prepared, tmp_path, key, value, says):
    _, data_dir, _ = prepared
    workdir = tmp_path / "w"
    result = run_main(
        "--config=configs/demo.py:smoke",
        f"--workdir={workdir}",
        f"--config.data_dir={data_dir}",
        "--config.demo.enabled=false",
        "--config.train_dataset=digits_mine/train",
        "--config.eval_suite=digits_mine/test",
        "--config.finetune.val_dataset=digits_mine/val",
        f"--config.{key}={value}",
        timeout=300,
        HF_HUB_OFFLINE="1",
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and says in result.stderr
    assert result.stderr.strip().count("\n") == 0  # one paragraph
    assert not (workdir / "config.json").exists()  # refused before any stage


def test_a_config_method_that_only_names_a_checkpoint_is_the_method_of_that_checkpoint():
    import ml_collections

    from saeft_jax import methods

    by_hand = methods.from_config(ml_collections.ConfigDict({"elsewhere": {"checkpoint": "/models/mine"}}))
    built = methods.from_config(ml_collections.ConfigDict({"elsewhere": methods.method(checkpoint="/models/mine")}))
    assert by_hand == built and by_hand["elsewhere"].describe() == {"checkpoint": "/models/mine"}
    with pytest.raises(UsageError, match="names no regularizer"):
        methods.from_config(ml_collections.ConfigDict({"plain": {"reg_lambda": 1.0}}))
    from saeft_jax.config import finish

    finished = []
    for entry in ({"checkpoint": "/models/mine"}, methods.method(checkpoint="/models/mine")):
        config = smoke_config(data_dir="")
        config.finetune.methods = ml_collections.ConfigDict({"elsewhere": entry})
        finished.append(finish(config).config.finetune.methods.to_dict())
    assert finished[0] == finished[1]  # as a config file writes it, and as method(...) builds it


@pytest.mark.slow
def test_the_smoke_pipeline_runs_on_a_prepared_folder_named_on_the_command_line(prepared, tmp_path_factory):
    import json

    root, data_dir, written = prepared
    # a shift of the same classes prepared under its own split name: the validation images inverted
    shift = root / "shift"
    for path in (root / "src" / "val").rglob("*.png"):
        target = shift / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - np.asarray(Image.open(path))).save(target)
    assert (
        prepare.main(
            ["folder", f"--source={shift}", "--name=digits_mine", "--split=val_shift", f"--data_dir={data_dir}"]
        )
        == 0
    )
    workdir = tmp_path_factory.mktemp("own_run")
    result = run_main(
        "--config=configs/demo.py:smoke",
        f"--workdir={workdir}",
        f"--config.data_dir={data_dir}",
        f"--config.demo.cache_dir={tmp_path_factory.getbasetemp() / 'cache'}",
        "--config.show_progress=false",
        "--config.train_dataset=digits_mine/train",
        "--config.finetune.val_dataset=digits_mine/val",
        "--config.eval_suite=digits_mine/test,digits_mine/val_shift",
        timeout=1800,
        HF_HUB_OFFLINE="1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((workdir / "report" / "report.json").read_text())
    assert report["id_dataset"] == "digits_mine/test" and report["ood_datasets"] == ["digits_mine/val_shift"]
    assert report["validation"] == "digits_mine/val"
    arrays = np.load(workdir / "evaluate" / "none" / "digits_mine" / "test.npz")
    truth = sorted(label for _, label in written["test"].values())
    assert sorted(arrays["labels"].tolist()) == truth  # every test image scored once, with its folder's label
    runs = report["runs"]
    top1 = float(np.mean(arrays["predictions"][-1] == arrays["labels"]))  # alpha 1: the fine-tuned model
    assert runs["none"]["metrics"]["digits_mine/test"] == pytest.approx(top1)
    assert runs["none"]["metrics"]["digits_mine/test"] > runs["zeroshot"]["metrics"]["digits_mine/test"]
    assert "digits_mine/test" in (workdir / "report" / "report.md").read_text()
