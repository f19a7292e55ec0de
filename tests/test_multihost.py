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

WORKER = """
import json, sys
sys.path.insert(0, "tests")
from saeft_jax import distributed
process_id, processes, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
address = f"127.0.0.1:{port}"
joined = distributed.initialize(address, processes, process_id) if processes > 1 else distributed.initialize()
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(process_id: int, processes: int, port: int, devices: int) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-c", WORKER, str(process_id), str(processes), str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def result(process: subprocess.Popen) -> dict:
    output, _ = process.communicate(timeout=400)
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert process.returncode == 0 and lines, output[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.slow
def test_two_processes_match_one_process_with_as_many_devices():
    port = free_port()
    workers = [start(i, 2, port, devices=4) for i in range(2)]
    single = result(start(0, 1, port, devices=8))
    pair = [result(w) for w in workers]
    assert single["processes"] == 1 and not single["joined"] and single["devices"] == 8
    for worker in pair:
        assert worker["joined"] and worker["processes"] == 2 and worker["devices"] == 8
        np.testing.assert_allclose(worker["losses"], single["losses"], rtol=1e-5)
        # evaluation: every example once over both processes, gathered on each, the same answers
        assert sorted(worker["indices"]) == list(range(21)) and worker["indices"] == single["indices"]
        assert worker["predictions"] == single["predictions"] and worker["scores"] == single["scores"]
        np.testing.assert_allclose(worker["embedding"], single["embedding"], rtol=1e-4)


def test_single_host_never_initializes_and_half_settings_are_named(monkeypatch):
    from saeft_jax import distributed

    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS",
                 "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.initialize() is False
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    with pytest.raises(ValueError, match="needs the number of processes and this process's id"):
        distributed.initialize()
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
    assert distributed.initialize() is False  # a one-task SLURM job is a single host
