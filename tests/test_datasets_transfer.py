"""The reference's remaining datasets: CIFAR-10.1/-10.2/-10-C, CIFAR-100-C, FGVC-Aircraft and the dSprites
tasks (specs, label spaces, preparation with count checks, what is read), the corruption config, and
configs/transfer_vitb16.py for every transfer set."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from saeft_jax.config import base_config, finish
from saeft_jax.data import labels, prepare, registry, sources
from saeft_jax.data.registry import dataset_spec, suite
from saeft_jax.errors import ConfigError
from saeft_jax.stages.context import Run

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def test_new_specs_have_their_label_spaces_class_names_and_metric():
    expected = {  # name: (source, location, split, label space, classes)
        "cifar10_1": ("tfds", "cifar10_1/v6", "test", "cifar10", 10),
        "cifar10_2": ("prepared", "cifar10_2", "test", "cifar10", 10),
        "cifar10_c": ("prepared", "cifar10_c", "+".join(f"{c}_5" for c in labels.CORRUPTIONS), "cifar10", 10),
        "cifar100_c": ("prepared", "cifar100_c", "+".join(f"{c}_5" for c in labels.CORRUPTIONS), "cifar100", 100),
        "fgvc_aircraft_train": ("prepared", "fgvc_aircraft", "train", "fgvc_aircraft", 100),
        "fgvc_aircraft_val": ("prepared", "fgvc_aircraft", "val", "fgvc_aircraft", 100),
        "fgvc_aircraft": ("prepared", "fgvc_aircraft", "test", "fgvc_aircraft", 100),
        "dsprites_shape_train": ("tfds", "dsprites", "train[:80%]", "dsprites_shape", 3),
        "dsprites_scale_val": ("tfds", "dsprites", "train[80%:90%]", "dsprites_scale", 6),
        "dsprites_orientation": ("tfds", "dsprites", "train[90%:]", "dsprites_orientation", 40),
        "dsprites_x": ("tfds", "dsprites", "train[90%:]", "dsprites_x", 32),
        "dsprites_y": ("tfds", "dsprites", "train[90%:]", "dsprites_y", 32),
        "cifar100_train": ("tfds", "cifar100", "train", "cifar100", 100),
        "dtd_val": ("tfds", "dtd", "validation", "dtd", None),
        "oxford_flowers102_val": ("tfds", "oxford_flowers102", "validation", "oxford_flowers102", None),
    }
    for name, (source, location, split, space, classes) in expected.items():
        spec = dataset_spec(name)
        assert (spec.source, spec.location, spec.split, spec.label_space) == (source, location, split, space), name
        assert spec.metric == "top1" and spec.logit_sets is None and all("{}" in t for t in spec.templates), name
        if classes is not None:
            assert len(spec.classnames) == classes == len(set(spec.classnames)), name
    for name in ("cifar10", "cifar10_train", "cifar10_1", "cifar10_2", "cifar10_c"):
        assert dataset_spec(name).classnames == CIFAR10  # one head scores them all
    assert dataset_spec("cifar100_c").classnames[39] == "keyboard"  # not the reference's 101-name list
    assert dataset_spec("cifar100").classnames[:2] == ("apple", "aquarium fish")
    assert dataset_spec("dsprites_shape").classnames == ("square", "ellipse", "heart")
    assert dataset_spec("dsprites_orientation").classnames[::13] == ("0", "120", "240", "360")
    aircraft = dataset_spec("fgvc_aircraft").classnames
    assert aircraft[0] == "707-320" and aircraft[25] == "A320" and aircraft[-1] == "Yak-42"
    assert dataset_spec("cifar10_c").preparation("D") == (
        "python -m saeft_jax.data.prepare cifar10_c --source=SOURCE_DIR --data_dir=D"
    )
    assert dataset_spec("cifar10_1").preparation("D") == (
        "tfds build cifar10_1/v6 --file_format=array_record --data_dir=D"
    )


def test_transfer_suites_and_their_training_and_validation_splits():
    assert suite("transfer_cifar10") == ("cifar10", ("cifar10_1", "cifar10_2", "cifar10_c"))
    assert suite("transfer_cifar100") == ("cifar100", ("cifar100_c",))
    assert suite("transfer_dtd") == ("dtd", ()) and suite("transfer_dsprites_x") == ("dsprites_x", ())
    own = {name: registry.validation_of(name) for name in registry.TRANSFER_SETS}
    assert {n for n, v in own.items() if v} == {
        "dtd",
        "oxford_flowers102",
        "fgvc_aircraft",
        *(f"dsprites_{t}" for t in labels.DSPRITES_TASKS),
    }
    for name in registry.TRANSFER_SETS:
        test, train = dataset_spec(name), dataset_spec(f"{name}_train")
        assert train.label_space == test.label_space == name and train.location == test.location
        assert train.split != test.split
        if own[name]:
            val = dataset_spec(own[name])
            assert val.label_space == name and val.split not in (train.split, test.split)
    with pytest.raises(KeyError, match="unknown dataset 'stl10_val'"):
        dataset_spec("stl10_val")  # STL-10 has no validation split: finetune.val_fraction holds one out


def test_cifar10_1_reads_the_v6_config_through_tfds():
    import tensorflow_datasets as tfds

    seen = []

    def as_data_source(builder, split, **kwargs):
        seen.append((builder.name, builder.builder_config.name, split))
        return [{"image": np.full((32, 32, 3), i, np.uint8), "label": 9 - i} for i in range(3)]

    with tfds.testing.mock_data(as_data_source_fn=as_data_source):
        source = sources.open_source(dataset_spec("cifar10_1"), "/tmp/unused")
        assert [source[i]["label"] for i in range(3)] == [9, 8, 7]
        assert [CIFAR10[source[i]["label"]] for i in range(2)] == ["truck", "ship"]
    assert seen == [("cifar10_1", "v6", "test")]


def _cifar_images(count: int, seed: int) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def test_cifar10_2_prepares_its_test_npz_with_a_count_check(tmp_path):
    images, truth = _cifar_images(20, 0), np.arange(20) % 10
    (tmp_path / "src").mkdir()
    np.savez(tmp_path / "src" / "cifar102_test.npz", images=images, labels=truth, label_names=np.asarray(CIFAR10))
    with pytest.raises(
        prepare.PreparationError,
        match="cifar10_2 does not have the expected size: split test: 20 images, expected 2000",
    ):
        prepare.prepare("cifar10_2", tmp_path / "src", tmp_path / "data", show_progress=False)
    info = prepare.prepare("cifar10_2", tmp_path / "src", tmp_path / "data", check_counts=False, show_progress=False)
    assert info["splits"] == {"test": 20} and info["classnames"] == list(CIFAR10)
    source = sources.open_source(dataset_spec("cifar10_2"), tmp_path / "data")
    for i in (0, 7, 19):  # PNG: the pixels come back exactly, in order
        np.testing.assert_array_equal(source[i]["image"], images[i])
        assert source[i]["label"] == i % 10


def test_cifar10_2_refuses_the_pickled_npy_layout(tmp_path):
    (tmp_path / "src").mkdir()
    np.save(tmp_path / "src" / "cifar102_test.npy", np.asarray([{"images": 1}], dtype=object))
    with pytest.raises(
        prepare.PreparationError,
        match=r"cifar102_test\.npz is missing \(cifar102_test\.npy is the "
        r"older, pickled layout",
    ):
        prepare.prepare("cifar10_2", tmp_path / "src", tmp_path / "data", show_progress=False)


PER_SEVERITY = 4  # rows per severity in the small CIFAR-C folders below (10,000 in the real ones)


def _write_corrupted(folder, corruptions=labels.CORRUPTIONS, classes: int = 10) -> None:
    """A CIFAR-C folder whose image (corruption c, row r) is filled with (index of c, r, 7) and
    labelled r % PER_SEVERITY + 3 (mod `classes`), the same labels at every severity, as Hendrycks'."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = 5 * PER_SEVERITY
    np.save(folder / "labels.npy", ((np.arange(rows) % PER_SEVERITY + 3) % classes).astype(np.uint8))
    for c in corruptions:
        images = np.zeros((rows, 32, 32, 3), np.uint8)
        images[..., 0] = labels.CORRUPTIONS.index(c) if c in labels.CORRUPTIONS else 99
        images[..., 1] = np.arange(rows)[:, None, None]
        images[..., 2] = 7
        np.save(folder / f"{c}.npy", images)


