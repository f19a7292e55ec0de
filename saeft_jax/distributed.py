"""Multi-process start-up and the barrier that lets processes wait for each other.

A run joins its processes (`jax.distributed.initialize`) when, and only when, it spans several:

- explicit settings win: `--coordinator_address/--num_processes/--process_id`, or
  JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID;
- otherwise JAX's own cluster detection decides, with JAX's own rules: SLURM (inside `srun`), a
  gcloud TPU VM slice (through its metadata server), a GKE TPU pod, Kubernetes, Open MPI. A
  cluster of one process (a single-host TPU VM, a one-task SLURM job) does not initialize;
- `SAEFT_DISTRIBUTED=off` turns detection off for a run that only looks like a cluster.

Under SLURM every task is one process and drives one GPU, the GPU of its SLURM_LOCALID (JAX's
rule), so a node with 8 GPUs runs 8 tasks (`launch/slurm.sbatch`). CPU processes talk over gloo.
Must run before any other JAX call.
"""

from __future__ import annotations

import dataclasses
import os

import jax

from saeft_jax.errors import UsageError

SWITCH = "SAEFT_DISTRIBUTED"


@dataclasses.dataclass(frozen=True)
class Startup:
    """How this process starts: `how` is "explicit", a JAX cluster name ("slurm", "gcetpu",
    "gketpu", ...) or "single host"; the other fields are JAX's settings (None: JAX decides)."""

    how: str
    processes: int = 1
    process_id: int = 0
    coordinator_address: str | None = None
    local_device_ids: tuple[int, ...] | None = None

    @property
    def joins(self) -> bool:
        return self.processes > 1


def plan(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> Startup:
    """What `initialize` will do, decided without starting anything."""
    address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address:
        count = num_processes if num_processes is not None else os.environ.get("JAX_NUM_PROCESSES")
        index = process_id if process_id is not None else os.environ.get("JAX_PROCESS_ID")
        if count is None or index is None:
            raise UsageError(
                f"a coordinator address ({address}) needs the number of processes and this "
                f"process's id (--num_processes/--process_id or JAX_NUM_PROCESSES/JAX_PROCESS_ID)."
            )
        count, index = (
            _count("--num_processes / JAX_NUM_PROCESSES", count),
            _count("--process_id / JAX_PROCESS_ID", index),
        )
        if not 0 <= index < count:
            raise UsageError(f"process id {index} is not one of the {count} processes (0 to {count - 1}).")
        return Startup("explicit", count, index, address)
    if num_processes is not None or process_id is not None:
        raise UsageError(
            "--num_processes/--process_id need --coordinator_address (host:port of process 0); on "
            "SLURM or a TPU slice pass none of the three, JAX finds them by itself."
        )
    switch = os.environ.get(SWITCH, "auto")
    if switch not in ("auto", "off"):
        raise UsageError(
            f"{SWITCH}={switch!r}; use 'auto' (JAX detects SLURM, TPU slices, GKE, ...) or 'off' "
            f"(this run is one process)."
        )
    cluster = _detected_cluster() if switch == "auto" else None
    if cluster is None or cluster.get_process_count() <= 1:
        return Startup("single host")
    address, count, index, devices = cluster.auto_detect_unset_distributed_params(  # None: JAX's own detection
        None, None, None, None, None, 300
    )
    _check_visible_gpus(devices)
    return Startup(
        cluster.name or cluster.__name__, count, index, address, tuple(devices) if devices is not None else None
    )


def _count(name: str, value) -> int:
    try:
        number = int(value)
    except ValueError:
        raise UsageError(f"{name} is {value!r}; it must be a whole number.") from None
    if number < 0:
        raise UsageError(f"{name} is {number}; it must be 0 or more.")
    return number


def _check_visible_gpus(devices) -> None:
    """JAX drives GPU SLURM_LOCALID of the node; a task bound to its own GPUs does not see it."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if devices is None or not visible:
        return
    count = len(visible.split(","))
    if max(devices) >= count:
        raise UsageError(
            f"this task would drive GPU {max(devices)} of its node (its SLURM_LOCALID, JAX's rule), "
            f"but it sees {count} (CUDA_VISIBLE_DEVICES={visible}): GPUs are bound to tasks "
            f"(--gpus-per-task or --gpu-bind). Let every task see all of its node's GPUs, with "
            f"--gpus-per-node and --ntasks-per-node equal, as launch/slurm.sbatch does."
        )


def _detected_cluster():
    """The cluster environment JAX would join by itself (`jax.distributed.initialize()` with no
    arguments), or None on a single machine."""
    from jax._src import clusters  # JAX's detection, the same that initialize() uses

    return next(
        (env for env in clusters.ClusterEnv._cluster_types if not env.opt_in_only_method and env.is_env_present()), None
    )


def initialize(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> Startup:
    """Joins the process group when the run spans several processes; returns how it started."""
    startup = plan(coordinator_address, num_processes, process_id)
    if startup.joins:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts talk over gloo
        jax.distributed.initialize(
            startup.coordinator_address,
            startup.processes,
            startup.process_id,
            local_device_ids=list(startup.local_device_ids) if startup.local_device_ids is not None else None,
        )
    return startup


def barrier(name: str, timeout_s: int = 24 * 3600) -> None:
    """Waits until every process reaches the barrier `name` (each name used once). Unlike a
    collective, which gives up after 30 s on CPU hosts, this waits through long one-process
    work (preparing data, pretraining the demo, training the SAE): a coordination-service
    barrier, through Orbax's multihost helper."""
    if jax.process_count() == 1:
        return
    from orbax.checkpoint import multihost

    multihost.sync_global_processes(name, timeout=timeout_s, processes=set(range(jax.process_count())))
