"""The command line: `python -m saeft_jax.main --config=configs/X.py --workdir=DIR`.

Overrides go as `--config.finetune.lr=3e-5` (unknown keys are rejected by name). On several
hosts, pass `--coordinator_address/--num_processes/--process_id` (or the JAX_* environment
variables); TPU pods and SLURM need nothing. Usage errors end with one paragraph and exit code 2.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from saeft_jax import distributed

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Config file, e.g. configs/vitb16.py[:arg].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where every artifact of the run goes (created if missing).",
                               required=True)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host runs).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host runs).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)  # before any other JAX call
    if not flags.FLAGS["verbosity"].present:  # Orbax and JAX log every save at INFO; show warnings and up
        logging.set_verbosity(logging.WARNING)
    from saeft_jax.config import ConfigError, finish
    from saeft_jax.data.prepare import PreparationError
    from saeft_jax.data.sources import DatasetNotPrepared
    from saeft_jax.hf import CheckpointError
    from saeft_jax.pipeline import UsageError, run_pipeline
    from saeft_jax.sae_artifact import SAEArtifactError
    from saeft_jax.stages.finetune import Preempted
    from saeft_jax.training.loop import TrainingDiverged

    try:
        report = run_pipeline(finish(_CONFIG.value), _WORKDIR.value)
    except Preempted as stop:
        logging.warning("%s", stop)
        print(f"\nstopped: {stop}", file=sys.stderr)
        sys.exit(3)
    except (UsageError, ConfigError, DatasetNotPrepared, CheckpointError, SAEArtifactError, PreparationError,
            TrainingDiverged) as error:
        print(f"\nerror: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"\ndone: {report / 'report.md'}")


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
