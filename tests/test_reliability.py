"""Bad values, damaged artifacts, busy workdirs and storage failures: each ends with one named
paragraph (a `UsageError`, exit code 2 on the command line) and loses nothing."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, smoke_config
from etils import epath

from saeft_jax import storage, workdir_lock
from saeft_jax.config import finish, method
from saeft_jax.errors import ConfigError, UsageError
from saeft_jax.stages import completion


@pytest.mark.parametrize(
    "key, value, says",
    [
        ("finetune.lr", -1e-3, "positive, finite learning rate"),
        ("finetune.lr", float("nan"), "positive, finite learning rate"),
        ("saes.main.lr", 0.0, "positive, finite learning rate"),
        ("saes.main.k", 0, "at least 1"),
        ("saes.main.k", 257, "exceeds config.saes.main.dict_size"),
        ("saes.main.dict_size", 0, "positive number of latents"),
        ("finetune.weight_decay", -0.1, "zero or more"),
        ("finetune.label_smoothing", 1.0, "in [0, 1)"),
        ("finetune.clip_norm", 0.0, "positive gradient-norm bound"),
        ("finetune.batch_size", 0, "positive batch size"),
        ("finetune.steps", -5, "0 (the length comes from finetune.epochs)"),
        ("finetune.warmup_steps", 60, "must be below config.finetune.steps"),
        ("finetune.log_every", 0, "at least 1 step"),
        ("finetune.checkpoint_every", 0, "at least 1 step"),
        ("finetune.keep_checkpoints", 0, "at least 1"),
        ("finetune.accumulate_steps", 0, "at least 1 micro-batch"),
        ("finetune.crop_scale", (0.9, 0.5), "0 < low <= high <= 1"),
        ("evaluate.alphas", (0.0, 0.5, 1.5), "outside [0, 1]"),
        ("evaluate.alphas", (-0.1, 1.0), "outside [0, 1]"),
        ("evaluate.alphas", (0.0, 0.125, 1.0), "more than two decimals"),
        ("features.chunk_steps", 0, "at least 1 batch per chunk"),
        ("saes.main.b_pre_init", "mode", "'zeros', 'mean' or 'median'"),
        ("dtype", "float16", "'float32' or 'bfloat16'"),
        ("num_workers", -1, "0 (reader threads only)"),
        ("seed", 2**64, "at most 2**31 - 1 = 2147483647"),
        ("seed", -1, "an integer from 0 on"),
        ("finetune.batch_size", 2**31, "a positive batch size, at most 2**31 - 1"),
        ("saes.main.dict_size", 2**40, "at most 2**31 - 1"),
        ("model", "openai/clip-vit-base-patch16", "the demo's own small CLIP"),
    ],
)
def test_values_that_cannot_work_are_refused_by_name(key, value, says):
    with pytest.raises(ConfigError, match=r"config\." + key.replace(".", r"\.")) as error:
        finish(smoke_config(**{key: value}))
    assert says in str(error.value)


def test_method_weights_must_be_non_negative():
    config = smoke_config()
    config.finetune.methods.sae_add_remove.reg_lambda = -70.0
    with pytest.raises(ConfigError, match=r"config\.finetune\.methods\.sae_add_remove\.reg_lambda is -70\.0"):
        finish(config)
    config = smoke_config()
    config.finetune.methods.sae_add_remove = method("sae_add_remove", reg_lambda=1.0, lambda_remove=-0.5)
    with pytest.raises(ConfigError, match=r"methods\.sae_add_remove\.lambda_remove is -0\.5"):
        finish(config)
    with pytest.raises(ConfigError, match="both 0, so fine-tuning has no length"):
        finish(smoke_config(**{"finetune.steps": 0, "finetune.epochs": 0}))


def test_a_bad_value_on_the_command_line_exits_2_before_anything_runs(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "saeft_jax.main",
            "--config=configs/demo.py:smoke",
            f"--workdir={tmp_path / 'w'}",
            "--config.finetune.lr=-1e-3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "config.finetune.lr is -0.001" in result.stderr and not (tmp_path / "w").exists()


def integer_keys(config, prefix: str = "") -> list[str]:
    """Every key of `config` that holds an integer (not a switch), dotted, the SAE settings included."""
    keys = []
    for key, value in config.items():
        if hasattr(value, "items"):
            keys += integer_keys(value, f"{prefix}{key}.")
        elif isinstance(value, int) and not isinstance(value, bool):
            keys.append(f"{prefix}{key}")
    return keys


def test_every_integer_key_has_a_range_and_out_of_it_is_refused_by_name():
    keys = integer_keys(smoke_config())
    assert {"seed", "finetune.steps", "saes.main.k", "corruptions.severity", "demo.pretrain_steps"} <= set(keys)
    for key in keys:
        for value in (2**64, 2**31, -1):
            with pytest.raises(ConfigError, match=rf"config\.{re.escape(key)} is {value}\b"):
                finish(smoke_config(**{key: value}))
        finish(smoke_config(**{key: smoke_value(key) if key != "seed" else 2**31 - 1}))  # the top of the range works


def smoke_value(key: str) -> int:
    """The smoke config's own value of `key`."""
    value = smoke_config()
    for part in key.split("."):
        value = value[part]
    return value


