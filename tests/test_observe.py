"""Progress lines for logs, and TensorBoard curves equal to metrics.jsonl (read back with
TensorBoard's own reader)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest

from saeft_jax import storage
from saeft_jax.curves import read_scalars
from saeft_jax.errors import UsageError
from saeft_jax.observe import JsonLines, ProgressLines, progress


def assert_curves_match(directory: Path, metrics: Path, step_key: str = "step") -> None:
    """The event files in `directory` hold exactly the numbers of `metrics` (a metrics.jsonl)."""
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in map(json.loads, metrics.read_text().splitlines()):
        for name, value in record.items():
            if (
                step_key in record
                and name != step_key
                and isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
            ):
                expected.setdefault(name, []).append((record[step_key], float(value)))
    assert expected, f"{metrics} holds no curves"
    got = read_scalars(directory)
    assert set(got) == set(expected)
    for name in expected:  # event files store float32
        assert [s for s, _ in got[name]] == [s for s, _ in expected[name]], name
        assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-30) for (_, a), (_, b) in zip(got[name], expected[name]))


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_in_a_log_is_periodic_plain_lines_with_rate_and_eta():
    out, clock = io.StringIO(), Clock()
    bar = ProgressLines(500, "finetune none", initial=100, stream=out, every_s=30, clock=clock)
    for step in range(1, 401):
        clock.now += 0.5  # 2 steps/s
        bar.update(1)
        if step == 1:
            bar.set_postfix(loss="0.4100")
    bar.close()
    bar.close()  # closing twice prints once
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 7  # every 30 s of 200 s, and the end
    assert lines[0] == "finetune none: 160/500 step (32%), 2.00 step/s, ETA 2m50s, loss=0.4100"
    assert lines[-1] == "finetune none: 500/500 step (100%), 2.00 step/s, took 3m20s, loss=0.4100"


def test_a_terminal_gets_a_bar_and_a_log_gets_lines():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(progress(3, "x", stream=io.StringIO()), ProgressLines)
    assert not isinstance(progress(3, "x", stream=Terminal()), ProgressLines)
    silent = io.StringIO()
    bar = progress(3, "x", enabled=False, stream=silent)
    bar.update(3)
    bar.close()
    assert silent.getvalue() == ""


def test_curves_follow_metrics_through_a_resume_locally_and_in_a_bucket(tmp_path, bucket, monkeypatch):
    monkeypatch.setattr(storage, "CACHE", str(tmp_path / "cache"))
    for root in (tmp_path, storage.path(bucket) / "curves"):
        log = JsonLines(root / "m" / "metrics.jsonl", flush_every_s=3600, curves_step="step")
        log.keep_only(lambda r: r["step"] <= 0)
        for step in range(1, 6):
            log.write({"step": step, "loss": 1.0 / step, "lr": 1e-5 * step, "diverged": False})
        log.close()
        log = JsonLines(root / "m" / "metrics.jsonl", flush_every_s=3600, curves_step="step")
        log.keep_only(lambda r: r["step"] <= 3)  # resumed from step 3: steps 4 and 5 come again
        for step in range(4, 8):
            log.write({"step": step, "loss": -1.0 / step, "lr": 2e-5 * step})
        log.close()
        local = storage.local_copy(root / "m")
        assert [s for s, _ in read_scalars(local)["loss"]] == [1, 2, 3, 4, 5, 6, 7]
        assert read_scalars(local)["loss"][3] == (4, -0.25)
        assert_curves_match(local, local / "metrics.jsonl")


def test_curves_go_to_wandb_offline_too(tmp_path, monkeypatch):
    import wandb

    from saeft_jax.curves import wandb_logging

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged = []
    original = wandb.Run.log

    def log(self, data, *args, **kwargs):
        logged.append(dict(data))
        return original(self, data, *args, **kwargs)

    monkeypatch.setattr(wandb.Run, "log", log)
    workdir = storage.path(tmp_path / "run")
    workdir.mkdir()
    for kept in (0, 1):  # a rerun continues the same W&B run; resumed after step 1, it sends step 2 again
        with wandb_logging("saeft-test", workdir, {"seed": 0}):
            log_file = JsonLines(workdir / "finetune" / "none" / "metrics.jsonl", curves_step="step")
            log_file.keep_only(lambda r, kept=kept: r["step"] <= kept)  # replays step 1 into the event file only
            for step in range(kept + 1, 3):
                log_file.write({"step": step, "loss": 0.5 / step, "lr": 1e-5})
            log_file.close()
    first, second = ({"finetune/none/step": s, "finetune/none/loss": 0.5 / s, "finetune/none/lr": 1e-5} for s in (1, 2))
    assert logged == [first, second, second]
    assert_curves_match(workdir / "finetune" / "none", workdir / "finetune" / "none" / "metrics.jsonl")
    run_id = json.loads((workdir / "wandb.json").read_text())["id"]
    runs = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(run_id) for r in runs)
    data = next(runs[0].glob("run-*.wandb")).read_bytes()
    assert b"finetune/none/loss" in data


def test_a_wandb_project_without_wandb_is_a_config_error(monkeypatch):
    from conftest import smoke_config

    from saeft_jax import config as config_module
    from saeft_jax.errors import ConfigError

    monkeypatch.setattr(config_module, "_wandb_installed", lambda: False)
    c = smoke_config(wandb_project="mine")
    with pytest.raises(ConfigError, match=r"config.wandb_project is 'mine'.*pip install wandb"):
        config_module.finish(c)


def test_a_failing_wandb_warns_once_and_training_goes_on(tmp_path, monkeypatch, capsys):
    import wandb

    from saeft_jax.curves import wandb_logging

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")

    def broken(self, data, *args, **kwargs):
        raise ConnectionResetError("the W&B service went away")

    monkeypatch.setattr(wandb.Run, "log", broken)
    workdir = storage.path(tmp_path)
    with wandb_logging("saeft-test", workdir, {}):
        log_file = JsonLines(workdir / "sae" / "main" / "metrics.jsonl", curves_step="epoch")
        for epoch in range(3):
            log_file.write({"epoch": epoch, "fvu": 0.1})
        log_file.close()
    assert capsys.readouterr().err.count("W&B stopped taking curves (ConnectionResetError") == 1
    assert [s for s, _ in read_scalars(tmp_path / "sae" / "main")["fvu"]] == [0, 1, 2]  # TensorBoard has them all

    def stopped(self, data, *args, **kwargs):
        raise RuntimeError("Preempted: SIGTERM")  # a stop request raised while W&B logs is no W&B failure

    monkeypatch.setattr(wandb.Run, "log", stopped)
    with pytest.raises(RuntimeError, match="Preempted"):
        with wandb_logging("saeft-test", workdir, {}):
            JsonLines(workdir / "sae" / "main" / "metrics.jsonl", curves_step="epoch").write({"epoch": 0, "fvu": 0.1})
    (workdir / "wandb.json").write_text("{")
    with pytest.raises(UsageError, match="wandb.json is damaged"):
        with wandb_logging("saeft-test", workdir, {}):
            pass
