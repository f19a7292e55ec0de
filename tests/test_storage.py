"""Workdir files on a local disk and in a bucket (an in-memory GCS emulator): the same calls,
atomic writes, local copies, and metrics that an object store cannot append to; and a bucket
that accepts connections but never answers, for the workdir and for the data, timed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import ROOT

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


def _silent_endpoint(request) -> tuple[str, list[float]]:
    """An HTTP endpoint on 127.0.0.1 that accepts every connection and never answers (closed when
    the test ends); the times of the connections it accepted."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted, held = [], []

    def accept() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:  # closed at the end of the test
                return
            held.append(connection)
            accepted.append(time.monotonic())

    def close() -> None:
        server.close()
        for connection in held:
            connection.close()

    threading.Thread(target=accept, daemon=True).start()
    request.addfinalizer(close)
    return f"http://127.0.0.1:{server.getsockname()[1]}", accepted


@pytest.fixture
def silent_bucket(request, monkeypatch):
    """A GCS endpoint that never answers, reached the way the emulator is (conftest's `bucket`) by
    every client; yields the times of the connections it accepted."""
    endpoint, accepted = _silent_endpoint(request)
    for name, value in {
        "STORAGE_EMULATOR_HOST": endpoint,
        "TENSORSTORE_GCS_HTTP_URL": endpoint,
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": endpoint,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        "NO_GCE_CHECK": "True",
    }.items():
        monkeypatch.setenv(name, value)
    return accepted


@pytest.fixture
def half_silent_bucket(request, bucket, monkeypatch):
    """The emulator's bucket as gcsfs sees it (the probe and the workdir's files answer), while
    TensorStore (Orbax) and google-cloud-cpp (ArrayRecord) reach an endpoint that never answers."""
    endpoint, accepted = _silent_endpoint(request)
    monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", endpoint)
    monkeypatch.setenv("CLOUD_STORAGE_EMULATOR_ENDPOINT", endpoint)
    return accepted


