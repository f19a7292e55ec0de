"""Faults injected into the smoke pipeline: killed at random points inside every stage and
signalled twice (SIGTERM, Ctrl-C) at chosen ones, each artifact type damaged in turn (also with
a NaN or an infinity), a second run on a busy workdir, a full or read-only disk.

Every rerun either ends with the uninterrupted run's fingerprints or stops with a named error
(a `UsageError`: one paragraph and exit code 2 on the command line), never with a traceback or a
wrong report; and following the named error's advice (rerunning, or what it says) then ends with
the uninterrupted run's fingerprints. Set FAULT_SEED to replay the kill times of a failed run.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, demo_config

pytestmark = pytest.mark.slow  # about eight minutes on 2 CPU cores: run with `-m slow`, as CI does

STAGES = (
    "zeroshot",
    "features",
    "sae/main",
    "finetune/none",
    "finetune/sae_add_remove",
    "evaluate/none",
    "evaluate/sae_add_remove",
    "report",
)
LONGEST_DELAY = {"zeroshot": 1.5, "features": 2.0, "sae": 3.0, "finetune": 5.0, "evaluate": 4.0, "report": 3.0}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """The demo's data and cached CLIP (the same places test_pipeline uses, so made once a session)."""
    base = tmp_path_factory.getbasetemp()
    return {"data_dir": str(base / "data"), "demo.cache_dir": str(base / "cache")}


def arguments(workdir, shared) -> list[str]:
    return [
        "--config=configs/demo.py:smoke",
        f"--workdir={workdir}",
        "--config.show_progress=False",
        *(f"--config.{key}={value}" for key, value in shared.items()),
    ]


def main(workdir, shared, *extra: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-u", "-m", "saeft_jax.main", *arguments(workdir, shared), *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        **kwargs,
    )


def fingerprints(workdir) -> dict[str, str]:
    report = json.loads((workdir / "report" / "report.json").read_text())
    return {name: run["fingerprint"] for name, run in report["runs"].items() if name != "zeroshot"}


def finish(workdir, shared) -> subprocess.CompletedProcess:
    process = main(workdir, shared)
    out, err = process.communicate(timeout=900)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.fixture(scope="module")
def reference(smoke_run):
    """An uninterrupted run of the command line (conftest's, shared with other modules: read only)."""
    return smoke_run


# Where the pipeline is ended, in this order in one workdir, each run continuing the last: (stage
# whose start to wait for, seconds after it (None: at random up to LONGEST_DELAY), signal, exit
# code). SIGTERM and Ctrl-C come twice 0.2 s apart (a preemption notice repeated, an impatient
# user) and must end the run at a known point with 3 (SLURM's cue to requeue) or 130 and no
# traceback, crash or "Exception ignored"; SIGKILL leaves whatever it cuts short.
KILLS = (
    ("zeroshot", None, signal.SIGKILL),
    ("features", None, signal.SIGTERM),
    ("sae/main", None, signal.SIGTERM),
    ("finetune/none", 0.0, signal.SIGINT),  # the first step, while it compiles
    ("finetune/none", None, signal.SIGKILL),
    ("finetune/sae_add_remove", "worker", signal.SIGINT),  # once a grain worker process runs (num_workers=1)
    ("finetune/sae_add_remove", None, signal.SIGTERM),  # inside fine-tuning: a checkpoint, then 3
    ("evaluate/none", 0.0, signal.SIGTERM),  # the end of fine-tuning (its atexit work), as evaluation starts
    ("evaluate/sae_add_remove", 1.0, signal.SIGTERM),  # inside evaluation
    ("evaluate/sae_add_remove", None, signal.SIGKILL),
    ("report", None, signal.SIGKILL),
)
EXIT_CODES = {signal.SIGTERM: 3, signal.SIGINT: 130}
BROKEN = ("Traceback", "Exception ignored", "Fatal Python error", "Segmentation fault")


