"""Workdir files on a local disk and in a bucket (an in-memory GCS emulator): the same calls,
atomic writes, local copies, and metrics that an object store cannot append to."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from saeft_jax import storage
from saeft_jax.observe import JsonLines


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path):
    if request.param == "local":
        return storage.path(tmp_path)
    return storage.path(request.getfixturevalue("bucket")) / request.node.name.replace("[", "-").rstrip("]")


def test_files_round_trip_and_writes_leave_no_partial_file(root):
    root.mkdir(parents=True, exist_ok=True)
    storage.write_atomic(root / "a.json", json.dumps({"x": 1}))
    storage.write_atomic(root / "a.json", json.dumps({"x": 2}))  # replaces
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.float32([0.5, -1])}
    storage.save_npz(root / "r.npz", index=np.arange(4), embedding=np.eye(4, dtype=np.float32))
    storage.save_safetensors(root / "p.safetensors", {**arrays, "i": np.arange(3)}, metadata={"k": "3"})
    assert json.loads((root / "a.json").read_text()) == {"x": 2}
    npz = storage.load_npz(root / "r.npz")
    np.testing.assert_array_equal(npz["embedding"], np.eye(4))
    tensors = storage.load_safetensors(root / "p.safetensors")
    np.testing.assert_array_equal(tensors["w"], arrays["w"])
    assert tensors["i"].dtype == np.float32  # stored as float32, as the artifacts promise
    assert sorted(p.name for p in root.iterdir()) == ["a.json", "p.safetensors", "r.npz"]


def test_local_copies_and_published_directories(root, tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "CACHE", str(tmp_path / "cache"))
    staging = tmp_path / "staging"
    (staging / "sub").mkdir(parents=True)
    (staging / "config.json").write_text("{}")
    (staging / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 1000)
    root.mkdir(parents=True, exist_ok=True)
    storage.publish(staging, root / "final")
    assert not staging.exists()
    copy = storage.local_copy(root / "final")
    assert (copy / "sub" / "weights.bin").read_bytes() == bytes(range(256)) * 1000
    assert (copy / "config.json").read_text() == "{}"
    if storage.is_remote(root):
        assert str(copy).startswith(str(tmp_path / "cache"))
        fetched = (copy / "sub" / "weights.bin").stat().st_mtime_ns
        time.sleep(1.1)  # object times have one-second resolution
        (root / "final" / "config.json").write_text("[]")  # the same size, newer: fetched again
        assert (storage.local_copy(root / "final") / "config.json").read_text() == "[]"
        assert (copy / "sub" / "weights.bin").stat().st_mtime_ns == fetched  # unchanged: not fetched again
        (root / "final" / "config.json").unlink()  # gone from the bucket: gone from the copy
        assert not (storage.local_copy(root / "final") / "config.json").exists()
        assert (copy / "sub" / "weights.bin").stat().st_mtime_ns == fetched
    else:
        assert copy == root / "final"


def test_metrics_lines_survive_flushes_and_resume_trimming(root):
    log = JsonLines(root / "m" / "metrics.jsonl", flush_every_s=3600)
    for step in range(1, 6):
        log.write({"step": step})
    log.flush()
    log.write({"step": 6})
    log.keep_only(lambda r: r["step"] <= 4)  # a resume from step 4 drops what it will write again
    log.write({"step": 5})
    log.flush()
    lines = (root / "m" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5]


def test_a_workdir_that_cannot_be_used_is_a_usage_error(tmp_path, bucket):
    from saeft_jax.pipeline import UsageError, prepare_workdir

    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="is a file; pass a directory"):
        prepare_workdir(tmp_path / "file")
    with pytest.raises(UsageError, match="cannot be written .* check its name and your credentials"):
        prepare_workdir("gs://no-such-bucket/run")
    assert str(prepare_workdir(f"{bucket}/fresh/run")) == f"{bucket}/fresh/run"
