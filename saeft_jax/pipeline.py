"""Runs the stages in order (zeroshot -> features -> sae -> probe -> finetune -> evaluate -> report),
skipping each whose artifact is complete, so the same command continues a stopped run and does
nothing after a finished one."""

from __future__ import annotations

import datetime
import functools
import json
import os
from collections.abc import Callable
from importlib import metadata

import jax
import ml_collections
import numpy as np
from etils import epath

from saeft_jax import curves, preflight, stopping, storage
from saeft_jax.config import RunConfig, base_config
from saeft_jax.data.locations import resolve_data_dir
from saeft_jax.data.registry import CORRUPTED, suite
from saeft_jax.errors import UsageError
from saeft_jax.methods import SETTINGS
from saeft_jax.stages import completion, evaluate, features, finetune, probe, report, sae, zeroshot
from saeft_jax.stages.context import Run, write_json
from saeft_jax.training import recipes
from saeft_jax.workdir_lock import WorkdirBusy, WorkdirLock

# Keys that change how a run goes, not what it computes: a rerun may change them.
OPERATIONAL = {
    "stages",
    "show_progress",
    "num_workers",
    "data_dir",
    "demo.cache_dir",
    "finetune.log_every",
    "finetune.checkpoint_every",
    "finetune.keep_checkpoints",
    "features.chunk_steps",
    "wandb_project",
}
PACKAGES = ("saeft-jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "transformers", "numpy")


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_config(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
    """Refuses a workdir that holds a run of another config."""
    resolved = json.loads(config.to_json_best_effort())
    path = workdir / "config.json"
    if path.exists():
        try:
            recorded = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise UsageError(
                f"{path} is damaged ({error}), so this run cannot tell whether the workdir holds a run of "
                f"the same config. If it does, delete {path} and rerun; otherwise use a new "
                f"--workdir."
            ) from error
        _check_layout(_flat(recorded), _flat(resolved), path)
        ignored = OPERATIONAL | _unread(config, _flat(recorded) | _flat(resolved))
        before = {k: v for k, v in _flat(recorded).items() if k not in ignored}
        now = {k: v for k, v in _flat(resolved).items() if k not in ignored}
        differ = sorted(k for k in before.keys() | now.keys() if before.get(k, _MISSING) != now.get(k, _MISSING))
        if differ:
            raise UsageError(
                f"{workdir} holds a run with another config (different: {', '.join(differ)}). Use a new "
                f"--workdir, or the same config to continue that run."
            )


_MISSING = object()  # a key on one side only: it differs


def _check_layout(recorded: dict, resolved: dict, path: epath.Path) -> None:
    """Refuses a config.json written by another version of this package: one that lacks a key this
    version writes in every config (or holds one it no longer knows), in a section both configs have."""
    named = ("saes.", "finetune.methods.")  # sections keyed by the user's names, each entry with its settings
    fixed = {k for k in _flat(json.loads(base_config().to_json_best_effort())) if not k.startswith(named)}
    settings = {k.split(".")[-1] for k in resolved if k.startswith("saes.")}
    wanted = fixed | {
        f"{prefix}{name}.{setting}"
        for prefix, keys in (("saes.", settings), ("finetune.methods.", SETTINGS))
        for name in {k[len(prefix) :].split(".")[0] for k in recorded if k.startswith(prefix)}
        for setting in keys
    }
    unknown = {k for k in recorded if not k.startswith(named)} - fixed
    missing = wanted - set(recorded)
    if missing or unknown:
        listed = ", ".join(sorted(missing | unknown))
        raise UsageError(
            f"{path} was written by another version of saeft-jax (keys missing or unknown to this version: "
            f"{listed}), whose workdirs this version does not continue. Rerun with a new --workdir."
        )


def _unread(config: ml_collections.ConfigDict, keys: dict) -> set[str]:
    """The keys of `keys` that nothing in this run reads, so that they change nothing: the linear
    probe's without a method that reads the probe, the corruptions' without CIFAR-10-C / -100-C."""
    probed = any(recipes.get(m.recipe).reads_probe for m in config.finetune.methods.values())
    try:
        in_distribution, shifts = suite(config.eval_suite)
    except KeyError:  # named in the refusal of the run itself (preflight)
        in_distribution, shifts = None, ()
    corrupted = bool(set(CORRUPTED) & {config.train_dataset, in_distribution, *shifts})
    unread = ([] if probed else ["probe."]) + ([] if corrupted else ["corruptions."])
    return {key for key in keys if any(key.startswith(prefix) for prefix in unread)}


def record_config(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
    """Writes config.json and adds this attempt to versions.json (once the run has passed its
    checks, so that a refused command leaves nothing that would refuse the corrected one)."""
    write_json(workdir / "config.json", json.loads(config.to_json_best_effort()))
    record_versions(workdir)


def record_versions(workdir: epath.Path) -> list[dict]:
    """Appends this attempt ({"started": UTC time, "versions": {package: version}}) to the
    `attempts` of versions.json, so the versions that made the earlier stages stay on record;
    says in one line when they differ from the previous attempt's. Returns the attempts."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    path = workdir / "versions.json"
    attempts = _attempts(path)
    if attempts and attempts[-1].get("versions") != versions:
        before = attempts[-1].get("versions") or {}
        changed = [
            f"{p} {before.get(p)} -> {versions.get(p)}"
            for p in sorted(before.keys() | versions.keys())
            if before.get(p) != versions.get(p)
        ]
        print(
            f"note: this run continues under other versions than its previous attempt ({', '.join(changed)}); "
            f"{path} keeps the versions of every attempt.",
            flush=True,
        )
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    attempts.append({"started": started, "versions": versions})
    write_json(path, {"attempts": attempts})
    return attempts


def _attempts(path: epath.Path) -> list[dict]:
    """The attempts versions.json records: [] without one; a record of the single-attempt form
    (the versions themselves) as one attempt of unknown time; a damaged one is said and replaced."""
    if not path.exists():
        return []
    try:
        recorded = json.loads(path.read_bytes())
    except ValueError:
        recorded = None
    if isinstance(recorded, dict) and isinstance(recorded.get("attempts"), list):
        return [a for a in recorded["attempts"] if isinstance(a, dict)]
    if isinstance(recorded, dict) and "attempts" not in recorded:
        return [{"started": None, "versions": recorded}]
    print(f"note: {path} was damaged; it is replaced with this attempt's versions alone.", flush=True)
    return []


def prepare_workdir(workdir: str | os.PathLike) -> epath.Path:
    """The workdir, a local directory or an object-store URL (gs://bucket/run), checked writable."""
    if not os.fspath(workdir).strip():
        raise UsageError("--workdir is empty; name the directory (or gs:// URL) the run's artifacts go to.")
    storage.check_reachable(workdir, "--workdir")
    path = storage.path(workdir)
    try:
        is_file = path.exists() and not path.is_dir()
        if not is_file:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / ".write_test"
            probe.write_text("")
            probe.unlink()
    except ImportError as error:  # gs:// without gcsfs, s3:// without s3fs
        raise UsageError(
            f"--workdir {path} needs a filesystem package that is not installed ({error}); for gs:// "
            f"run pip install gcsfs, for s3:// pip install s3fs"
        ) from error
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or error
        raise UsageError(
            f"--workdir {path} cannot be written ({reason}); choose a writable directory, or for a "
            f"bucket check its name and your credentials"
        ) from error
    if is_file:
        raise UsageError(f"--workdir {path} is a file; pass a directory (it is created when missing)")
    return path


def _say(run: Run, message: str) -> None:
    if run.is_writer:
        print(message, flush=True)


def run_pipeline(
    checked: RunConfig, workdir: str | os.PathLike, command: str = "rerunning the same command"
) -> epath.Path | None:
    """Runs the stages of `checked` (`config.finish`'s result) in `workdir`, holding its lock;
    returns the report directory when the report is complete, else None. `command` tells a user
    how to rerun, in messages about damaged artifacts."""
    for what, place in _inputs(checked):  # before anything is written
        storage.check_reachable(place, what)
    workdir = prepare_workdir(workdir)
    lock = _take_lock(workdir)
    try:
        with storage.failures_named(str(workdir), "running the pipeline"):
            return _run_stages(checked, workdir, command)
    finally:
        if lock is not None:
            lock.release()


def _inputs(checked: RunConfig) -> list[tuple[str, str]]:
    """(config key, place) of everything the run reads that may be in a bucket: the data, the model,
    the methods' imported checkpoints."""
    config = checked.config
    places = [("config.data_dir", resolve_data_dir(config.data_dir)), ("config.model", config.model)]
    places += [
        (f"config.finetune.methods.{name}.checkpoint", method.checkpoint)
        for name, method in checked.methods.items()
        if method.checkpoint
    ]
    return places


def _take_lock(workdir: epath.Path) -> WorkdirLock | None:
    """Process 0 takes the workdir's lock; every process learns whether it did."""
    lock, taken, error = None, True, None
    if jax.process_index() == 0:
        lock = WorkdirLock(workdir)
        try:
            lock.acquire()
        except UsageError as refused:
            taken, error = False, refused
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        taken = bool(multihost_utils.broadcast_one_to_all(np.int32(taken)))
    if not taken:
        raise error or WorkdirBusy(f"process 0 could not take the lock of {workdir}; its message says why")
    return lock


def _plan(run: Run) -> list[tuple[tuple[str, ...], Callable, tuple[tuple[str, ...], ...]]]:
    """(artifact, the function that makes it, the artifacts it is made from), in order."""
    plan = [(("zeroshot",), zeroshot.run_stage, ()), (("features",), features.run_stage, ())]
    plan += [(("sae", name), functools.partial(sae.run_stage, name=name), (("features",),)) for name in run.saes]
    plan += [(("probe",), probe.run_stage, (("features",),))] if probe.wanted(run) else []
    for name, method in run.methods.items():
        plan.append(
            (("finetune", name), functools.partial(finetune.run_stage, name=name), finetune.made_from(run, method))
        )
    for name in run.methods:
        plan.append(
            (("evaluate", name), functools.partial(evaluate.run_stage, name=name), (("finetune", name), ("zeroshot",)))
        )
    plan.append((("report",), report.run_stage, tuple(("evaluate", name) for name in run.methods)))
    return plan


def _features_read(run: Run, wanted: set[str]) -> bool:
    """Whether a wanted stage reads the features: the SAEs, the probe, the teacher cache."""
    return "sae" in wanted or ("probe" in wanted and probe.wanted(run)) or run.config.finetune.teacher_cache


def _run_stages(checked: RunConfig, workdir: epath.Path, command: str) -> epath.Path | None:
    config = checked.config
    if jax.process_index() == 0:
        check_config(config, workdir)
    model_path = None
    if config.demo.enabled:
        from saeft_jax.demo import setup

        stopping.doing("the demo's data and model")
        model_path = setup.prepare(config)
    run = Run(checked, workdir, model_path, command=command)
    stopping.doing("the preflight checks")
    preflight.check(run)
    if run.is_writer:
        record_config(config, workdir)
    with curves.wandb_logging(config.wandb_project, workdir, config.to_dict()):  # after every check
        _run_plan(run, config, workdir)
    return workdir / report.STAGE if run.done(report.STAGE) is not None else None


def _run_plan(run: Run, config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
    wanted = set(config.stages)
    for parts, function, needs in _plan(run):
        stage, label = parts[0], "/".join(parts)
        stopping.check(f"before stage {label}")
        if stage not in wanted or (stage == "features" and not _features_read(run, wanted)):
            continue
        if run.done(*parts) is not None:
            _say(run, f"stage {label}: complete, skipped")
            continue
        missing = [need for need in needs if run.done(*need) is None]
        if missing:
            names, stages = ", ".join("/".join(m) for m in missing), sorted({m[0] for m in missing})
            raise UsageError(
                f"stage {label} is made from {names}, which {'is' if len(missing) == 1 else 'are'} not "
                f"complete in {workdir}; add the stage{'s' if len(stages) > 1 else ''} "
                f"{', '.join(stages)} to config.stages (all stages run by default)."
            )
        problem = run.problem(*parts)
        if problem is None:
            _say(run, f"stage {label}: running")
        else:
            _say(
                run,
                f"stage {label}: {problem.reason}; "
                + ("starting it over" if problem.start_over else "making what is missing again"),
            )
            if run.is_writer:
                completion.discard(workdir, parts, problem)
            run.barrier(f"discard {label}")
        stopping.doing(f"stage {label}")
        function(run)
