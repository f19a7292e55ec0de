"""The linear train loop: batches in, jit steps, metrics out, checkpoints that resume exactly.

Each checkpoint holds the train state and the data iterator's position, so rerunning after any
stop (SIGTERM, preemption notice, SIGKILL) continues with the very batches an uninterrupted run
would have seen, and ends with the same parameters. Metrics are read from the device only at
`log_every` and at checkpoints, never inside the step.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from saeft_jax import parallel, stopping, storage
from saeft_jax.errors import UsageError
from saeft_jax.checkpoints import Checkpoints
from saeft_jax.observe import JsonLines, progress


class TrainingDiverged(UsageError):
    """A non-finite loss or gradient; the newest checkpoint is the last good state."""


def _stop_agreed(at_sync_point: bool) -> bool:
    """Whether to stop now on a stop request (`saeft_jax.stopping`). One process decides alone at
    every step; several agree at sync points (every `log_every` steps), where each learns whether
    any was signalled: SLURM signals its tasks at different steps, and a process that saved while
    another stepped on would wait for it in two different collectives until the job's end."""
    if jax.process_count() == 1:
        return stopping.requested() is not None
    return at_sync_point and bool(multihost_utils.process_allgather(np.int32(stopping.requested() is not None)).any())


def train_loop(step: Callable, state: dict[str, Any], frozen: dict[str, Any], batches: Iterator, *, mesh,
               workdir: str | os.PathLike, total_steps: int, log_every: int = 10, checkpoint_every: int = 500,
               keep_checkpoints: int = 2, show_progress: bool = True, description: str = "finetune",
               state_sharding: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Runs `step` until `total_steps`, resuming from `workdir/checkpoints` when it holds one.

    `batches` yields dicts of arrays (`{"images", "labels"[, "teacher"]}`: this process's share
    of each global batch, as the step takes it) and has `get_state()`/`set_state()` (a grain iterator).
    `state_sharding` is the one the step was built with (default replicated); `description` names
    the progress. Returns the final state and a summary
    {"steps", "final_loss", "final_ce", "preempted"}; process 0 writes the metrics to `workdir/metrics.jsonl`.
    """
    workdir = storage.path(workdir)
    replicated = parallel.replicated(mesh)
    state = jax.device_put(state, state_sharding or replicated)  # global arrays, also across hosts
    frozen = jax.device_put(frozen, replicated)
    checkpoints = Checkpoints(workdir / "checkpoints", max_to_keep=keep_checkpoints)
    log = JsonLines(workdir / "metrics.jsonl" if jax.process_index() == 0 else None,  # one writer per file
                    curves_step="step")
    done, latest = 0, checkpoints.restore_latest(state)
    if latest is not None:
        done, state, meta = latest
        batches.set_state(meta["data"])
    log.keep_only(lambda record: record["step"] <= done)  # also lines of an attempt stopped before any checkpoint
    sharding = parallel.batch_sharding(mesh)
    bar = progress(total_steps, description, enabled=show_progress, initial=done)
    last, clock, clock_step = {}, time.perf_counter(), done
    with stopping.installed(), stopping.longer_grace():  # signals only ask; the loop saves, then stops
        try:
            while done < total_steps:
                batch = next(batches)
                state, metrics = step(state, frozen, {name: _global(x, sharding) for name, x in batch.items()})
                done += 1
                bar.update(1)
                if done % log_every == 0 or done == total_steps:
                    last = _log(log, bar, state, metrics, done, total_steps, len(batch["labels"]), clock, clock_step)
                    clock, clock_step = time.perf_counter(), done
                preempted = _stop_agreed(done % log_every == 0) or checkpoints.reached_preemption(done)
                if done % checkpoint_every == 0 or done == total_steps or preempted:
                    _raise_if_diverged(state, total_steps)
                    checkpoints.save(done, state, {"step": done, "data": batches.get_state()})
                    log.flush()
                    if preempted:
                        break
        finally:
            bar.close()
            checkpoints.close()
            log.close()
    return state, {"steps": done, "final_loss": last.get("loss"), "final_ce": last.get("ce"),
                   "preempted": done < total_steps}


def _global(local: np.ndarray, sharding) -> jax.Array:
    """This process's rows as its part of the global batch array (also right on one process)."""
    return jax.make_array_from_process_local_data(sharding, np.asarray(local))


def _raise_if_diverged(state: dict[str, Any], total_steps: int) -> None:
    bad = int(jax.device_get(state["bad_step"]))
    if bad >= 0:
        raise TrainingDiverged(f"non-finite loss or gradient at step {bad + 1} of {total_steps}; stopped without "
                               f"saving, so the newest checkpoint is the last good state. Lower the learning "
                               f"rate or reg_lambda, or check the inputs of that step.")


def _log(log: JsonLines, bar, state, metrics, done: int, total: int, batch: int, clock: float,
         clock_step: int) -> dict[str, float]:
    _raise_if_diverged(state, total)
    record = {name: float(value) for name, value in jax.device_get(metrics).items()}
    record["images_per_s"] = batch * jax.process_count() * (done - clock_step) / (time.perf_counter() - clock)
    log.write({"step": done, **record})
    bar.set_postfix(loss=f"{record['loss']:.4f}", ce=f"{record['ce']:.4f}")
    return record