def test_an_overflowing_seed_on_the_command_line_exits_2_before_the_workdir_is_made(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "saeft_jax.main",
            "--config=configs/demo.py:smoke",
            f"--workdir={tmp_path / 'w'}",
            "--config.seed=18446744073709551616",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "config.seed is 18446744073709551616" in result.stderr and not (tmp_path / "w").exists()
    assert len(result.stderr.strip().splitlines()) == 1  # one paragraph


class FakeRun:
    """What `preflight` reads of a run: its config, datasets and sources."""

    model_path = "toy-clip"

    def __init__(self, checked, examples: int = 900):
        from types import SimpleNamespace

        from saeft_jax.data.registry import DatasetSpec

        self.config, self.saes = checked.config, checked.saes
        self.model = SimpleNamespace(embed_dim=64, params={"logit_scale": np.float32(2)})
        self.train_spec = DatasetSpec("toy", "prepared", "toy", "train", "toy", ("{}",), fixed_classnames=("a",))
        self.validation = dataclasses.replace(self.train_spec, name="toy_val", split="val")
        self.methods, self.examples = {}, examples

    def eval_specs(self):
        return [self.train_spec]

    def source(self, spec):
        return [None] * self.examples


@pytest.mark.parametrize(
    "changes, devices, says",
    [
        ({"finetune.batch_size": 64}, 3, "config.finetune.batch_size is 64, which does not divide over this run's 3 "),
        ({"evaluate.batch_size": 100}, 8, "config.evaluate.batch_size is 100"),
        (
            {"saes.main.batch_size": 100},
            8,
            "config.saes.main.batch_size is 100, which does not divide over the 8 devices",
        ),
        ({"saes.main.batch_size": 1024}, 1, "config.saes.main.batch_size (1024) exceeds the 900 training embeddings"),
        (
            {"finetune.steps": 0, "finetune.epochs": 1, "finetune.warmup_steps": 20},
            1,
            "must be below the run's 14 fine-tuning steps (1 epochs of 900 examples at batch 64)",
        ),
        (
            {"saes.basis": {"kind": "pca", "dict_size": 65}},
            1,
            "config.saes.basis.dict_size is 65, but a PCA basis has at most as many directions as toy-clip's "
            "embeddings have dimensions (64)",
        ),
    ],
)
def test_preflight_refuses_what_the_devices_or_the_data_cannot_run(monkeypatch, changes, devices, says):
    from saeft_jax import preflight

    monkeypatch.setattr(preflight.jax, "device_count", lambda: devices)
    monkeypatch.setattr(preflight.jax, "local_device_count", lambda: devices)
    with pytest.raises(ConfigError) as error:
        preflight.check(FakeRun(finish(smoke_config(**changes))))
    assert says in str(error.value)


def test_preflight_accepts_the_smoke_config_on_eight_devices(monkeypatch):
    from saeft_jax import preflight

    monkeypatch.setattr(preflight.jax, "device_count", lambda: 8)
    monkeypatch.setattr(preflight.jax, "local_device_count", lambda: 8)
    preflight.check(FakeRun(finish(smoke_config())))
    preflight.check(FakeRun(finish(smoke_config(**{"saes.basis": {"kind": "pca", "dict_size": 64}}))))  # not trained:
    # a PCA basis has no batch to divide or to fit into the 900 embeddings


def test_preflight_refuses_a_model_with_a_nan_naming_the_tensor():
    from saeft_jax import preflight
    from saeft_jax.finite import NonFiniteError

    run = FakeRun(finish(smoke_config()))
    weights = {"vision_model": {"embeddings": {"patch": np.ones((4, 3), np.float32)}}, "logit_scale": np.float32(2)}
    run.model.params = weights
    preflight.check(run)
    weights["vision_model"]["embeddings"]["patch"][1, 2] = np.nan
    with pytest.raises(
        NonFiniteError,
        match=r"toy-clip \(config\.model\): tensor vision_model/embeddings/patch "
        r"holds 1 non-finite value",
    ):
        preflight.check(run)


def write_lock(workdir, **fields):
    record = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "token": "theirs",
        "started": time.time(),
        "heartbeat": time.time(),
        **fields,
    }
    (workdir / workdir_lock.NAME).write_text(json.dumps(record))


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_live_run_keeps_its_workdir(tmp_path):
    write_lock(tmp_path)  # this very process: alive
    with pytest.raises(workdir_lock.WorkdirBusy, match=rf"in use by another run \(process {os.getpid()} on "):
        workdir_lock.WorkdirLock(epath.Path(tmp_path)).acquire()
    write_lock(tmp_path, host="elsewhere", pid=1)  # another host, recent heartbeat
    with pytest.raises(workdir_lock.WorkdirBusy, match="on elsewhere"):
        workdir_lock.WorkdirLock(epath.Path(tmp_path)).acquire()
    assert json.loads((tmp_path / workdir_lock.NAME).read_text())["token"] == "theirs"  # untouched