def _run(tmp_path, **corruptions) -> Run:
    c = base_config()
    c.data_dir = str(tmp_path / "data")
    c.corruptions.update(corruptions)
    return Run(finish(c), tmp_path / "work")


def test_cifar10_c_reads_the_configured_corruptions_at_the_configured_severity(tmp_path):
    _write_corrupted(tmp_path / "CIFAR-10-C", (*labels.CORRUPTIONS, "spatter"))
    with pytest.raises(
        prepare.PreparationError,
        match=r"split gaussian_noise_1: 4 images, expected 10000; .*; and "
        r"70 more\. A partial download",
    ):
        prepare.prepare("cifar10_c", tmp_path / "CIFAR-10-C", tmp_path / "data", show_progress=False)
    info = prepare.prepare(
        "cifar10_c", tmp_path / "CIFAR-10-C", tmp_path / "data", check_counts=False, show_progress=False
    )
    assert len(info["splits"]) == 16 * 5 and set(info["splits"].values()) == {PER_SEVERITY}
    run = _run(tmp_path, names=("fog", "snow"), severity=3)
    spec = run.spec("cifar10_c")
    assert spec.split == "fog_3+snow_3" and run.spec("cifar10").split == "test"  # other datasets unchanged
    source = run.source(spec)
    assert len(source) == 2 * PER_SEVERITY
    rows = [
        (int(source[i]["image"][0, 0, 0]), int(source[i]["image"][0, 0, 1]), source[i]["label"])
        for i in range(len(source))
    ]
    fog, snow, first = labels.CORRUPTIONS.index("fog"), labels.CORRUPTIONS.index("snow"), 2 * PER_SEVERITY
    assert rows == [(c, first + r, r + 3) for c in (fog, snow) for r in range(PER_SEVERITY)]  # rows 8-11 of each
    extra = _run(tmp_path, names=("spatter",), severity=1).spec("cifar10_c")
    assert [int(sources.open_source(extra, tmp_path / "data")[i]["image"][0, 0, 1]) for i in range(4)] == [0, 1, 2, 3]