def kill_inside(stage: str, delay, sent: int, workdir, shared, rng: random.Random, probes: list[str]) -> bool:
    """Starts the pipeline and sends `sent` `delay` seconds (None: a random moment; "worker": once a
    grain worker process of num_workers=1 ignores Ctrl-C, leaving it to the main process) after
    `stage` starts: SIGKILL once; SIGTERM or Ctrl-C twice, to the process group as SLURM or a
    terminal does, checking the exit code and that nothing broken is printed. False when the
    pipeline had nothing left to do there (it ends by itself)."""
    workers = ["--config.num_workers=1"] if delay == "worker" else []
    process = main(
        workdir,
        shared,
        *workers,
        start_new_session=True,  # a process group of its own, signalled whole
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # also under nohup
    )
    for line in process.stdout:
        if line.startswith(f"stage {stage}: ") and "skipped" not in line:
            if delay == "worker":  # a worker of this stage's (an earlier stage's may still be ending)
                started, earlier = time.monotonic(), set(_workers(process.pid))
                while not any(_ignores_ctrl_c(w) for w in _workers(process.pid) if w not in earlier):
                    assert time.monotonic() - started < 120 and process.poll() is None, "no grain worker started"
                    time.sleep(0.05)
                delay = time.monotonic() - started
            else:
                delay = rng.uniform(0.05, LONGEST_DELAY[stage.split("/")[0]]) if delay is None else delay
                time.sleep(delay)
            os.killpg(process.pid, sent)
            if sent != signal.SIGKILL:
                time.sleep(0.2)
                with contextlib.suppress(ProcessLookupError):  # already ended
                    os.killpg(process.pid, sent)
            process.wait(timeout=300)
            twice = "" if sent == signal.SIGKILL else " twice"
            probes.append(f"{signal.Signals(sent).name}{twice} {delay:.2f} s into {stage} (exit {process.returncode})")
            if sent != signal.SIGKILL:
                errors = process.stderr.read()
                assert process.returncode == EXIT_CODES[sent] and "stopped: " in errors, (stage, errors[-3000:])
                assert not any(word in errors for word in BROKEN), (stage, errors[-3000:])
            return True
    process.wait()
    probes.append(f"{stage} was already complete (exit {process.returncode})")
    return False


def _workers(pid: int) -> list[int]:
    """The worker processes multiprocessing spawned for process `pid` (grain's workers; not its
    resource tracker, which ignores Ctrl-C by itself)."""
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == pid and b"spawn_main" in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
    return found


