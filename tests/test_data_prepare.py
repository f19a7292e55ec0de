"""Preparation of image folders, ObjectNet and WILDS layouts into ArrayRecord; sources; errors."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from saeft_jax.data import labels, locations, prepare, sources
from saeft_jax.data.registry import DatasetSpec, dataset_spec


def write_image(path, seed: int, size=(12, 9)) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.RandomState(seed).randint(0, 256, (size[0], size[1], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def folder_spec(name: str, split: str = "test", classes: int = 3) -> DatasetSpec:
    return DatasetSpec(
        name,
        "prepared",
        name,
        split,
        name,
        ("a photo of a {}.",),
        fixed_classnames=tuple(f"c{i}" for i in range(classes)),
        prepare_kind="folder",
    )


def test_folder_round_trip_keeps_pixels_and_labels(tmp_path):
    truth = {}
    for label, name in enumerate(["cat", "dog", "sea_lion"]):
        for i in range(2):
            truth[(label, i)] = write_image(tmp_path / "src" / name / f"{i}.png", seed=10 * label + i)
    info = prepare.prepare("folder", tmp_path / "src", tmp_path / "data", name="pets", show_progress=False)
    assert info["classnames"] == ["cat", "dog", "sea lion"] and info["splits"] == {"test": 6}
    source = sources.open_source(folder_spec("pets"), tmp_path / "data")
    assert len(source) == 6
    for index in range(6):
        example = source[index]
        np.testing.assert_array_equal(example["image"], truth[(example["label"], index % 2)])
        assert example["label"] == index // 2


def test_corrupt_image_is_named_or_skipped_and_counted(tmp_path):
    write_image(tmp_path / "src" / "a" / "good.png", 0)
    (tmp_path / "src" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(prepare.PreparationError, match=r"broken\.png.*--skip_corrupt"):
        prepare.prepare("folder", tmp_path / "src", tmp_path / "data", name="x", show_progress=False)
    assert not (tmp_path / "data" / "saeft" / "x" / "info.json").exists()  # nothing that looks complete
    info = prepare.prepare(
        "folder", tmp_path / "src", tmp_path / "data", name="x", skip_corrupt=True, show_progress=False
    )
    assert info["splits"] == {"test": 1} and info["skipped"]["test"][0].endswith("broken.png")


def test_objectnet_keeps_the_113_overlapping_classes_and_checks_counts(tmp_path):
    classnames, _, folder_class = labels.objectnet()
    for i, folder in enumerate(sorted(folder_class)):
        write_image(tmp_path / "objectnet-1.0" / "images" / folder / "img.png", i, size=(6, 6))
    write_image(tmp_path / "objectnet-1.0" / "images" / "not_in_imagenet_class" / "img.png", 999, size=(6, 6))
    with pytest.raises(prepare.PreparationError, match="split test: 113 images, expected 18574"):
        prepare.prepare("objectnet", tmp_path / "objectnet-1.0", tmp_path / "data", show_progress=False)
    info = prepare.prepare(
        "objectnet", tmp_path / "objectnet-1.0", tmp_path / "data", check_counts=False, show_progress=False
    )
    assert info["splits"] == {"test": 113}
    source = sources.open_source(dataset_spec("objectnet"), tmp_path / "data")
    assert sorted(source[i]["label"] for i in range(113)) == list(range(113))
    first = sorted(folder_class)[0]
    assert source[0]["label"] == folder_class[first]


def test_objectnet_missing_folders_are_listed(tmp_path):
    write_image(tmp_path / "on" / "images" / "umbrella" / "a.png", 0)
    with pytest.raises(prepare.PreparationError, match="lacks 112 of the 113 ObjectNet class folders"):
        prepare.prepare("objectnet", tmp_path / "on", tmp_path / "data", show_progress=False)


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_iwildcam_layout(tmp_path):
    root = tmp_path / "iwildcam_v2.0"
    rows = []
    for i, (split, y) in enumerate([("train", 0), ("train", 5), ("id_test", 5), ("test", 181), ("test", 3)]):
        write_image(root / "train" / f"{i}.jpg", i)
        rows.append({"split": split, "location_remapped": str(i % 2), "y": str(y), "filename": f"{i}.jpg"})
    _write_csv(root / "metadata.csv", rows)
    info = prepare.prepare("iwildcam", root, tmp_path / "data", check_counts=False, show_progress=False)
    assert info["splits"] == {"train": 2, "id_test": 1, "test": 2}
    ood = sources.open_source(dataset_spec("iwildcam_ood"), tmp_path / "data")
    assert [ood[i]["label"] for i in range(2)] == [181, 3] and [ood[i]["group"] for i in range(2)] == [1, 0]


def test_fmow_splits_by_year_and_regions(tmp_path):
    root = tmp_path / "fmow_v1.1"
    root.mkdir()
    _write_csv(
        root / "country_code_mapping.csv",
        [{"alpha-3": "FRA", "region": "Europe"}, {"alpha-3": "KEN", "region": "Africa"}],
    )
    table = [
        ("train", "2010-01-01T00:00:00Z", "airport", "FRA"),
        ("test", "2011-05-01T00:00:00Z", "dam", "KEN"),
        ("val", "2014-01-01T00:00:00Z", "dam", "FRA"),
        ("test", "2017-01-01T00:00:00Z", "zoo", "XXX"),
        ("seq", "2017-01-01T00:00:00Z", "zoo", "FRA"),
        ("test", "2014-01-01T00:00:00Z", "zoo", "FRA"),
    ]
    rows = []
    for i, (split, timestamp, category, country) in enumerate(table):
        write_image(root / "images" / f"rgb_img_{i}.png", i)
        rows.append({"split": split, "timestamp": timestamp, "category": category, "country_code": country})
    _write_csv(root / "rgb_metadata.csv", rows)
    info = prepare.prepare("fmow", root, tmp_path / "data", check_counts=False, show_progress=False)
    assert info["splits"] == {"train": 1, "id_test": 1, "val": 1, "test": 1}  # seq and 2014 test dropped
    ood = sources.open_source(dataset_spec("fmow_ood"), tmp_path / "data")
    names = labels.fmow_classnames()
    assert names[ood[0]["label"]] == "zoo" and labels.FMOW_REGIONS[ood[0]["group"]] == "Other"
    id_test = sources.open_source(dataset_spec("fmow_id"), tmp_path / "data")
    assert labels.FMOW_REGIONS[id_test[0]["group"]] == "Africa"


def test_unprepared_datasets_name_the_command_and_the_place(tmp_path):
    with pytest.raises(sources.DatasetNotPrepared, match=r"python -m saeft_jax.data.prepare objectnet") as error:
        sources.open_source(dataset_spec("objectnet"), tmp_path)
    assert str(tmp_path / "saeft" / "objectnet") in str(error.value)
    with pytest.raises(
        sources.DatasetNotPrepared, match=r"tfds build imagenet_v2/matched-frequency --file_format=array_record"
    ):
        sources.open_source(dataset_spec("imagenet_v2"), tmp_path)


def test_prepare_command_line_reports_errors_without_traceback(tmp_path, capsys):
    assert (
        prepare.main(["folder", "--source", str(tmp_path / "nowhere"), "--name", "x", "--data_dir", str(tmp_path)]) == 2
    )
    assert "is not a directory" in capsys.readouterr().err


def test_tfds_sources_through_mock_data_map_imagenet_r_labels():
    import tensorflow_datasets as tfds

    subset = labels.imagenet_subset("imagenet_r")

    def as_data_source(builder, split, **kwargs):
        assert (builder.name, split) == ("imagenet_r", "test")
        return [
            {"image": np.full((5 + i, 7, 3), i, np.uint8), "label": subset[3 * i], "file_name": f"{i}"}
            for i in range(4)
        ]

    with tfds.testing.mock_data(as_data_source_fn=as_data_source):
        source = sources.open_source(dataset_spec("imagenet_r"), "/tmp/unused")
        assert len(source) == 4
        assert [source[i]["label"] for i in range(4)] == [0, 3, 6, 9]
        assert source[2]["image"].shape == (7, 7, 3)
    with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
        source = sources.open_source(dataset_spec("cifar10"), "/tmp/unused")
        example = source[1]
        assert example["image"].dtype == np.uint8 and example["image"].shape == (32, 32, 3)
        assert 0 <= example["label"] < 10


def test_splits_prepared_one_at_a_time_accumulate(tmp_path):
    for split, seed in (("train", 0), ("test", 50)):
        for label, name in enumerate(["cat", "dog"]):
            write_image(tmp_path / split / name / "0.png", seed + label)
            write_image(tmp_path / split / name / "1.png", seed + label + 10)
    prepare.prepare("folder", tmp_path / "train", tmp_path / "data", name="pets", split="train", show_progress=False)
    info = prepare.prepare(
        "folder", tmp_path / "test", tmp_path / "data", name="pets", split="test", show_progress=False
    )
    assert info["splits"] == {"train": 4, "test": 4}  # the first split's metadata is kept
    for split in ("train", "test"):
        assert len(sources.open_source(folder_spec("pets", split, classes=2), tmp_path / "data")) == 4
    (tmp_path / "test" / "bird").mkdir()
    write_image(tmp_path / "test" / "bird" / "0.png", 99)
    with pytest.raises(prepare.PreparationError, match="other classes.*every split of a dataset shares its classes"):
        prepare.prepare("folder", tmp_path / "test", tmp_path / "data", name="pets", split="test", show_progress=False)
    assert prepare.records.read_info(locations.prepared_dir(tmp_path / "data", "pets"))["splits"] == {
        "train": 4,
        "test": 4,
    }


def test_a_split_prepared_again_replaces_its_shards(tmp_path):
    for i in range(5):
        write_image(tmp_path / "src" / "a" / f"{i}.png", i)
    prepare.prepare("folder", tmp_path / "src", tmp_path / "data", name="x", show_progress=False)
    for i in range(3):
        (tmp_path / "src" / "a" / f"{i}.png").unlink()
    info = prepare.prepare("folder", tmp_path / "src", tmp_path / "data", name="x", show_progress=False)
    assert info["splits"] == {"test": 2}
    assert len(sources.open_source(folder_spec("x", classes=1), tmp_path / "data")) == 2


def test_a_replacement_stopped_midway_leaves_the_split_unlisted_not_half_read(tmp_path, monkeypatch):
    for i in range(5):
        write_image(tmp_path / "src" / "a" / f"{i}.png", i)
    prepare.prepare("folder", tmp_path / "src", tmp_path / "data", name="x", show_progress=False)
    published = []

    def stop_after_the_old_shards_are_gone(partial, target):
        published.append(target)
        raise KeyboardInterrupt("stopped between removing the old shards and publishing the new")

    monkeypatch.setattr(prepare.records.storage, "publish", stop_after_the_old_shards_are_gone)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare("folder", tmp_path / "src", tmp_path / "data", name="x", show_progress=False)
    assert published and prepare.records.read_info(locations.prepared_dir(tmp_path / "data", "x"))["splits"] == {}
    with pytest.raises(sources.DatasetNotPrepared, match="saeft_jax.data.prepare"):
        sources.open_source(folder_spec("x", classes=1), tmp_path / "data")


@pytest.mark.parametrize("name", ["../../x", "a/b", ".hidden", ".."])
def test_names_that_would_write_outside_the_data_dir_are_refused(tmp_path, name):
    write_image(tmp_path / "src" / "a" / "0.png", 0)
    with pytest.raises(prepare.PreparationError, match="--name .* is not a plain name"):
        prepare.prepare("folder", tmp_path / "src", tmp_path / "data", name=name, show_progress=False)
    assert not any((tmp_path).glob("**/info.json"))


def test_links_out_of_the_source_are_refused(tmp_path):
    write_image(tmp_path / "src" / "a" / "0.png", 0)
    write_image(tmp_path / "elsewhere" / "secret.png", 1)
    (tmp_path / "src" / "a" / "1.png").symlink_to(tmp_path / "elsewhere" / "secret.png")
    with pytest.raises(prepare.PreparationError, match=r"lead outside it through links.*1\.png"):
        prepare.prepare("folder", tmp_path / "src", tmp_path / "data", name="x", show_progress=False)


def test_ignored_files_and_empty_classes_are_summarised_and_counts_checked(tmp_path, capsys):
    write_image(tmp_path / "src" / "a" / "0.png", 0)
    write_image(tmp_path / "src" / "a" / "1.png", 1)
    (tmp_path / "src" / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "src" / "b").mkdir()  # a class without images
    (tmp_path / "src" / "README").write_text("top-level file")
    with pytest.raises(prepare.PreparationError, match="split test: 2 images, expected 3"):
        prepare.prepare(
            "folder", tmp_path / "src", tmp_path / "data", name="x", expected={"images": 3}, show_progress=False
        )
    with pytest.raises(prepare.PreparationError, match="1 classes with images, expected 2"):
        prepare.prepare(
            "folder", tmp_path / "src", tmp_path / "data", name="x", expected={"classes": 2}, show_progress=False
        )
    code = prepare.main(
        [
            "folder",
            f"--source={tmp_path / 'src'}",
            f"--data_dir={tmp_path / 'data'}",
            "--name=x",
            "--expected_images=2",
            "--expected_classes=1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "test 2 images" in out
    assert "1 class folders without images" in out and ": b" in out
    assert "2 files that are not images, ignored" in out and "notes.txt" in out and "README" in out
    info = prepare.records.read_info(locations.prepared_dir(tmp_path / "data", "x"))
    assert info["empty_classes"] == {"test": ["b"]} and len(info["ignored"]["test"]) == 2


def test_an_empty_data_dir_prepares_where_a_run_with_an_empty_data_dir_reads(tmp_path, monkeypatch, capsys):
    """`--data_dir=` means the default ($TFDS_DATA_DIR or ~/tensorflow_datasets) for prepare as
    `config.data_dir=""` does for a run, not the current directory."""
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / "src" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "src" / name / "1.png")
    monkeypatch.setattr(locations, "DEFAULT_DATA_DIR", str(tmp_path / "default"))
    monkeypatch.chdir(tmp_path)
    assert prepare.main(["folder", f"--source={tmp_path / 'src'}", "--name=x", "--data_dir="]) == 0
    assert f"--config.data_dir={tmp_path / 'default'}" in capsys.readouterr().out
    assert prepare.records.read_info(locations.prepared_dir(locations.resolve_data_dir(""), "x")) is not None
    assert not (tmp_path / "saeft").exists()


def test_prepared_datasets_are_written_to_and_read_from_a_bucket(tmp_path, bucket):
    import pickle

    truth = {}
    for split in ("train", "test"):
        for label, name in enumerate(["cat", "dog"]):
            truth[split, label] = write_image(tmp_path / split / name / "0.png", 7 * label + len(split))
        prepare.prepare("folder", tmp_path / split, f"{bucket}/tfds", name="pets", split=split, show_progress=False)
    info = prepare.records.read_info(locations.prepared_dir(f"{bucket}/tfds", "pets"))
    assert info["splits"] == {"train": 2, "test": 2}  # accumulated in the bucket too
    for split in ("train", "test"):
        source = sources.open_source(folder_spec("pets", split, classes=2), f"{bucket}/tfds")
        reopened = pickle.loads(pickle.dumps(source))  # as a grain worker gets it
        for index in range(2):
            np.testing.assert_array_equal(reopened[index]["image"], truth[split, reopened[index]["label"]])


def test_tfds_sources_keep_a_bucket_data_dir(monkeypatch):
    import tensorflow_datasets as tfds

    seen = {}
    monkeypatch.setattr(tfds, "data_source", lambda name, **kw: seen.update(kw) or [None])
    sources.open_source(dataset_spec("imagenet_v2"), "gs://my-bucket/tensorflow_datasets")
    assert seen["data_dir"] == "gs://my-bucket/tensorflow_datasets"  # not gs:/my-bucket/...


def test_split_names_that_share_a_prefix_keep_their_own_shards(tmp_path):
    for split, count in (("test-extra", 4), ("test", 6)):
        for i in range(count):
            write_image(tmp_path / split / "a" / f"{i}.png", i)
    for order in (("test-extra", "test"), ("test", "test-extra")):
        data = tmp_path / ("data-" + order[0])
        for split in order:
            prepare.prepare("folder", tmp_path / split, data, name="x", split=split, show_progress=False)
        for split, count in (("test-extra", 4), ("test", 6)):
            assert len(sources.open_source(folder_spec("x", split, classes=1), data)) == count, (order, split)


def test_a_split_name_that_would_write_elsewhere_is_refused(tmp_path):
    write_image(tmp_path / "src" / "a" / "0.png", 0)
    with pytest.raises(prepare.PreparationError, match=r"--split '\.\./\.\./escaped' is not a plain name"):
        prepare.prepare(
            "folder", tmp_path / "src", tmp_path / "data", name="x", split="../../escaped", show_progress=False
        )
    assert not list(tmp_path.rglob("*.array_record"))


def test_hidden_folders_are_no_classes_and_dangling_links_are_listed(tmp_path):
    write_image(tmp_path / "src" / "cat" / "0.png", 0)
    write_image(tmp_path / "src" / "dog" / "0.png", 1)
    write_image(tmp_path / "src" / ".ipynb_checkpoints" / "0.png", 2)
    (tmp_path / "src" / "dog" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    info = prepare.prepare("folder", tmp_path / "src", tmp_path / "data", name="x", show_progress=False)
    assert info["classnames"] == ["cat", "dog"] and info["splits"] == {"test": 2}  # labels unshifted
    assert any(p.endswith(".ipynb_checkpoints") for p in info["ignored"]["test"])
    assert any(p.endswith("gone.png") for p in info["ignored"]["test"])


def test_splits_joined_with_plus_are_read_one_after_another(tmp_path):
    for split, seed in (("a", 0), ("b", 20)):
        for i in range(2):
            write_image(tmp_path / split / "cls" / f"{i}.png", seed + i)
        prepare.prepare("folder", tmp_path / split, tmp_path / "data", name="x", split=split, show_progress=False)
    joined = sources.open_source(folder_spec("x", "b+a", classes=1), tmp_path / "data")
    firsts = [sources.open_source(folder_spec("x", s, classes=1), tmp_path / "data")[0]["image"] for s in "ba"]
    assert len(joined) == 4
    np.testing.assert_array_equal(joined[0]["image"], firsts[0])
    np.testing.assert_array_equal(joined[2]["image"], firsts[1])
    with pytest.raises(sources.DatasetNotPrepared, match=r"has no split 'c' \(it has \['a', 'b'\]\)"):
        sources.open_source(folder_spec("x", "a+c", classes=1), tmp_path / "data")


def test_grayscale_tfds_images_come_out_rgb_as_prepared_ones_do(tmp_path):
    import tensorflow_datasets as tfds

    gray = np.random.RandomState(3).randint(0, 256, (6, 5), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")  # a prepared grayscale PNG is converted on decoding
    prepared = prepare.records.decode_image((tmp_path / "g.png").read_bytes())
    with tfds.testing.mock_data(
        as_data_source_fn=lambda builder, split, **kw: [
            {"image": gray[..., None], "label": 0},
            {"image": gray, "label": 1},
        ]
    ):
        source = sources.open_source(dataset_spec("caltech101"), "/tmp/unused")
        for i in range(2):
            assert source[i]["image"].shape == (6, 5, 3)
            np.testing.assert_array_equal(source[i]["image"], prepared)


def test_a_count_check_names_the_first_problems_and_counts_the_rest():
    listing = prepare.Listing({f"s{i}": [] for i in range(3)}, ("a",))
    with pytest.raises(
        prepare.PreparationError,
        match=r"split s0: 0 images, expected 1; .*split s5: 0 images, "
        r"expected 1; and 4 more\. A partial download",
    ):
        prepare._check_counts("x", {"splits": {f"s{i}": 1 for i in range(10)}}, listing)


def test_a_16_bit_png_keeps_its_brightness_and_32_bit_pixels_are_refused_by_name(tmp_path):
    ramp = (np.arange(12 * 9).reshape(12, 9) * 601).astype(np.uint16)  # 0 .. 64297, every 16-bit range
    half = np.zeros((12, 10), np.uint16)
    half[:, :5] = 65535  # half white, half black: mean 127.5 at any depth
    for name, pixels in (("ramp", ramp), ("half", half)):
        path = tmp_path / "src" / "gray" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
        assert Image.open(path).mode == "I;16"
    prepare.prepare("folder", tmp_path / "src", tmp_path / "data", name="deep", show_progress=False)
    source = sources.open_source(folder_spec("deep", classes=1), tmp_path / "data")
    for index, pixels in enumerate((half, ramp)):  # in file-name order
        expected = np.round(pixels.astype(np.float64) * 255 / 65535).astype(np.uint8)  # the 8-bit value of each
        np.testing.assert_array_equal(source[index]["image"], np.repeat(expected[..., None], 3, axis=-1))
    assert source[0]["image"].mean() == 127.5  # not ~255: nothing clipped
    float_image = tmp_path / "src32" / "gray" / "float.tiff"
    float_image.parent.mkdir(parents=True)
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(float_image)
    with pytest.raises(prepare.PreparationError, match=r"float\.tiff has 32-bit float pixels \(PIL mode F\)"):
        prepare.prepare("folder", tmp_path / "src32", tmp_path / "data", name="float", show_progress=False)


@pytest.mark.parametrize("orientation, turn", [(3, 2), (6, -1), (8, 1)])  # np.rot90's k: 6 is 90 degrees clockwise
def test_an_exif_rotated_jpeg_is_stored_as_a_viewer_shows_it(tmp_path, orientation, turn):
    pixels = np.zeros((16, 32, 3), np.uint8)  # landscape: a white block in the top-left corner only
    pixels[:8, :8] = 255
    path = tmp_path / "src" / "photos" / "taken.jpg"
    path.parent.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, quality=100, exif=exif)
    prepare.prepare("folder", tmp_path / "src", tmp_path / "data", name="rotated", show_progress=False)
    image = sources.open_source(folder_spec("rotated", classes=1), tmp_path / "data")[0]["image"]
    shown = np.rot90(pixels, k=turn)
    assert image.shape == shown.shape
    np.testing.assert_allclose(image.astype(float), shown.astype(float), atol=40)  # JPEG's blocks blur edges


def test_a_class_folder_whose_name_is_not_utf8_is_refused_by_name(tmp_path):
    import os

    write_image(tmp_path / "src" / "cat" / "0.png", 0)
    folder = os.path.join(os.fsencode(tmp_path / "src"), b"d\xf6g")  # Latin-1 "dög"
    os.mkdir(folder)
    write_image(tmp_path / "src" / os.fsdecode(b"d\xf6g") / "0.png", 1)
    with pytest.raises(
        prepare.PreparationError,
        match=r"1 class folder name\(s\) .* not valid UTF-8 text, e\.g\. "
        r"\[b'd\\xf6g'\]",
    ):
        prepare.prepare("folder", tmp_path / "src", tmp_path / "data", name="pets", show_progress=False)
    assert not (tmp_path / "data" / "saeft" / "pets").exists()
