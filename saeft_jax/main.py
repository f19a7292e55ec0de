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
import re
import shlex
import sys

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from saeft_jax import distributed, stopping
from saeft_jax.errors import UsageError
from saeft_jax.methods import unknown_hparam_hints

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Config file, e.g. configs/vitb16.py[:arg].")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where every artifact of the run goes (created if missing).", required=True
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host runs).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host runs).")
_KEYS = "the keys and their defaults are listed in saeft_jax/config.py (base_config) and docs/design.md"


def fail(message: str) -> None:
    """Ends the program with `message` as one paragraph on stderr and exit code 2."""
    print(f"\nerror: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(2)


def _config_path(argv: list[str]) -> str:
    given = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    return given[-1] if given else _CONFIG.default


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else text


def _unknown_key(argv: list[str], error: Exception) -> str:
    """The key, set by a `--config.a.b` override or by the config file, that the config does not
    have, and what was meant."""
    text = str(error.__context__ or error).replace("\\n", "\n").replace("\\'", "'")
    if "get_config" in text:
        return (
            f"--config={_config_path(argv)} defines no get_config(); a config file defines get_config(arg=None) "
            f"returning saeft_jax.config.base_config() with its changes (see configs/demo.py)."
        )
    missing = re.search(r"""Key "([^"]+)" does not exist""", text) or re.search(r"'([^'\s]+)'", text)
    meant = re.search(r'Did you mean "([^"]+)"', text)
    hint = f" (did you mean {meant.group(1)!r}?)" if meant else ""
    key = missing.group(1) if missing else "?"
    overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
    named = [o for o in overrides if key in o[len("--config.") :].split(".")]
    if not named:  # set inside the config file
        return (
            f"--config={_config_path(argv)}: its get_config() sets the config key {key!r}, which does not "
            f"exist{hint}; {_KEYS}."
        )
    if named[0].startswith("--config.finetune.methods."):
        hint += "".join(f" ({h})" for h in unknown_hparam_hints(key))
    return f"{named[0]}: the config {_config_path(argv)} has no such key{hint}; {_KEYS}."


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with the config file loaded here so that its mistakes end as one paragraph."""
    try:
        rest = flags.FLAGS(argv)
        config = _CONFIG.value
    except flags.UnrecognizedFlagError as error:
        fail(f"{error}; run with --help for the flags, and give config keys as --config.<key>=<value>.")
    except flags.IllegalFlagValueError as error:
        text = str(error)
        if "Error whilst parsing config file" in text:
            fail(
                f"--config={_config_path(argv)}: its get_config() failed ({_last_line(text)}); fix the config "
                f"file or its argument (e.g. configs/demo.py:smoke)."
            )
        first = text.splitlines()[0]
        if first.startswith("flag --config."):
            fail(f"{first}; give a value of the key's type ({_KEYS}).")
        fail(f"{first.rstrip('.')}; run with --help for the flags.")
    except (AttributeError, KeyError) as error:
        fail(_unknown_key(argv, error))
    except SyntaxError as error:
        fail(f"--config={_config_path(argv)} is not valid Python: {error.msg} at line {error.lineno}; fix the file.")
    except OSError:  # ml_collections' stand-in for a file it could not open, reached by an override
        _missing_config_file(argv)
    except flags.Error as error:
        fail(f"{error}; run with --help for the flags.")
    if type(config).__name__ == "_ErrorConfig":  # the same stand-in, reached first here
        _missing_config_file(argv)
    if not isinstance(config, ml_collections.ConfigDict):
        fail(
            f"--config={_config_path(argv)}: get_config() returned a {type(config).__name__}; it must return the "
            f"ConfigDict of saeft_jax.config.base_config() with its changes (see configs/demo.py)."
        )
    return rest


def _missing_config_file(argv: list[str]) -> None:
    fail(
        f"--config={_config_path(argv)}: no such config file (relative paths start at {os.getcwd()}); pass one "
        f"of configs/*.py, e.g. --config=configs/demo.py."
    )


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
        stop = _stop_of(error)
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


def _stop_of(error: Exception) -> stopping.Stopped | None:
    """The stop that `error` is, wraps (a stop raised inside a library's call may come back wrapped
    in its error) or followed (after a signal, what failed is taken as its consequence: grain's
    worker processes get SLURM's SIGTERM too), else None."""
    stop = _wrapped(error, stopping.Stopped)
    signum = stopping.requested()
    if stop is None and signum is not None:
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        stop = stopping.Stopped(
            f"{stopping.signal_name(signum)}, and while stopping: {type(error).__name__} "
            f"{first_line}; every finished artifact is kept",
            signum,
        )
    return stop


def _wrapped(error: BaseException, kind: type) -> BaseException | None:
    """`error` or the first exception of type `kind` it was raised from or during, else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _command() -> str:
    """This process's command line, as a user would type it again."""
    return shlex.join([os.path.basename(sys.executable), "-m", "saeft_jax.main", *sys.argv[1:]])


def run() -> None:
    stopping.install(f"{_command()} continues the run")  # before the config file loads: a signal there is handled
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
