"""The launch scripts as clusters run them: SLURM's geometry and its requeue after a preemption
(with stand-in srun and scontrol), the exact command each launcher hands the run (stand-in
gcloud, sbatch, python; hostile values that must stay text), the pinned installs, and the
package's true Python floor."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib

import pytest
from conftest import ROOT

SBATCH = os.path.join(ROOT, "launch", "slurm.sbatch")
# Recorded by a stand-in: its arguments, each ended by a NUL byte, one call after another.
RECORD = 'printf \'%s\\0\' "$@" >> "$CALLS/$(basename "$0")"; printf \'\\n\' >> "$CALLS/$(basename "$0")"'
# Values a user might give that a shell would take for code or split: none may run or break.
HOSTILE = "it's a;touch PWNED $(touch PWNED) `touch PWNED`"


def tool(directory, name: str, body: str) -> None:
    """An executable bash script `name` in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
    (directory / name).chmod(0o755)


def calls(directory, name: str) -> list[list[str]]:
    """The argument vectors the stand-in `name` recorded, in order."""
    path = directory / name
    if not path.exists():
        return []
    return [call.split("\0") for call in path.read_text().split("\0\n")[:-1]]


def directives() -> dict[str, str]:
    lines = open(SBATCH).read().splitlines()
    return dict(
        re.match(r"#SBATCH --([\w-]+)(?:=(\S+))?", line).groups("") for line in lines if line.startswith("#SBATCH")
    )


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
    tool(tmp_path / "bin", "srun", f'{RECORD}; exit "${{SRUN_EXIT:-0}}"')
    tool(tmp_path / "bin", "scontrol", RECORD)
    # sbatch as SLURM runs a batch script: --export's NAME=VALUE pairs set, the script's own arguments passed
    tool(
        tmp_path / "bin",
        "sbatch",
        RECORD
        + """
for argument; do
  case "$argument" in
    --export=*) IFS=, read -ra pairs <<< "${argument#--export=}"
                for pair in "${pairs[@]}"; do [ "$pair" = ALL ] || export "$pair"; done; shift ;;
    -*) shift ;;
    *) break ;;
  esac
done
exec bash "$@"
""",
    )
    return tmp_path


