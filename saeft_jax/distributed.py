"""Multi-process start-up (`jax.distributed.initialize` exactly when a run spans several
processes) and the barrier that lets processes wait for each other.

Explicit settings (flags or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID) win;
TPU pods and SLURM jobs of several tasks are detected by JAX itself; a single-host run never
initializes. Must run before any other JAX call.
"""

from __future__ import annotations

import os

import jax


def _multi_task_cluster() -> bool:
    slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ
    tpu_pod = "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return slurm or tpu_pod


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Joins the process group when the run spans several processes; returns whether it did."""
    address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address:
        count = num_processes if num_processes is not None else os.environ.get("JAX_NUM_PROCESSES")
        index = process_id if process_id is not None else os.environ.get("JAX_PROCESS_ID")
        if count is None or index is None:
            raise ValueError(f"a coordinator address ({address}) needs the number of processes and this "
                             f"process's id (--num_processes/--process_id or JAX_NUM_PROCESSES/JAX_PROCESS_ID).")
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts talk over gloo
        jax.distributed.initialize(address, int(count), int(index))
        return True
    if _multi_task_cluster():
        jax.distributed.initialize()
        return True
    return False


def barrier(name: str, timeout_s: int = 24 * 3600) -> None:
    """Waits until every process reaches the barrier `name` (each name used once). Unlike a
    collective, which gives up after 30 s on CPU hosts, this waits through long one-process
    work (preparing data, pretraining the demo, training the SAE): a coordination-service
    barrier, through Orbax's multihost helper."""
    if jax.process_count() == 1:
        return
    from orbax.checkpoint import multihost

    multihost.sync_global_processes(name, timeout=timeout_s, processes=set(range(jax.process_count())))