def test_cifar100_c_default_selection_is_the_15_corruptions_at_severity_5(tmp_path):
    _write_corrupted(tmp_path / "CIFAR-100-C", classes=100)
    prepare.prepare("cifar100_c", tmp_path / "CIFAR-100-C", tmp_path / "data", check_counts=False, show_progress=False)
    run = _run(tmp_path)
    source = run.source(run.spec("cifar100_c"))
    assert len(source) == 15 * PER_SEVERITY
    assert [int(source[i]["image"][0, 0, 0]) for i in range(0, len(source), PER_SEVERITY)] == list(range(15))
    assert {int(source[i]["image"][0, 0, 1]) for i in range(len(source))} == {16, 17, 18, 19}  # severity 5's rows
    missing = _run(tmp_path, names=("fog", "saturate"), severity=2)
    with pytest.raises(sources.DatasetNotPrepared, match=r"has no split 'saturate_2'.*prepare cifar100_c"):
        missing.source(missing.spec("cifar100_c"))


def test_cifar_c_folders_that_do_not_pair_up_are_refused(tmp_path):
    _write_corrupted(tmp_path / "c", ("fog",))
    np.save(tmp_path / "c" / "snow.npy", np.zeros((7, 32, 32, 3), np.uint8))
    with pytest.raises(prepare.PreparationError, match=r"snow\.npy holds 7 images but labels\.npy 20 labels"):
        prepare.prepare("cifar10_c", tmp_path / "c", tmp_path / "data", check_counts=False, show_progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(prepare.PreparationError, match="lacks labels.npy or every <corruption>.npy"):
        prepare.prepare("cifar10_c", tmp_path / "empty", tmp_path / "data", show_progress=False)


@pytest.mark.parametrize(
    "key, value, message",
    [
        (
            "names",
            ("fog", "bogus"),
            r"config\.corruptions\.names has unknown corruptions \['bogus'\]; CIFAR-10-C and "
            r"CIFAR-100-C have gaussian_noise, .*saturate",
        ),
        ("names", ("fog", "fog"), r"config\.corruptions\.names names a corruption twice"),
        ("names", (), r"config\.corruptions\.names is \(\); it must be a tuple of one or more"),
        ("severity", 0, r"config\.corruptions\.severity is 0; it must be an integer from 1 to 5"),
        ("severity", 6, r"config\.corruptions\.severity is 6"),
    ],
)
def test_bad_corruption_settings_are_refused_by_name(key, value, message):
    c = base_config()
    c.corruptions[key] = value
    with pytest.raises(ConfigError, match=message):
        finish(c)


def _write_aircraft(root, per_split: dict[str, list[tuple[str, str]]]) -> None:
    from PIL import Image

    data = root / "fgvc-aircraft-2013b" / "data"
    (data / "images").mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(labels.fgvc_aircraft_variants()) + "\n")
    for split, rows in per_split.items():
        (data / f"images_variant_{split}.txt").write_text("".join(f"{image} {variant}\n" for image, variant in rows))
        for image, _ in rows:
            Image.new("RGB", (6, 5), (int(image) % 256, 0, 0)).save(data / "images" / f"{image}.jpg")