@pytest.mark.parametrize("srun_exit, requeued", [(3, True), (0, False), (2, False)])
def test_slurm_requeues_after_the_preemption_exit_only(cluster, srun_exit, requeued):
    env = {
        **os.environ,
        "PATH": f"{cluster / 'bin'}:{os.environ['PATH']}",
        "CALLS": str(cluster),
        "SRUN_EXIT": str(srun_exit),
        "SLURM_JOB_ID": "4242",
        "SLURM_SUBMIT_DIR": str(cluster),
        "CONFIG": "configs/vitl14.py",
        "WORKDIR": "/shared/run",
    }
    result = subprocess.run(["bash", SBATCH], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == srun_exit, result.stderr
    assert calls(cluster, "srun") == [
        [
            "python",
            "-m",
            "saeft_jax.main",
            "--config=configs/vitl14.py",
            "--workdir=/shared/run",
            "--config.num_workers=4",
        ]
    ]
    assert calls(cluster, "scontrol") == ([["requeue", "4242"]] if requeued else [])


def test_sbatch_hands_the_run_each_value_as_one_argument_and_forwards_extra_arguments(cluster):
    workdir = f"/shared/{HOSTILE}"
    env = {
        **os.environ,
        "PATH": f"{cluster / 'bin'}:{os.environ['PATH']}",
        "CALLS": str(cluster),
        "SLURM_JOB_ID": "7",
        "SLURM_SUBMIT_DIR": str(cluster),
    }
    submit = [
        "sbatch",
        f"--export=ALL,CONFIG=configs/transfer_vitb16.py:dataset=cifar10,WORKDIR={workdir}",
        SBATCH,
        "--config.finetune.lr=3e-5",
        f"--config.name={HOSTILE}",
    ]
    result = subprocess.run(submit, env=env, cwd=cluster, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert calls(cluster, "srun") == [
        [
            "python",
            "-m",
            "saeft_jax.main",
            "--config=configs/transfer_vitb16.py:dataset=cifar10",
            f"--workdir={workdir}",
            "--config.num_workers=4",
            "--config.finetune.lr=3e-5",
            f"--config.name={HOSTILE}",
        ]
    ]
    assert not list(cluster.rglob("PWNED"))


@pytest.fixture
def tpu_worker(tmp_path):
    """A stand-in gcloud that records its calls (the slice exists already), and a TPU VM worker's
    home to run the recorded remote commands in: uv, git and python stand-ins that record theirs."""
    tool(tmp_path / "bin", "gcloud", RECORD)
    worker = tmp_path / "worker"
    tool(worker / "bin", "git", RECORD + '\n[ "$1" != clone ] || mkdir -p "$3"')
    tool(worker / "bin", "python", RECORD + '\nprintf %s "$TFDS_DATA_DIR" > "$CALLS/TFDS_DATA_DIR"')
    tool(worker / ".local" / "bin", "uv", RECORD)
    (worker / "venv" / "bin").mkdir(parents=True)
    (worker / "venv" / "bin" / "activate").write_text("")
    return tmp_path


def run_tpu_pod(tpu_worker, settings: dict[str, str], extra: list[str]) -> list[list[str]]:
    """Runs launch/tpu_pod.sh with `settings` and `extra` arguments, then each command it sent to the
    workers in the worker's home as its shell would; returns the gcloud calls."""
    env = {**os.environ, "PATH": f"{tpu_worker / 'bin'}:{os.environ['PATH']}", "CALLS": str(tpu_worker), **settings}
    result = subprocess.run(
        ["bash", os.path.join(ROOT, "launch", "tpu_pod.sh"), *extra],
        env=env,
        cwd=tpu_worker,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    gcloud = calls(tpu_worker, "gcloud")
    worker = tpu_worker / "worker"
    remote_env = {
        **os.environ,
        "HOME": str(worker),
        "PATH": f"{worker / 'bin'}:{os.environ['PATH']}",
        "CALLS": str(tpu_worker),
    }
    for call in gcloud[1:]:
        assert call[:-1] == [
            "compute",
            "tpus",
            "tpu-vm",
            "ssh",
            settings.get("NAME", "saeft"),
            "--zone",
            "us-central2-b",
            "--worker=all",
            "--command",
        ]
        remote = subprocess.run(
            ["bash", "-c", call[-1]], env=remote_env, cwd=worker, capture_output=True, text=True, timeout=60
        )
        assert remote.returncode == 0, remote.stderr
    return gcloud


@pytest.mark.parametrize(
    "settings, extra, workdir",
    [
        ({"CONFIG": "configs/transfer_vitb16.py:dataset=cifar10"}, [], "gs://b/saeft/transfer_vitb16_dataset-cifar10"),
        ({"CONFIG": "configs/vitb16.py"}, ["--config.finetune.lr=3e-5"], "gs://b/saeft/vitb16"),
        (
            {
                "CONFIG": f"configs/{HOSTILE}.py",
                "RUN": HOSTILE,
                "REPO": HOSTILE,
                "BUCKET": f"gs://{HOSTILE}",
                "NAME": HOSTILE,
                "PYTHON": HOSTILE,
            },
            ["--config.finetune.lr=3e-5", f"--config.name={HOSTILE}"],
            f"gs://{HOSTILE}/saeft/{HOSTILE}",
        ),
    ],
)
def test_tpu_pod_runs_exactly_the_given_values_on_every_worker(tpu_worker, settings, extra, workdir):
    settings = {"REPO": "https://example.com/saeft-jax.git", "BUCKET": "gs://b", **settings}
    gcloud = run_tpu_pod(tpu_worker, settings, extra)
    assert (
        gcloud[0] == ["compute", "tpus", "tpu-vm", "describe", settings.get("NAME", "saeft"), "--zone", "us-central2-b"]
        and len(gcloud) == 3
    )  # the slice exists: install, then run
    assert calls(tpu_worker, "git") == [["clone", settings["REPO"], "saeft-jax"], ["pull", "--ff-only"]]
    assert calls(tpu_worker, "uv")[0] == [
        "venv",
        "--allow-existing",
        "--python",
        settings.get("PYTHON", "3.11"),
        str(tpu_worker / "worker" / "venv"),
    ]
    bucket = settings["BUCKET"]
    assert calls(tpu_worker, "python") == [
        [
            "-m",
            "saeft_jax.main",
            f"--config={settings['CONFIG']}",
            f"--workdir={workdir}",
            f"--config.data_dir={bucket}/tensorflow_datasets",
            *extra,
        ]
    ]
    assert (tpu_worker / "TFDS_DATA_DIR").read_text() == f"{bucket}/tensorflow_datasets"
    assert not list(tpu_worker.rglob("PWNED"))


def test_gpu_node_hands_the_run_each_value_as_one_argument_and_forwards_extra_arguments(tmp_path):
    (tmp_path / "launch").mkdir()
    shutil.copy(os.path.join(ROOT, "launch", "gpu_node.sh"), tmp_path / "launch")
    tool(tmp_path / "stand-ins", "python", RECORD)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "activate").write_text(f"PATH={shlex.quote(str(tmp_path / 'stand-ins'))}:$PATH\n")
    env = {**os.environ, "CALLS": str(tmp_path), "CONFIG": f"configs/{HOSTILE}.py", "WORKDIR": f"/scratch/{HOSTILE}"}
    result = subprocess.run(
        ["bash", str(tmp_path / "launch" / "gpu_node.sh"), f"--config.name={HOSTILE}"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert calls(tmp_path, "python") == [
        [
            "-m",
            "saeft_jax.main",
            f"--config=configs/{HOSTILE}.py",
            f"--workdir=/scratch/{HOSTILE}",
            f"--config.name={HOSTILE}",
        ]
    ]
    assert not list(tmp_path.rglob("PWNED"))


def test_the_colab_notebook_hands_the_run_each_value_as_one_argument():
    from IPython.core.interactiveshell import InteractiveShell

    notebook = json.load(open(os.path.join(ROOT, "launch", "colab_tpu.ipynb")))
    cell = next(
        "".join(c["source"])
        for c in notebook["cells"]
        if c["cell_type"] == "code" and "saeft_jax.main" in "".join(c["source"])
    )
    shell = InteractiveShell.instance()
    commands = []
    shell.system = lambda command: commands.append(shell.var_expand(command))
    shell.user_ns.update(
        shlex=shlex,
        CONFIG=f"configs/{HOSTILE}.py",
        WORKDIR=f"/content/{HOSTILE}",  # the first cell's
        EXTRA="--config.seed=3 '--config.name=a b'",
        _exit_code=0,
    )
    code = shell.transform_cell(cell)
    exec(compile(code, "cell", "exec"), shell.user_ns)
    assert [shlex.split(command) for command in commands] == [
        [
            "python",
            "-m",
            "saeft_jax.main",
            f"--config=configs/{HOSTILE}.py",
            f"--workdir=/content/{HOSTILE}",
            "--config.show_progress=False",
            "--config.seed=3",
            "--config.name=a b",
        ]
    ]


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
    requirements = [
        line.strip()
        for line in open(os.path.join(ROOT, "requirements.txt"))
        if line.strip() and not line.startswith("#")
    ]
    assert requirements == project["dependencies"]  # the two lists say the same
    for script in ("tpu_pod.sh", "gpu_node.sh", "slurm.sbatch"):
        assert "-c constraints.txt" in open(os.path.join(ROOT, "launch", script)).read(), script
    assert "-c constraints.txt" in open(os.path.join(ROOT, ".ci", "run")).read()
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert readme.count("-c constraints.txt") >= 2  # the two commands at the top