@pytest.mark.parametrize("stale", ["dead process", "old heartbeat elsewhere", "unreadable"])
def test_a_stale_lock_is_taken_over_and_released(tmp_path, stale):
    if stale == "dead process":
        write_lock(tmp_path, pid=dead_pid())
    elif stale == "old heartbeat elsewhere":
        write_lock(tmp_path, host="elsewhere", heartbeat=time.time() - workdir_lock.STALE_AFTER_S - 1)
    else:
        (tmp_path / workdir_lock.NAME).write_text('{"host": "vm", "pid"')
    lock = workdir_lock.WorkdirLock(epath.Path(tmp_path))
    lock.acquire()
    held = json.loads((tmp_path / workdir_lock.NAME).read_text())
    assert held["token"] == lock.token and held["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / workdir_lock.NAME).exists()


def test_release_leaves_a_lock_that_another_run_took_over(tmp_path):
    lock = workdir_lock.WorkdirLock(epath.Path(tmp_path))
    lock.acquire()
    write_lock(tmp_path, token="newer")  # presumed dead, taken over by another run
    lock.release()
    assert json.loads((tmp_path / workdir_lock.NAME).read_text())["token"] == "newer"


def make_artifact(workdir, parts, files: dict[str, bytes], inputs=()) -> None:
    directory = workdir.joinpath(*parts)
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
    record = {"files": completion.digests(directory, tuple(files)), "inputs": completion.input_hashes(workdir, inputs)}
    (directory / completion.DONE).write_text(json.dumps(record))


def test_marks_see_missing_resized_and_stale_artifacts_and_a_rerun_discards_them(tmp_path):
    workdir = epath.Path(tmp_path)
    make_artifact(workdir, ("sae",), {"sae.safetensors": b"x" * 100, "sae.json": b"{}"})
    make_artifact(
        workdir, ("finetune", "m"), {"final/model.safetensors": b"w" * 50, "head.safetensors": b"h"}, inputs=(("sae",),)
    )
    (tmp_path / "finetune" / "m" / "checkpoints").mkdir()
    assert completion.status(workdir, ("finetune", "m"))[0] is not None
    (tmp_path / "finetune" / "m" / "final" / "model.safetensors").write_bytes(b"w" * 49)
    record, problem = completion.status(workdir, ("finetune", "m"))
    assert record is None and "has 49 bytes, 50 when it was written" in problem.reason
    assert problem.files == ("final/model.safetensors",) and not problem.start_over
    completion.discard(workdir, ("finetune", "m"), problem)  # only the damaged file goes: the rest resumes
    assert not (tmp_path / "finetune" / "m" / "final" / "model.safetensors").exists()
    kept = tmp_path / "finetune" / "m"
    assert (kept / "checkpoints").is_dir() and (kept / "head.safetensors").exists()
    make_artifact(
        workdir, ("finetune", "m"), {"final/model.safetensors": b"w" * 50, "head.safetensors": b"h"}, inputs=(("sae",),)
    )
    make_artifact(workdir, ("sae",), {"sae.safetensors": b"y" * 100, "sae.json": b"{}"})  # rebuilt differently
    record, problem = completion.status(workdir, ("finetune", "m"))
    assert record is None and problem.start_over and problem.reason.endswith("sae that has since changed")
    completion.discard(workdir, ("finetune", "m"), problem)  # made from the old SAE: nothing of it is resumed
    assert [p.name for p in (tmp_path / "finetune" / "m").iterdir()] == [completion.WITHDRAWN]
    (tmp_path / "sae" / "sae.json").unlink()
    assert "sae.json is missing" in completion.status(workdir, ("sae",))[1].reason
    (tmp_path / "sae" / completion.DONE).write_text("{not json")
    assert completion.status(workdir, ("sae",)) == (None, None)  # a damaged mark: the stage runs again


def test_a_file_with_flipped_bytes_is_caught_where_it_is_read_and_its_stage_withdrawn(tmp_path):
    workdir = epath.Path(tmp_path)
    make_artifact(workdir, ("sae",), {"sae.safetensors": b"x" * 100, "sae.json": b"{}"})
    assert (
        completion.verified(workdir, ("sae",), "sae.safetensors", "rerunning it")
        == tmp_path / "sae" / "sae.safetensors"
    )
    (tmp_path / "sae" / "sae.safetensors").write_bytes(b"x" * 50 + b"y" + b"x" * 49)  # same size
    assert completion.status(workdir, ("sae",))[0] is not None  # the cheap check cannot see it
    with pytest.raises(
        completion.ArtifactDamaged,
        match=r"sae\.safetensors does not match the size and SHA-256.*"
        r"so rerunning it rebuilds it",
    ):
        completion.verified(workdir, ("sae",), "sae.safetensors", "rerunning it")
    assert not (tmp_path / "sae" / "sae.safetensors").exists() and not (tmp_path / "sae" / completion.DONE).exists()
    assert (tmp_path / "sae" / completion.WITHDRAWN).exists()  # kept for a look
    assert completion.status(workdir, ("sae",)) == (None, None)  # so the pipeline runs the stage again


def test_an_empty_workdir_is_refused():
    from saeft_jax.pipeline import prepare_workdir

    with pytest.raises(UsageError, match="--workdir is empty"):
        prepare_workdir("")


def test_storage_failures_become_one_paragraph_naming_the_path(tmp_path):
    with pytest.raises(storage.StorageError, match=r"/data/x: No space left on device \(while writing\)\. Free space"):
        with storage.failures_named(str(tmp_path), "writing"):
            raise OSError(errno.ENOSPC, "No space left on device", "/data/x")
    with pytest.raises(storage.StorageError, match=rf"{tmp_path}: RESOURCE_EXHAUSTED: Error writing"):
        with storage.failures_named(str(tmp_path), "saving"):
            raise ValueError('RESOURCE_EXHAUSTED: Error writing "a/0" in OCDBT database')
    with pytest.raises(ZeroDivisionError):  # a bug stays a bug
        with storage.failures_named(str(tmp_path), "dividing"):
            raise ZeroDivisionError("not a storage problem")
    assert issubclass(storage.StorageError, UsageError)


def test_a_checkpoint_that_would_not_fit_is_refused_before_writing(tmp_path, monkeypatch):
    from saeft_jax import checkpoints

    manager = checkpoints.Checkpoints(tmp_path / "checkpoints")
    usage = type("Usage", (), {"free": 1024})
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(storage.StorageError, match=r"has 0\.0 MiB free, and a checkpoint needs about 6\.5 MiB"):
        manager.save(1, {"w": np.zeros(2**20 * 5 // 4, np.float32)})
    manager.close()
    assert manager.latest_step() is None and not any((tmp_path / "checkpoints").iterdir())


def test_a_batch_penalty_refuses_gradient_accumulation():
    from saeft_jax.config import method

    config = smoke_config(**{"finetune.accumulate_steps": 2})
    config.finetune.methods.low_rank = method("nuclear", reg_lambda=1.0)
    with pytest.raises(
        ConfigError,
        match=r"config.finetune.methods.low_rank uses 'nuclear', a penalty of the whole "
        r"batch .*accumulate_steps is 2",
    ):
        finish(config)
    config = smoke_config(**{"finetune.accumulate_steps": 2})
    config.finetune.methods.mean = method("mse", reg_lambda=1.0)  # a mean over rows: accumulation is exact
    finish(config)


def test_a_pca_basis_refuses_a_k_of_its_own():
    config = smoke_config(**{"saes.basis": {"kind": "pca", "dict_size": 8, "k": 3}})
    with pytest.raises(ConfigError, match=r"config.saes.basis.k is 3, but an SAE of kind 'pca' keeps every one"):
        finish(config)


def test_a_workdir_of_an_older_layout_is_refused_in_one_paragraph_naming_a_fresh_workdir(tmp_path):
    from conftest import run_main
    from test_config import assert_one_paragraph

    recorded = json.loads(finish(smoke_config()).config.to_json_best_effort())
    del recorded["saes"]["main"]["kind"], recorded["report"]["browser_features"]  # keys an older version lacked
    recorded["finetune"]["methods"]["none"].pop("recipe")
    recorded["sae_steps"] = 100  # a key this version does not know
    workdir = tmp_path / "old"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps(recorded))
    result = run_main("--config=configs/demo.py:smoke", f"--workdir={workdir}")
    assert_one_paragraph(
        result,
        "config.json was written by another version of saeft-jax",
        "finetune.methods.none.recipe, report.browser_features, sae_steps, saes.main.kind",
        "Rerun with a new --workdir",
    )
    assert sorted(p.name for p in workdir.iterdir()) == ["config.json"]  # refused before anything was made


def test_a_workdir_of_this_layout_with_another_sae_or_method_is_another_config(tmp_path):
    from saeft_jax import storage
    from saeft_jax.pipeline import check_config

    recorded = finish(smoke_config(**{"saes.extra": {"dict_size": 16}}))
    (tmp_path / "config.json").write_text(recorded.config.to_json_best_effort())
    with pytest.raises(UsageError, match=r"another config \(different: saes.extra.auxk, "):
        check_config(finish(smoke_config()).config, storage.path(tmp_path))
    other = finish(
        smoke_config(**{"finetune.methods.none.regularizer": "mse", "finetune.methods.none.reg_lambda": 1.0})
    )
    with pytest.raises(
        UsageError,
        match=r"another config \(different: finetune.methods.none.normalize, finetune.methods.none.reg_lambda, ",
    ):
        check_config(other.config, storage.path(tmp_path))


def test_signals_during_a_checkpoint_save_are_handled_after_it():
    import signal

    from saeft_jax import stopping

    received = []
    interrupt = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    before = signal.signal(signal.SIGTERM, lambda number, frame: received.append(number))
    try:
        with stopping.installed():  # what a save outside the train loop and the command line runs in
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert received == []  # held while Orbax would be saving
        assert received == [signal.SIGTERM]
        with pytest.raises(OSError, match="disk full"):
            with stopping.installed():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                raise OSError("disk full")  # the save's own error is what the run reports
        assert received == [signal.SIGTERM]
        with stopping.installed():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert stopping.requested() == signal.SIGTERM  # a loop that looks acts on it itself
        assert received == [signal.SIGTERM]
        if interrupt is signal.default_int_handler:
            with pytest.raises(KeyboardInterrupt):
                with stopping.installed():
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(0.05)
                    os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C breaks off a save that hangs
                    time.sleep(0.05)
        assert signal.getsignal(signal.SIGINT) is interrupt  # the handler of before the save again
        assert stopping.requested() is None
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_failure_after_a_stop_request_ends_as_that_stop():
    import signal

    from saeft_jax import stopping

    assert stopping.stop_of(RuntimeError("grain worker 0 died")) is None  # without a signal, an error is an error
    with stopping.installed():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        stop = stopping.stop_of(RuntimeError("grain worker 0 died"))  # its workers got the same SIGTERM
    assert stop.exit_code == 3 and str(stop).startswith("SIGTERM, and while stopping: RuntimeError grain worker 0 died")


def test_a_stop_request_wrapped_by_a_library_is_still_recognised():
    from saeft_jax.stopping import Stopped, stop_of

    try:
        try:
            raise Stopped("SIGTERM before stage zeroshot")  # a stop at a known point inside a library's call
        except Exception as inner:
            raise ModuleNotFoundError("Could not import module 'AutoConfig'") from inner
    except ModuleNotFoundError as outer:
        assert isinstance(stop_of(outer), Stopped)
    assert stop_of(ValueError("a bug")) is None


@pytest.mark.parametrize("mark", [b"[1, 2]", b"\xff\xfe not utf-8", b'{"files": '])
def test_a_mark_that_is_no_json_object_counts_as_never_made(tmp_path, mark):
    from etils import epath

    from saeft_jax.stages import completion

    (tmp_path / "features").mkdir()
    (tmp_path / "features" / completion.DONE).write_bytes(mark)
    assert completion.status(epath.Path(tmp_path), ("features",)) == (None, None)  # the stage runs again


def test_versions_json_keeps_every_attempt_and_a_resume_under_other_versions_says_so(tmp_path, monkeypatch, capsys):
    from importlib import metadata

    from saeft_jax import pipeline

    workdir = epath.Path(tmp_path)
    (tmp_path / "versions.json").write_text(json.dumps({"jax": "0.4.1"}))  # the single-attempt form of before
    installed = {"jax": "0.4.1"}

    def version(package):
        if package not in installed:
            raise metadata.PackageNotFoundError(package)
        return installed[package]

    monkeypatch.setattr(metadata, "version", version)
    monkeypatch.setattr(pipeline, "PACKAGES", ("jax", "flax"))
    pipeline.record_versions(workdir)
    assert capsys.readouterr().out.count("note:") == 1  # {"jax"} then {"jax", "flax": None}: they differ
    pipeline.record_versions(workdir)
    assert capsys.readouterr().out == ""  # the same versions: nothing to say
    installed.update(jax="0.4.2", flax="0.8.0")
    pipeline.record_versions(workdir)
    line = capsys.readouterr().out
    assert (
        line.count("\n") == 1
        and "other versions than its previous attempt (flax None -> 0.8.0, jax 0.4.1 -> 0.4.2)" in line
    )
    attempts = json.loads((tmp_path / "versions.json").read_text())["attempts"]
    assert [a["versions"] for a in attempts] == [
        {"jax": "0.4.1"},
        {"jax": "0.4.1", "flax": None},
        {"jax": "0.4.1", "flax": None},
        {"jax": "0.4.2", "flax": "0.8.0"},
    ]
    assert attempts[0]["started"] is None and all(a["started"].endswith("+00:00") for a in attempts[1:])
    (tmp_path / "versions.json").write_text("{not json")
    assert len(pipeline.record_versions(workdir)) == 1 and "was damaged" in capsys.readouterr().out
