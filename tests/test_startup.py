"""How a run starts, decided from the environment as clusters set it: a single host, SLURM (a
node with 8 GPUs), a gcloud TPU VM slice (its metadata server, faked here), a GKE TPU pod,
explicit settings, and the switch that turns detection off."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from saeft_jax import distributed
from saeft_jax.errors import UsageError

CLUSTER_VARIABLES = (
    "JAX_COORDINATOR_ADDRESS",
    "JAX_NUM_PROCESSES",
    "JAX_PROCESS_ID",
    "SLURM_JOB_ID",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_STEP_NODELIST",
    "SLURM_STEP_NUM_NODES",
    "TPU_WORKER_HOSTNAMES",
    "TPU_PROCESS_ADDRESSES",
    "TPU_WORKER_ID",
    "KUBERNETES_SERVICE_HOST",
    "OMPI_MCA_orte_hnp_uri",
    "PMIX_RANK",
    "MEGASCALE_COORDINATOR_ADDRESS",
    "MEGASCALE_NUM_SLICES",
    "MEGASCALE_SLICE_ID",
    "CUDA_VISIBLE_DEVICES",
    distributed.SWITCH,
)


@pytest.fixture
def clean(monkeypatch):
    """This machine's environment without any cluster's variables, and not a TPU VM."""
    for name in CLUSTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_single_host_never_initializes(clean):
    assert distributed.plan() == distributed.Startup("single host")
    assert not distributed.initialize().joins


def test_explicit_settings_win_and_half_of_them_are_named(clean):
    clean.setenv("SLURM_JOB_ID", "7")  # ignored: the flags say it all
    assert distributed.plan("10.0.0.1:1234", 4, 2) == distributed.Startup("explicit", 4, 2, "10.0.0.1:1234")
    clean.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    with pytest.raises(UsageError, match="needs the number of processes and this process's id"):
        distributed.plan()


@pytest.mark.parametrize(
    "flags, environment, says",
    [
        ((None, 4, None), {}, "need --coordinator_address"),
        ((None, None, 1), {}, "need --coordinator_address"),
        (
            ("10.0.0.1:1234", None, None),
            {"JAX_NUM_PROCESSES": "four", "JAX_PROCESS_ID": "0"},
            "'four'; it must be a whole",
        ),
        (("10.0.0.1:1234", 2, 2), {}, "process id 2 is not one of the 2 processes"),
    ],
)
def test_half_or_wrong_explicit_settings_are_named(clean, flags, environment, says):
    for name, value in environment.items():
        clean.setenv(name, value)
    with pytest.raises(UsageError, match=says):
        distributed.plan(*flags)


def srun(clean, tasks: int, task: int, local: int, nodes: str = "gpu[001-002]") -> None:
    for name, value in {
        "SLURM_JOB_ID": "4242",
        "SLURM_NTASKS": str(tasks),
        "SLURM_PROCID": str(task),
        "SLURM_LOCALID": str(local),
        "SLURM_STEP_NODELIST": nodes,
        "SLURM_STEP_NUM_NODES": "2",
    }.items():
        clean.setenv(name, value)


def test_slurm_runs_one_process_per_gpu_of_every_node(clean):
    """Two nodes of 8 GPUs, 8 tasks each (launch/slurm.sbatch): task 13 is the 6th of node 2 and
    drives that node's GPU 5, so all 16 GPUs of the allocation are used, each by one process."""
    seen = set()
    for task in range(16):
        srun(clean, 16, task, task % 8)
        startup = distributed.plan()
        assert (startup.how, startup.processes, startup.process_id) == ("slurm", 16, task)
        assert startup.coordinator_address == f"gpu001:{4242 % 4096 + 61440}"  # the first node
        assert startup.local_device_ids == (task % 8,)
        seen.add((task // 8, startup.local_device_ids))
    assert len(seen) == 16  # (node, GPU) pairs: every GPU once


def test_slurm_tasks_bound_to_their_own_gpus_are_told_to_see_the_whole_node(clean):
    srun(clean, 16, 13, 5)
    clean.setenv("CUDA_VISIBLE_DEVICES", "5")  # what --gpus-per-task=1 gives task 13
    with pytest.raises(UsageError, match="drive GPU 5 of its node.*sees 1 .*--gpus-per-task"):
        distributed.plan()
    clean.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    assert distributed.plan().local_device_ids == (5,)


def test_a_one_task_slurm_job_and_the_off_switch_stay_single(clean):
    srun(clean, 1, 0, 0, nodes="gpu001")
    assert distributed.plan().how == "single host"
    srun(clean, 16, 3, 3)
    clean.setenv(distributed.SWITCH, "off")
    assert distributed.plan().how == "single host"
    clean.setenv(distributed.SWITCH, "maybe")
    with pytest.raises(UsageError, match="SAEFT_DISTRIBUTED='maybe'"):
        distributed.plan()


class Metadata(BaseHTTPRequestHandler):
    """A GCE metadata server's TPU attributes: /computeMetadata/v1/instance/attributes/<key>."""

    attributes: dict[str, str] = {}

    def do_GET(self):
        key = self.path.rsplit("/", 1)[-1]
        body = self.attributes.get(key)
        self.send_response(200 if body is not None else 404)
        self.end_headers()
        self.wfile.write((body or "").encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def tpu_vm(clean):
    """This process seen as a Cloud TPU VM whose metadata server is local."""
    from jax._src.clusters import cloud_tpu_cluster

    server = HTTPServer(("127.0.0.1", 0), Metadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    clean.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)
    clean.delenv("TPU_SKIP_MDS_QUERY", raising=False)  # set by JAX on a machine without TPU chips
    clean.setenv("GCE_METADATA_IP", f"127.0.0.1:{server.server_port}")
    yield Metadata
    server.shutdown()


def test_a_gcloud_tpu_vm_slice_joins_through_its_metadata(tpu_vm):
    """`gcloud compute tpus tpu-vm ssh --worker=all` starts the same command on 4 hosts of a v4-32."""
    tpu_vm.attributes = {
        "agent-worker-number": "2",
        "tpu-env": "",
        "worker-network-endpoints": "127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4",
    }
    startup = distributed.plan()
    assert (startup.how, startup.processes, startup.process_id) == ("gcetpu", 4, 2)
    assert startup.coordinator_address == "127.0.0.1:8482" and startup.local_device_ids is None


def test_a_single_host_tpu_vm_does_not_initialize(tpu_vm):
    tpu_vm.attributes = {"agent-worker-number": "0", "tpu-env": "", "worker-network-endpoints": "127.0.0.1"}
    assert distributed.plan().how == "single host"


def test_a_gke_tpu_pod_joins_through_its_environment(tpu_vm, clean):
    tpu_vm.attributes = {"tpu-env": ""}
    clean.setenv("TPU_WORKER_HOSTNAMES", "127.0.0.1,127.0.0.2")
    clean.setenv("TPU_WORKER_ID", "1")
    startup = distributed.plan()
    assert (startup.how, startup.processes, startup.process_id) == ("gketpu", 2, 1)
    assert startup.coordinator_address == "127.0.0.1:8482"