def _ignores_ctrl_c(pid: int) -> bool:
    """Whether process `pid` ignores SIGINT (its SigIgn mask)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigIgn:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    return False


def test_killed_inside_every_stage_then_rerun_ends_with_the_same_fingerprints(reference, shared, tmp_path):
    seed = int(os.environ.get("FAULT_SEED", time.time_ns() % 2**31))
    print(f"FAULT_SEED={seed}")  # shown when the test fails
    rng, probes = random.Random(seed), []
    workdir = tmp_path / "killed"
    for stage, delay, sent in KILLS:
        kill_inside(stage, delay, sent, workdir, shared, rng, probes)
        if (stage, sent) == ("finetune/none", signal.SIGKILL):  # while one run holds the workdir, another is refused
            holder = main(workdir, shared)
            for line in holder.stdout:
                if line.startswith("stage finetune/none: "):
                    break
            second = finish(workdir, shared)
            holder.send_signal(signal.SIGKILL)
            holder.wait()
            assert second.returncode == 2 and "Traceback" not in second.stderr
            assert f"is in use by another run (process {holder.pid} on" in second.stderr
            probes.append("a second run while the first held the workdir: refused, naming the holder")
    result = finish(workdir, shared)  # the lock of the last killed run is stale and taken over
    print("\n".join(probes))
    assert len(probes) == len(KILLS) + 1
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert fingerprints(workdir) == fingerprints(reference)
    for method in ("none", "sae_add_remove"):
        steps = [
            json.loads(line)["step"]
            for line in (workdir / "finetune" / method / "metrics.jsonl").read_text().splitlines()
        ]
        assert steps == sorted(set(steps)), f"{method}: metrics lines written twice"
    assert not (workdir / "run.lock").exists()


def flip(relative: str):
    def damage(workdir):
        path = workdir / relative
        data = bytearray(path.read_bytes())
        for i in range(len(data) // 2, min(len(data), len(data) // 2 + 32)):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))

    return damage


def truncate(relative: str):
    def damage(workdir):
        path = workdir / relative
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return damage


def delete(relative: str):
    def damage(workdir):
        path = workdir / relative
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return damage


def garbage(relative: str):
    def damage(workdir):
        (workdir / relative).write_text("{not json" + " " * 20)

    return damage


def wrong_shape(workdir):
    path = workdir / "features" / "train.npy"
    features = np.load(path)
    np.save(path, features.reshape(features.shape[1], features.shape[0]))  # same bytes, transposed shape


def truncate_newest_checkpoint(workdir):
    steps = workdir / "finetune" / "sae_add_remove" / "checkpoints"
    newest = max((p for p in steps.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    truncate(
        str(max((f for f in newest.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size).relative_to(workdir))
    )(workdir)
    delete("finetune/sae_add_remove/final")(workdir)


def nonfinite(relative: str, tensor: str | None = None, value: float = float("nan")):
    """Writes `value` into one entry of `tensor` of a safetensors file (the whole array of an .npy)
    and records the new bytes' hash in its stage's mark, as if the stage had made it so: only the
    finiteness check stands between the file and its reader."""

    def damage(workdir):
        import safetensors.numpy

        from saeft_jax import storage

        path = workdir / relative
        if tensor is None:
            array = np.load(path)
            array.flat[array.size // 2] = value
            np.save(path, array)
        else:
            tensors = safetensors.numpy.load_file(path)
            tensors[tensor].flat[0] = value
            safetensors.numpy.save_file(tensors, path, metadata={"format": "pt"})
        stage = next(parent for parent in path.parents if (parent / "done.json").exists())
        mark = json.loads((stage / "done.json").read_text())
        mark["files"][str(path.relative_to(stage))] = storage.digest(storage.path(path))
        (stage / "done.json").write_text(json.dumps(mark))

    return damage


# (what, damage, marks removed so that a consumer reads the damaged file, advice to follow when named:
# None, "delete config.json", or "delete as named": remove the directory the message says to delete)
PROBES = [
    ("zeroshot head, bytes flipped", flip("zeroshot/digits.safetensors"), ["report"], None),
    ("zeroshot head, truncated", truncate("zeroshot/digits.safetensors"), [], None),
    ("features, bytes flipped", flip("features/train.npy"), ["sae/main"], None),
    ("features, truncated", truncate("features/train.npy"), [], None),
    ("features, transposed (same size)", wrong_shape, ["sae/main"], None),
    (
        "features chunk, bytes flipped",
        lambda w: [flip("features/chunks/s0000000-n00008-p000.npz")(w), delete("features/train.npy")(w)],
        [],
        None,
    ),
    ("SAE parameters, bytes flipped", flip("sae/main/sae.safetensors"), ["report"], None),
    ("SAE parameters, truncated", truncate("sae/main/sae.safetensors"), [], None),
    ("sae.json, overwritten", garbage("sae/main/sae.json"), ["report"], None),
    (
        "fine-tuned weights, bytes flipped",
        flip("finetune/sae_add_remove/final/model.safetensors"),
        ["evaluate/sae_add_remove"],
        None,
    ),
    ("fine-tuned weights, truncated", truncate("finetune/sae_add_remove/final/model.safetensors"), [], None),
    ("fine-tuned head, bytes flipped", flip("finetune/none/head.safetensors"), ["evaluate/none"], None),
    ("newest checkpoint truncated, final model deleted", truncate_newest_checkpoint, [], None),
    ("evaluation arrays, bytes flipped", flip("evaluate/none/digits_noisy.npz"), ["report"], None),
    (
        "two evaluation arrays, bytes flipped",
        lambda w: [flip("evaluate/none/digits_noisy.npz")(w), flip("evaluate/none/digits_clean.npz")(w)],
        ["report"],
        None,
    ),
    ("evaluation arrays, deleted", delete("evaluate/none/digits_noisy.npz"), [], None),
    ("evaluation summary, deleted", delete("evaluate/sae_add_remove/digits_clean.json"), [], None),
    ("report, truncated", truncate("report/report.md"), [], None),
    ("a completion mark, overwritten", garbage("sae/main/done.json"), [], None),
    ("run.lock, overwritten", garbage("run.lock"), [], None),
    ("config.json, overwritten", garbage("config.json"), [], "delete config.json"),
    (
        "zeroshot head, a NaN (hash re-recorded)",
        nonfinite("zeroshot/digits.safetensors", "W"),
        ["evaluate/none"],
        "delete as named",
    ),
    ("features, a NaN (hash re-recorded)", nonfinite("features/train.npy"), ["sae/main"], "delete as named"),
    (
        "SAE decoder, an infinity (hash re-recorded)",
        nonfinite("sae/main/sae.safetensors", "W_dec", float("inf")),
        ["report"],
        "delete as named",
    ),
    (
        "fine-tuned head, a NaN (hash re-recorded)",
        nonfinite("finetune/none/head.safetensors", "b"),
        ["evaluate/none"],
        "delete as named",
    ),
    (
        "fine-tuned weights, an infinity (hash re-recorded)",
        nonfinite(
            "finetune/sae_add_remove/final/model.safetensors", "vision_model.post_layernorm.weight", -float("inf")
        ),
        ["evaluate/sae_add_remove"],
        "delete as named",
    ),
]


def faults_config(shared, **changes):
    """The smoke config whose data and cached model are those of the `shared` run, with `changes`
    set by dotted key, checked by `finish`."""
    return demo_config(Path(shared["data_dir"]).parent, **changes)


def test_each_damaged_artifact_is_rebuilt_or_named(reference, shared, tmp_path, capsys):
    from saeft_jax.errors import UsageError
    from saeft_jax.pipeline import run_pipeline

    outcomes = []
    for what, damage, consumers, advice in PROBES:
        workdir = tmp_path / what.replace(" ", "_").replace(",", "")
        shutil.copytree(reference, workdir)
        damage(workdir)
        for consumer in consumers:
            (workdir / consumer / "done.json").unlink()
        try:
            run_pipeline(faults_config(shared), workdir)
            outcome = "rebuilt on the rerun"
        except UsageError as error:  # the command line's exit 2 with this paragraph
            outcome = f"named: {str(error)[:140]}..."
            if advice == "delete config.json":
                (workdir / "config.json").unlink()
            if advice == "delete as named":
                assert "non-finite" in str(error), str(error)
                shutil.rmtree(re.search(r"Delete (\S+) and its stage makes it again", str(error)).group(1))
            run_pipeline(faults_config(shared), workdir)  # the advice works
        outcomes.append(f"{what}: {outcome}")
        assert fingerprints(workdir) == fingerprints(reference), what
        report = json.loads((workdir / "report" / "report.json").read_text())
        assert (
            report["runs"]["sae_add_remove"]["metrics"]
            == json.loads((reference / "report" / "report.json").read_text())["runs"]["sae_add_remove"]["metrics"]
        ), what
        shutil.rmtree(workdir)
    with capsys.disabled():
        print("\n" + "\n".join(outcomes))
    assert len(outcomes) == len(PROBES)


DISK = """
set -e
mkdir -p "$1"
mount -t tmpfs -o size=700k tmpfs "$1"
{main} > "$2/full700k.out" 2> "$2/full700k.err" && echo "full700k: 0" || echo "full700k: $?"
mount -o remount,size=3m "$1"
{main} > "$2/full3m.out" 2> "$2/full3m.err" && echo "full3m: 0" || echo "full3m: $?"
mount -o remount,size=400m "$1"
{main} > "$2/freed.out" 2> "$2/freed.err" && echo "freed: 0" || echo "freed: $?"
mkdir -p "$2/report" && cp "$1/report/report.json" "$2/report/report.json" || true
mount -o remount,ro "$1"
{main} > "$2/ro.out" 2> "$2/ro.err" && echo "ro: 0" || echo "ro: $?"
"""


def namespace_prefix() -> list[str] | None:
    """How to mount a small disk here: in a mount namespace as root, else in a user namespace too."""
    candidates = ([["unshare", "--mount"]] if os.geteuid() == 0 else []) + [
        ["unshare", "--user", "--map-root-user", "--mount"]
    ]
    for prefix in candidates:
        probe = subprocess.run([*prefix, "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True)
        if probe.returncode == 0:
            return prefix
    return None


def test_a_full_disk_stops_with_one_paragraph_and_the_run_continues_once_there_is_room(reference, shared, tmp_path):
    """Full at the features (700k), then, the disk made larger, at the first checkpoint (3m); then
    larger still, then read-only. One run from start to end, continued after each stop."""
    prefix = namespace_prefix()
    if prefix is None:
        pytest.skip("this machine lets neither root nor a user namespace mount a small tmpfs")
    command = " ".join([sys.executable, "-u", "-m", "saeft_jax.main", *arguments("$1", shared)])
    script = DISK.format(main=command)
    result = subprocess.run(
        [*prefix, "sh", "-c", script, "sh", str(tmp_path / "disk"), str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    codes = dict(line.split(": ") for line in result.stdout.split("\n") if ": " in line)
    for size in ("700k", "3m"):
        full = (tmp_path / f"full{size}.err").read_text()
        assert codes[f"full{size}"] == "2", (size, full)
        assert "Traceback" not in full and full.strip().startswith("error: "), (size, full)
        assert "No space left on device" in full or "MiB free" in full, (size, full)
    assert codes["freed"] == "0", (tmp_path / "freed.err").read_text()
    assert fingerprints(tmp_path) == fingerprints(reference)  # tmp_path/report/report.json: the copy
    read_only = (tmp_path / "ro.err").read_text()
    assert codes["ro"] == "2" and "Traceback" not in read_only and "Read-only file system" in read_only, read_only


def test_stages_that_lack_what_they_are_made_from_say_so_and_a_refused_run_records_nothing(reference, shared, tmp_path):
    from saeft_jax.errors import ConfigError, UsageError
    from saeft_jax.pipeline import run_pipeline

    for stages, needs in (
        (("report",), "evaluate/none, evaluate/sae_add_remove"),
        (("sae",), "features"),
        (("evaluate",), "finetune/none, zeroshot"),
    ):
        with pytest.raises(UsageError, match=rf"is made from {re.escape(needs)}, which .* not complete"):
            run_pipeline(faults_config(shared, stages=stages), tmp_path / "empty")
    refused = faults_config(shared, **{"saes.main.batch_size": 100_000})
    with pytest.raises(ConfigError, match="exceeds the .* training embeddings"):
        run_pipeline(refused, tmp_path / "refused")
    assert not (tmp_path / "refused" / "config.json").exists()  # so the corrected command is not refused:
    only_zeroshot = faults_config(shared, stages=("zeroshot",))
    assert run_pipeline(only_zeroshot, tmp_path / "refused") is None  # it runs there (one stage: no report yet)
    assert (tmp_path / "refused" / "zeroshot" / "done.json").exists()
    shutil.copytree(reference, tmp_path / "finished")  # the whole corrected run, as the reference made it
    assert run_pipeline(only_zeroshot, tmp_path / "finished") is not None  # only zeroshot, complete: the report stands