def test_fgvc_aircraft_prepares_the_variant_splits(tmp_path):
    _write_aircraft(
        tmp_path,
        {
            "train": [("1025794", "707-320"), ("0034309", "Boeing 717")],
            "val": [("0062765", "F/A-18")],
            "test": [("1514522", "A320"), ("0000200", "Yak-42")],
        },
    )
    with pytest.raises(
        prepare.PreparationError,
        match="fgvc_aircraft does not have the expected size: 5 classes with "
        "images, expected 100; split train: 2 images, expected 3334",
    ):
        prepare.prepare("fgvc_aircraft", tmp_path / "fgvc-aircraft-2013b", tmp_path / "data", show_progress=False)
    info = prepare.prepare(
        "fgvc_aircraft", tmp_path / "fgvc-aircraft-2013b", tmp_path / "data", check_counts=False, show_progress=False
    )
    assert info["splits"] == {"train": 2, "val": 1, "test": 2}
    names = labels.fgvc_aircraft_variants()
    for name, truth in (
        ("fgvc_aircraft_train", ["707-320", "Boeing 717"]),
        ("fgvc_aircraft_val", ["F/A-18"]),
        ("fgvc_aircraft", ["A320", "Yak-42"]),
    ):
        source = sources.open_source(dataset_spec(name), tmp_path / "data")
        assert [names[source[i]["label"]] for i in range(len(source))] == truth


def test_fgvc_aircraft_refuses_other_variants_and_missing_images(tmp_path):
    _write_aircraft(tmp_path, {"train": [("1", "A320")], "val": [("2", "A320")], "test": [("3", "A320")]})
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    (data / "images" / "2.jpg").unlink()
    with pytest.raises(prepare.PreparationError, match=r"1 images the split files list are missing.*2\.jpg"):
        prepare.prepare(
            "fgvc_aircraft",
            tmp_path / "fgvc-aircraft-2013b",
            tmp_path / "data",
            check_counts=False,
            show_progress=False,
        )
    (data / "variants.txt").write_text("A320\nA321\n")
    with pytest.raises(prepare.PreparationError, match="lists 2 variants that differ from FGVC-Aircraft 2013b's 100"):
        prepare.prepare("fgvc_aircraft", tmp_path / "fgvc-aircraft-2013b", tmp_path / "data", show_progress=False)


def _label(task: str, index: int) -> int:
    """The label of factor `task` that the mock dSprites gives example `index` (each factor its own)."""
    offset = labels.DSPRITES_TASKS.index(task)
    return (index + offset) % len(labels.dsprites(task).classnames)


@pytest.mark.parametrize("task", labels.DSPRITES_TASKS)
def test_dsprites_tasks_read_their_own_label_and_black_and_white_rgb(task):
    import tensorflow_datasets as tfds

    seen = []

    def as_data_source(builder, split, **kwargs):
        seen.append((builder.name, split))
        pattern = np.zeros((64, 64, 1), np.uint8)
        pattern[10:20, 30:40] = 1  # dSprites stores its pixels as 0/1
        keys = {
            "shape": "label_shape",
            "scale": "label_scale",
            "orientation": "label_orientation",
            "x": "label_x_position",
            "y": "label_y_position",
        }
        return [{"image": pattern, **{keys[t]: _label(t, i) for t in labels.DSPRITES_TASKS}} for i in range(5)]

    with tfds.testing.mock_data(as_data_source_fn=as_data_source):
        for suffix, split in (("_train", "train[:80%]"), ("_val", "train[80%:90%]"), ("", "train[90%:]")):
            source = sources.open_source(dataset_spec(f"dsprites_{task}{suffix}"), "/tmp/unused")
            assert [source[i]["label"] for i in range(5)] == [_label(task, i) for i in range(5)]
            assert seen[-1] == ("dsprites", split)
        image = source[0]["image"]
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert (image[10:20, 30:40] == 255).all() and image.sum() == 255 * 3 * 100


