"""The launch scripts as clusters run them: SLURM's geometry and its requeue after a preemption
(with stand-in srun and scontrol), the pinned installs, and the package's true Python floor."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SBATCH = os.path.join(ROOT, "launch", "slurm.sbatch")


def directives() -> dict[str, str]:
    lines = open(SBATCH).read().splitlines()
    return dict(re.match(r"#SBATCH --([\w-]+)(?:=(\S+))?", line).groups("") for line in lines
                if line.startswith("#SBATCH"))


def test_slurm_runs_one_task_per_gpu_and_signals_before_the_time_limit():
    settings = directives()
    assert settings["ntasks-per-node"] == settings["gpus-per-node"]  # one process per GPU (JAX's SLURM rule)
    assert "gpus-per-task" not in settings and "gpu-bind" not in settings  # every task sees its node's GPUs
    assert re.fullmatch(r"TERM@\d+", settings["signal"]) and "requeue" in settings


@pytest.fixture
def cluster(tmp_path):
    """A submit directory with a venv to activate, and srun/scontrol stand-ins that record their calls."""
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "activate").write_text("")
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool, body in (("srun", 'echo "$@" >> "$CALLS/srun"; exit "${SRUN_EXIT:-0}"'),
                       ("scontrol", 'echo "$@" >> "$CALLS/scontrol"')):
        (tools / tool).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (tools / tool).chmod(0o755)
    return tmp_path


@pytest.mark.parametrize("srun_exit, requeued", [(3, True), (0, False), (2, False)])
def test_slurm_requeues_after_the_preemption_exit_only(cluster, srun_exit, requeued):
    env = {**os.environ, "PATH": f"{cluster / 'bin'}:{os.environ['PATH']}", "CALLS": str(cluster),
           "SRUN_EXIT": str(srun_exit), "SLURM_JOB_ID": "4242", "SLURM_SUBMIT_DIR": str(cluster),
           "CONFIG": "configs/vitl14.py", "WORKDIR": "/shared/run"}
    result = subprocess.run(["bash", SBATCH], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == srun_exit, result.stderr
    srun = (cluster / "srun").read_text()
    assert srun.startswith("python -m saeft_jax.main --config=configs/vitl14.py --workdir=/shared/run")
    assert (cluster / "scontrol").exists() == requeued
    if requeued:
        assert (cluster / "scontrol").read_text().strip() == "requeue 4242"


def test_the_python_floor_is_the_dependencies_floor_and_installs_are_pinned():
    project = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["project"]
    assert project["requires-python"].startswith(">=3.11")
    pins = {}
    for line in open(os.path.join(ROOT, "constraints.txt")):
        if line.strip() and not line.startswith("#"):
            name, version = line.strip().split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    declared = project["dependencies"] + project["optional-dependencies"]["test"]
    for requirement in declared:
        name = re.sub(r"[-_.]+", "-", re.split(r"[<>=\[ ;]", requirement)[0]).lower()
        assert name in pins, f"{name} is not pinned in constraints.txt"
    requirements = [line.strip() for line in open(os.path.join(ROOT, "requirements.txt"))
                    if line.strip() and not line.startswith("#")]
    assert requirements == project["dependencies"]  # the two lists say the same
    for script in ("tpu_pod.sh", "gpu_node.sh", "slurm.sbatch"):
        assert "-c constraints.txt" in open(os.path.join(ROOT, "launch", script)).read(), script
    assert "-c constraints.txt" in open(os.path.join(ROOT, ".ci", "run")).read()
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert readme.count("-c constraints.txt") >= 2  # the two commands at the top
