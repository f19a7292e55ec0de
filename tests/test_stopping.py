"""The signal policy (saeft_jax.stopping) in processes of its own: a stop acted on at a known
point, repeated signals absorbed, a second Ctrl-C at once, a blocked run ended by the watcher
(naming what the run was doing), a late signal during the interpreter's exit, the zero-shot head's
stop point, and `prepare` ended by Ctrl-C. The command line on the smoke config, signalled twice at
several points (the first step, inside fine-tuning with a grain worker, the end of fine-tuning,
inside evaluation), is test_faults' kill test: one run, continued after each signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import ROOT, subprocess_env

BROKEN = ("Traceback", "Exception ignored", "Fatal Python error", "Segmentation fault")


def start(body: str, setup: str = "") -> subprocess.Popen:
    """A Python process that installs the policy, runs `setup`, prints "ready" and runs `body`;
    returned once it is ready (a signal sent then finds `setup` done)."""
    script = (
        textwrap.dedent("""
        import atexit, ctypes, sys, time
        from saeft_jax import stopping
        stopping.install("the same command continues the run")
    """)
        + textwrap.dedent(setup)
        + '\nprint("ready", flush=True)\n'
        + textwrap.dedent(body)
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # also under nohup
    assert process.stdout.readline() == "ready\n", process.stderr.read()
    return process


def signal_twice(process: subprocess.Popen, first: int, second: int) -> tuple[int, str, float]:
    """Sends `first`, then `second` 0.2 s later; the exit code, stderr and seconds from the first."""
    sent = time.monotonic()
    process.send_signal(first)
    time.sleep(0.2)
    if process.poll() is None:
        process.send_signal(second)
    _, err = process.communicate(timeout=60)
    return process.returncode, err, time.monotonic() - sent


AT_A_KNOWN_POINT = """
    try:
        while True:
            stopping.check("in the loop")
            time.sleep(0.3)
    except stopping.Stopped as stop:
        print(f"stopped: {stop}", file=sys.stderr)
        sys.exit(stop.exit_code)
"""


@pytest.mark.parametrize(
    "first, second, code",
    [(signal.SIGTERM, signal.SIGTERM, 3), (signal.SIGTERM, signal.SIGINT, 3), (signal.SIGINT, signal.SIGTERM, 130)],
)
def test_a_stop_is_acted_on_at_the_next_check_and_a_second_signal_is_absorbed(first, second, code):
    returncode, err, _ = signal_twice(start(AT_A_KNOWN_POINT), first, second)
    name = "Ctrl-C" if first == signal.SIGINT else "SIGTERM"
    assert returncode == code and f"stopped: {name} in the loop; every finished artifact is kept" in err, err
    assert not any(word in err for word in BROKEN), err


def test_a_second_ctrl_c_ends_the_run_at_once_with_130():
    returncode, err, seconds = signal_twice(start("while True: time.sleep(0.05)"), signal.SIGINT, signal.SIGINT)
    assert returncode == 130 and seconds < 5, (returncode, seconds, err)
    assert "stopped: a second Ctrl-C; finished work is kept" in err and "the same command continues" in err, err
    assert not any(word in err for word in BROKEN), err


@pytest.mark.parametrize(
    "passed, blocked, known",
    [
        (
            "",
            "while True: time.sleep(0.05)",
            "the run's start-up, which had not reached a point to stop at 1 s later (the last point passed: none)",
        ),  # Python code that never reaches a check
        (
            'stopping.doing("stage report")\nstopping.check("in stage report before the analyses")',
            'ctypes.CDLL(None).system(b"exec sleep 30 >/dev/null 2>&1")',  # native code that waits on (a stuck reader)
            "stage report, which had not reached a point to stop at 1 s later (the last point passed: 'in stage "
            "report before the analyses')",
        ),
    ],
)
def test_a_run_that_reaches_no_known_point_is_ended_by_the_watcher_with_3_naming_what_it_was_doing(
    passed, blocked, known
):
    process = start(blocked, setup=f"stopping.GRACE_S = 1.0\n{passed}")  # the signal comes after `passed`
    returncode, err, seconds = signal_twice(process, signal.SIGTERM, signal.SIGTERM)
    assert returncode == 3 and 1.0 < seconds < 10, (returncode, seconds, err)
    assert f"stopped: SIGTERM during {known}" in err, err
    assert not any(word in err for word in BROKEN), err


def test_signals_during_the_interpreters_exit_keep_its_exit_code():
    process = start('atexit.register(time.sleep, 1.0)\nprint("exiting", flush=True)')
    assert process.stdout.readline() == "exiting\n"
    time.sleep(0.3)  # inside the atexit function, then past it while Python tears down
    returncode, err, _ = signal_twice(process, signal.SIGTERM, signal.SIGTERM)
    assert returncode == 0 and not any(word in err for word in BROKEN), (returncode, err)


def test_ctrl_c_to_prepare_ends_it_with_130_and_publishes_nothing(tmp_path):
    from PIL import Image

    for index in range(3000):  # long enough to be signalled while it encodes
        folder = tmp_path / "src" / f"c{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (index % 256, 0, 0)).save(folder / f"{index}.png")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "saeft_jax.data.prepare",
            "folder",
            f"--source={tmp_path / 'src'}",
            f"--data_dir={tmp_path / 'data'}",
            "--name=x",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": ROOT},
        start_new_session=True,  # its own process group, signalled as a terminal's Ctrl-C is
    )
    deadline = time.monotonic() + 60
    while not list((tmp_path / "data").rglob("*.partial")):  # the first shard is being written
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "stopped: Ctrl-C while preparing " in err, (process.returncode, err)
    assert "the same command prepares it again" in err and not any(word in err for word in BROKEN), err
    assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file()]  # no shard, no info.json, no staging


# Last of the quick tests: the others fork, and JAX's threads, once started, warn of forking.
def test_the_zero_shot_head_stops_between_batches(tiny_clip_dir):
    from saeft_jax import models, stopping
    from saeft_jax.zeroshot import build_zeroshot_head

    model = models.load(tiny_clip_dir[0])
    with (
        stopping.installed(),
        pytest.raises(stopping.Stopped, match="SIGTERM while building a zero-shot head at prompt 0 of 3"),
    ):
        signal.raise_signal(signal.SIGTERM)
        build_zeroshot_head(model, [["a cat"], ["a dog"], ["a bird"]], batch_size=1, show_progress=False)