def _build_tiny_sprites(data_dir) -> str:
    """A TFDS dataset of 50 dSprites-like examples (0/1 pixels, a shape label, the generation index),
    built here as ArrayRecord (tensor features need no TensorFlow); returns its TFDS name."""
    import tensorflow_datasets as tfds

    class SaeftTinySprites(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Tensor(shape=(4, 4, 1), dtype=np.uint8),
                        "label_shape": tfds.features.ClassLabel(num_classes=3),
                        "index": np.int64,
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(50):
                yield i, {"image": np.full((4, 4, 1), i % 2, np.uint8), "label_shape": i % 3, "index": i}

    builder = SaeftTinySprites(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare()
    return builder.name


def test_dsprites_slices_are_disjoint_random_samples_of_a_real_tfds_split(tmp_path):
    import dataclasses

    import tensorflow_datasets as tfds

    name = _build_tiny_sprites(tmp_path)
    parts = {}
    for suffix in ("_train", "_val", ""):
        spec = dataclasses.replace(dataset_spec(f"dsprites_shape{suffix}"), location=name)
        source = sources.open_source(spec, tmp_path)
        raw = tfds.data_source(name, split=spec.split, data_dir=str(tmp_path))
        parts[suffix] = [int(raw[i]["index"]) for i in range(len(raw))]
        assert len(source) == len(raw)
        for i, index in enumerate(parts[suffix]):
            assert source[i]["label"] == index % 3 and source[i]["image"].shape == (4, 4, 3)
            assert (source[i]["image"] == 255 * (index % 2)).all()
    assert [len(p) for p in parts.values()] == [40, 5, 5]
    assert sorted(sum(parts.values(), [])) == list(range(50))  # disjoint, and together every example
    assert parts["_train"] != sorted(parts["_train"])  # stored shuffled by TFDS: a slice is no block of latents


@pytest.fixture(scope="module")
def transfer_config():
    return importlib.import_module("configs.transfer_vitb16")


@pytest.mark.parametrize("name", registry.TRANSFER_SETS)
def test_transfer_config_resolves_for_every_dataset(transfer_config, name):
    c = finish(transfer_config.get_config(f"dataset={name}")).config
    assert c.train_dataset == f"{name}_train" and suite(c.eval_suite)[0] == name
    assert dataset_spec(c.train_dataset).label_space == name
    assert list(c.finetune.methods) == ["none", "sae_add_remove"]
    if registry.validation_of(name):
        assert c.finetune.val_dataset == f"{name}_val" and c.finetune.val_fraction == 0.0
        examples = transfer_config.TRAIN_EXAMPLES[name]
    else:
        assert c.finetune.val_dataset == "" and c.finetune.val_fraction == 0.1
        examples = len(sources.held_out(transfer_config.TRAIN_EXAMPLES[name], 0.1, 0)[0])
    steps = c.finetune.epochs * examples // c.finetune.batch_size
    assert 0 < c.finetune.warmup_steps < steps and c.finetune.batch_size <= examples
    assert c.saes.main.batch_size <= examples


def test_transfer_config_numbers_for_two_datasets(transfer_config):
    dtd = transfer_config.get_config("dataset=dtd")  # 1,880 training images, its own validation split
    assert (dtd.finetune.batch_size, dtd.finetune.epochs, dtd.finetune.warmup_steps) == (128, 10, 14)
    cifar = transfer_config.get_config("dataset=cifar10")  # 45,000 after 5,000 held out: 3,515 steps
    assert cifar.finetune.warmup_steps == 351 and cifar.eval_suite == "transfer_cifar10"
    assert transfer_config.get_config("dataset=dsprites_x").finetune.epochs == 1
    assert set(transfer_config.TRAIN_EXAMPLES) == set(registry.TRANSFER_SETS)


@pytest.mark.parametrize("arg", [None, "", "dataset=imagenet", "dataset=eurosat", "cifar10", "name=cifar10"])
def test_transfer_config_refuses_a_missing_or_unknown_dataset(transfer_config, arg):
    with pytest.raises(
        ConfigError,
        match=r"configs/transfer_vitb16\.py takes dataset=NAME .*NAME is one of cifar10, "
        r"cifar100, dtd, .*dsprites_y\.",
    ):
        transfer_config.get_config(arg)