def test_a_bucket_that_never_answers_is_named_once_the_wait_is_over(silent_bucket, monkeypatch, tmp_path, capsys):
    import fsspec
    from conftest import smoke_config

    from saeft_jax import compare
    from saeft_jax.config import finish
    from saeft_jax.pipeline import prepare_workdir, run_pipeline

    fsspec.filesystem("gs")  # gcsfs's search for credentials (seconds), outside the timed waits
    monkeypatch.setattr(storage, "PROBE_TIMEOUT_S", 3.0)
    started = time.monotonic()
    with pytest.raises(storage.StorageError, match=r"^--workdir gs://bucket/run: its bucket did not answer within 3 s"):
        prepare_workdir("gs://bucket/run")
    assert silent_bucket and time.monotonic() - started < 6  # it did wait on the endpoint, then gave up
    config = finish(smoke_config(data_dir="gs://bucket/data"))
    started = time.monotonic()
    with pytest.raises(storage.StorageError, match=r"^config.data_dir gs://bucket/data: its bucket did not answer"):
        run_pipeline(config, tmp_path / "run")
    assert time.monotonic() - started < 6 and not (tmp_path / "run").exists()  # refused before anything was written
    started = time.monotonic()
    assert compare.main(["gs://bucket/a", str(tmp_path / "b"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: run gs://bucket/a: its bucket did not answer within 3 s")
    assert time.monotonic() - started < 6 and not (tmp_path / "out").exists()


def test_gcsfs_waits_a_bounded_time_per_request_and_logs_no_traceback(caplog):
    import logging

    import fsspec

    timeout = fsspec.filesystem("gs").requests_timeout  # what every gs:// path of the run goes through
    assert timeout.sock_connect == timeout.sock_read == storage.REQUEST_TIMEOUT_S and timeout.total is None
    with caplog.at_level(logging.WARNING, logger="gcsfs"):
        try:
            raise ConnectionError("no answer")
        except ConnectionError:
            logging.getLogger("gcsfs").exception("_call out of retries on exception: no answer")
        logging.getLogger("gcsfs").warning("a warning without a traceback")
    assert [record.getMessage() for record in caplog.records] == ["a warning without a traceback"]


def _command_line(workdir: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "saeft_jax.main",
            "--config=configs/demo.py:smoke",
            f"--workdir={workdir}",
            "--config.show_progress=False",
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


def _first_connection(accepted: list[float], process: subprocess.Popen) -> float:
    while not accepted:
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    return accepted[0]


@pytest.mark.slow  # about a minute: the command line waits out the probe's limit
@pytest.mark.parametrize("where", ["workdir", "data"])
def test_the_command_line_names_a_silent_bucket_within_about_a_minute(silent_bucket, tmp_path, where):
    if where == "workdir":
        process, url, key = _command_line("gs://bucket/run"), "gs://bucket/run", "--workdir"
    else:
        process, url, key = (
            _command_line(str(tmp_path / "run"), "--config.data_dir=gs://bucket/data"),
            "gs://bucket/data",
            "config.data_dir",
        )
    waiting_since = _first_connection(silent_bucket, process)
    _, err = process.communicate(timeout=300)
    waited = time.monotonic() - waiting_since
    assert process.returncode == 2 and waited < storage.PROBE_TIMEOUT_S + 15, (process.returncode, waited, err)
    assert f"error: {key} {url}: its bucket did not answer within" in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # about twenty seconds: the command line's start-up
def test_a_sigterm_while_waiting_on_a_silent_bucket_ends_the_run_with_3(silent_bucket, tmp_path):
    process = _command_line(str(tmp_path / "run"), "--config.data_dir=gs://bucket/data")
    _first_connection(silent_bucket, process)
    time.sleep(1.0)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 3 and time.monotonic() - sent < 30, (process.returncode, err)
    assert "stopped: SIGTERM while waiting for gs://bucket/data to answer" in err and "Traceback" not in err, err


# A client without a bound of its own, on the half-silent bucket, in a process of its own (the
# deadline ends the process): what it reads or writes, then the URL its paragraph must name.
HANGING_CALLS = {
    "orbax checkpoint": (
        "from saeft_jax.checkpoints import Checkpoints\n"
        "checkpoints = Checkpoints('gs://bucket/hung/checkpoints')\n"
        "print('ready', flush=True)\n"
        "checkpoints.save(1, {'w': np.ones(1000, np.float32)})\n"
        "checkpoints.close()",
        "gs://bucket/hung/checkpoints",
    ),
    "arrayrecord reads": (
        "from saeft_jax.data import sources\n"
        "from saeft_jax.data.folders import folder_spec\n"
        "print('ready', flush=True)\n"
        "sources.open_source(folder_spec('hung/test', 'gs://bucket/hung-data'), 'gs://bucket/hung-data')[0]",
        "gs://bucket/hung-data",
    ),
}


@pytest.mark.parametrize("client", HANGING_CALLS)
def test_a_bucket_that_answers_the_probe_and_then_hangs_a_client_is_named_by_its_deadline(
    half_silent_bucket, tmp_path, client
):
    from saeft_jax.data import prepare

    for label, name in enumerate(["cat", "dog"]):
        folder = tmp_path / "src" / name
        folder.mkdir(parents=True)
        (folder / "0.png").write_bytes(_png(label))
    prepare.prepare("folder", tmp_path / "src", "gs://bucket/hung-data", name="hung", split="test", show_progress=False)
    body, url = HANGING_CALLS[client]
    script = "import numpy as np\nfrom saeft_jax import storage\nstorage.DEADLINE_S = 3.0\n" + body
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": root},
    )
    assert process.stdout.readline() == "ready\n", process.stderr.read()
    started = time.monotonic()
    _, err = process.communicate(timeout=120)
    waited = time.monotonic() - started
    assert process.returncode == 2 and 3.0 < waited < 15, (process.returncode, waited, err)
    assert half_silent_bucket  # the client did reach the silent endpoint
    assert f"error: {url}: its bucket did not answer within 3 s (while " in err and "Traceback" not in err, err


def _png(seed: int) -> bytes:
    """A small RGB PNG file's bytes."""
    import io

    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_sigterm_to_compare_while_it_waits_on_a_silent_bucket_ends_it_with_3(silent_bucket, tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    process = subprocess.Popen(
        [sys.executable, "-m", "saeft_jax.compare", "gs://bucket/a", str(tmp_path / "b"), "--out", str(tmp_path / "o")],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    _first_connection(silent_bucket, process)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)  # absorbed
    _, err = process.communicate(timeout=60)
    assert process.returncode == 3 and time.monotonic() - sent < 5, (process.returncode, err)
    assert "stopped: SIGTERM while waiting for gs://bucket/a to answer" in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()
