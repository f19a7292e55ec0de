"""The command line: `python -m saeft_jax.main --config=configs/X.py --workdir=DIR`.

Overrides go as `--config.finetune.lr=3e-5` (unknown keys are rejected by name). On several
hosts, pass `--coordinator_address/--num_processes/--process_id` (or the JAX_* environment
variables); TPU pods and SLURM need nothing. A user's mistake (a config file that is missing or
does not load, an unknown key, a value that cannot work, missing data, an unusable workdir or
checkpoint) ends with one paragraph and exit code 2; SIGTERM (a preemption, a time limit) in any
stage with exit code 3, after fine-tuning has saved a checkpoint, and Ctrl-C with 130
(`saeft_jax.stopping` is the policy).
"""

from __future__ import annotations

import os
import shlex
import sys

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from saeft_jax import distributed, stopping
from saeft_jax.errors import UsageError

_DEFAULT_CONFIG = "configs/demo.py"
# Unlocked, so that an override of a key the config lacks reaches `config.finish`, which names it.
_CONFIG = config_flags.DEFINE_config_file(
    "config",
    _DEFAULT_CONFIG,
    "Config file, e.g. configs/vitb16.py[:arg].",
    lock_config=False,
    accept_new_attributes=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where every artifact of the run goes (created if missing).", required=True
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host runs).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host runs).")


def fail(message: str) -> None:
    """Ends the program with `message` as one paragraph on stderr and exit code 2."""
    print(f"\nerror: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flags, with the config file loaded and its overrides applied: a failure is one
    paragraph naming the file and the error. Its keys and values are checked by `config.finish`."""
    given = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    path = given[-1] if given else _DEFAULT_CONFIG
    if not os.path.isfile(path.split(":", 1)[0]):
        fail(
            f"--config={path}: no such config file (relative paths start at {os.getcwd()}); pass one "
            f"of configs/*.py, e.g. --config=configs/demo.py."
        )
    try:
        rest = flags.FLAGS(argv)
        config = _CONFIG.value
    except flags.UnrecognizedFlagError as error:
        fail(f"{error}; run with --help for the flags, and give config keys as --config.<key>=<value>.")
    except Exception as error:  # the file, its get_config(arg), an override's key or value, or another flag's
        overrides = [a for a in argv if a.startswith("--config.")]
        _check_override_keys(overrides)
        fail(
            f"--config={path}{' with ' + ' '.join(overrides) if overrides else ''} does not load: "
            f"{_reason(error)}. A config file defines get_config(arg=None) returning "
            f"saeft_jax.config.base_config() with its changes (see configs/demo.py); an override "
            f"--config.<key>=<value> gives a key of saeft_jax/config.py (base_config) a value of its "
            f"type; run with --help for the other flags."
        )
    if not isinstance(config, ml_collections.ConfigDict):
        fail(
            f"--config={path}: get_config() returned a {type(config).__name__}; it must return the "
            f"ConfigDict of saeft_jax.config.base_config() with its changes (see configs/demo.py)."
        )
    return rest


def _check_override_keys(overrides: list[str]) -> None:
    """Ends the program naming an override's key that the run configuration lacks, if one does."""
    from saeft_jax.config import ConfigError, check_override_keys

    try:
        check_override_keys([o.removeprefix("--config.").split("=", 1)[0] for o in overrides])
    except ConfigError as error:
        fail(str(error))


def _reason(error: BaseException) -> str:
    """What went wrong first: the innermost error of `error`'s chain (what get_config raised, not
    the wrappers absl and ml_collections put around it), in one line."""
    seen = set()
    while (error.__cause__ or error.__context__) is not None and id(error) not in seen:
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    if isinstance(error, SyntaxError):
        return f"it is not valid Python ({error.msg}, line {error.lineno})"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; flags go as --name=value and config keys as --config.<key>=<value>.")
    try:
        startup = distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)  # before JAX
    except UsageError as error:
        fail(str(error))
    if not flags.FLAGS["verbosity"].present:  # Orbax and JAX log every save at INFO; show warnings and up
        logging.set_verbosity(logging.WARNING)
    if startup.joins:
        print(
            f"process {startup.process_id} of {startup.processes} ({startup.how}, coordinator "
            f"{startup.coordinator_address})",
            flush=True,
        )
    from saeft_jax.config import finish
    from saeft_jax.pipeline import run_pipeline

    command = _command()
    try:
        stopping.check("while starting")
        report = run_pipeline(finish(_CONFIG.value), _WORKDIR.value, command=f"rerunning {command}")
    except Exception as error:
        stop = stopping.stop_of(error)
        if stop is not None:
            print(f"\nstopped: {stop}; {command} continues the run", file=sys.stderr)
            sys.exit(stop.exit_code)
        if not isinstance(error, UsageError):
            raise
        fail(str(error))
    if report is None:
        print(f"\ndone: the stages {', '.join(_CONFIG.value.stages)} in {_WORKDIR.value} (no report this time)")
    else:
        print(f"\ndone: {report / 'report.md'}")


def _command() -> str:
    """This process's command line, as a user would type it again."""
    return shlex.join([os.path.basename(sys.executable), "-m", "saeft_jax.main", *sys.argv[1:]])


def run() -> None:
    stopping.install(f"{_command()} continues the run")  # before the config file loads: a signal there is handled
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
