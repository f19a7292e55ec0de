"""Two processes on 127.0.0.1 (gloo CPU collectives) train and evaluate exactly as one process
with as many devices."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import subprocess_env

WORKER = """
import json, sys
from saeft_jax import distributed
process_id, processes, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
explicit = processes > 1 and port != "slurm"  # under a simulated srun the environment says it all
joined = (distributed.initialize(f"127.0.0.1:{port}", processes, process_id) if explicit
          else distributed.initialize()).joins
import jax
from saeft_jax import parallel
from saeft_jax.training.step import init_state
from test_train_step import make_step, setup_run
model, params, frozen, images, labels = setup_run()
mesh = parallel.data_mesh()
step, optimizer = make_step(model, "sae_add_remove", mesh)
state, frozen = jax.device_put((init_state(params, optimizer), frozen), parallel.replicated(mesh))
rows = slice(process_id * len(labels) // processes, (process_id + 1) * len(labels) // processes)
local = lambda x: jax.make_array_from_process_local_data(parallel.batch_sharding(mesh), x[rows])
losses = []
for _ in range(3):
    state, metrics = step(state, frozen, {"images": local(images), "labels": local(labels)})
    losses.append(float(metrics["loss"]))
from saeft_jax.data.preprocess import ImageSpec
from saeft_jax.data.registry import DatasetSpec
from saeft_jax.evaluation.evaluate import evaluate_dataset
from test_evaluation import ImageSource
from test_train_step import CLASSES
spec = DatasetSpec("toy", "prepared", "toy", "test", "toy", ("{}",), fixed_classnames=tuple(map(str, range(CLASSES))))
theta_ft = jax.tree.map(lambda x: x.addressable_data(0), state["params"])  # replicated: any local copy
evaluation = evaluate_dataset(model, jax.device_get(params), jax.device_get(theta_ft), spec, ImageSource(21, CLASSES),
                              image_spec=ImageSpec(size=32), mesh=mesh, global_batch=8, alphas=(0.5,),
                              show_progress=False)
print("RESULT " + json.dumps({"losses": losses, "joined": joined, "processes": jax.process_count(),
                              "devices": jax.device_count(), "scores": evaluation.scores,
                              "indices": evaluation.indices.tolist(), "predictions": evaluation.predictions.tolist(),
                              "embedding": float(evaluation.finetuned_embeddings.sum())}), flush=True)
"""


STOPPER = """
import json, os, signal, sys
from saeft_jax import distributed
process_id, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
distributed.initialize(f"127.0.0.1:{port}", 2, process_id)
import jax
from saeft_jax import parallel
from saeft_jax.training.loop import train_loop
from saeft_jax.training.step import init_state
from test_loop import batches
from test_train_step import make_step, setup_run
model, params, frozen, images, labels = setup_run()
mesh = parallel.data_mesh()
step, optimizer = make_step(model, "sae_add_remove", mesh)

class ThisProcessRows:  # this process's half of each global batch; process 1 is signalled after its 3rd
    def __init__(self, inner):
        self.inner, self.count = inner, 0
    def __next__(self):
        self.count += 1
        if process_id == 1 and self.count == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return {name: x[process_id * 4:(process_id + 1) * 4] for name, x in next(self.inner).items()}
    def get_state(self):
        return self.inner.get_state()
    def set_state(self, state):
        self.inner.set_state(state)

_, summary = train_loop(step, init_state(params, optimizer), frozen, ThisProcessRows(batches(images, labels)),
                        mesh=mesh, workdir=workdir, total_steps=8, log_every=2, checkpoint_every=100,
                        show_progress=False)
print("RESULT " + json.dumps(summary), flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(process_id: int, processes: int, port: int | str, devices: int, **extra_env: str) -> subprocess.Popen:
    env = subprocess_env(
        JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra_env
    )
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(process_id), str(processes), str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def srun_environment(task: int, tasks: int) -> dict[str, str]:
    """What `srun --ntasks=TASKS` sets for task TASK on one node, with a job id whose SLURM port
    (JAX's rule: 61440 + job id mod 4096) is free here."""
    port = next(p for p in range(61440 + os.getpid() % 2000, 65536) if _free(p))
    return {
        "SLURM_JOB_ID": str(port - 61440 + 4096),
        "SLURM_NTASKS": str(tasks),
        "SLURM_PROCID": str(task),
        "SLURM_LOCALID": str(task),
        "SLURM_STEP_NODELIST": "localhost",
        "SLURM_STEP_NUM_NODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_STEP_ID": "0",
    }


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def result(process: subprocess.Popen) -> dict:
    output, _ = process.communicate(timeout=300)
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert process.returncode == 0 and lines, output[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.fixture(scope="module")
def single() -> dict:
    """One process with 8 devices: what every pair of 4-device processes must match (run once)."""
    return result(start(0, 1, free_port(), devices=8))


@pytest.mark.slow
def test_two_processes_match_one_process_with_as_many_devices(single):
    port = free_port()
    workers = [start(i, 2, port, devices=4) for i in range(2)]
    pair = [result(w) for w in workers]
    assert single["processes"] == 1 and not single["joined"] and single["devices"] == 8
    for worker in pair:
        assert worker["joined"] and worker["processes"] == 2 and worker["devices"] == 8
        np.testing.assert_allclose(worker["losses"], single["losses"], rtol=1e-5)
        # evaluation: every example once over both processes, gathered on each, the same answers
        assert sorted(worker["indices"]) == list(range(21)) and worker["indices"] == single["indices"]
        assert worker["predictions"] == single["predictions"] and worker["scores"] == single["scores"]
        np.testing.assert_allclose(worker["embedding"], single["embedding"], rtol=1e-4)


@pytest.mark.slow
def test_two_tasks_under_a_simulated_srun_join_as_one_job_without_flags(single):
    """No distributed flags: JAX reads the SLURM environment, and the pair matches one process."""
    environments = [srun_environment(task, 2) for task in range(2)]
    environments[1]["SLURM_JOB_ID"] = environments[0]["SLURM_JOB_ID"]
    workers = [start(i, 2, "slurm", devices=4, **environments[i]) for i in range(2)]
    for worker in (result(w) for w in workers):
        assert worker["joined"] and worker["processes"] == 2 and worker["devices"] == 8
        np.testing.assert_allclose(worker["losses"], single["losses"], rtol=1e-5)
        assert worker["predictions"] == single["predictions"] and worker["scores"] == single["scores"]


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_step_with_one_checkpoint(tmp_path):
    """SLURM signals its tasks at different steps: the processes agree at the next sync point
    (log_every) and save together, instead of each waiting for the other in a different collective."""
    from saeft_jax.checkpoints import Checkpoints

    port = free_port()
    env = subprocess_env(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", STOPPER, str(i), str(port), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        summaries = [result(worker) for worker in workers]  # the old behaviour: both hang until the timeout
    finally:
        for worker in workers:
            worker.kill()
    for summary in summaries:  # process 1 signalled during step 3: both stop at the sync point, step 4
        assert summary["preempted"] and summary["steps"] == 4
    assert Checkpoints(tmp_path / "checkpoints").latest_step() == 4
