"""Completion marks that carry their artifact's integrity: what a stage wrote (each file's size
and SHA-256), what it was made from, and the checks that tell a complete artifact from a missing,
damaged or stale one.

An artifact (`parts`, e.g. ("sae",) or ("finetune", "none")) is complete when its `done.json`
exists, every file it lists exists with its recorded size (a cheap check, made before a stage
is skipped), and every artifact it was made from still holds the files it was made from. A
stage that reads a file verifies its hash first (`verified`); a mismatch withdraws the producer's
mark and deletes the damaged file, so that the same command rebuilds it, and raises
`ArtifactDamaged` saying so.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from etils import epath

from saeft_jax import storage
from saeft_jax.errors import UsageError

DONE, WITHDRAWN = "done.json", "done.withdrawn.json"


class ArtifactDamaged(UsageError):
    """A file differs from what its stage recorded; the message names it and how it is rebuilt."""


def key(parts: tuple[str, ...]) -> str:
    return "/".join(parts)


def digests(directory: epath.Path, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """{name: {"bytes", "sha256"}} of the files `names` under `directory` (a directory name
    stands for every file below it)."""
    out = {}
    for name in names:
        for file in storage.files_under(directory / name):
            out[str(file.relative_to(directory))] = storage.digest(file)
    return out


def read_record(workdir: epath.Path, parts: tuple[str, ...]) -> dict[str, Any] | None:
    """The completion record of artifact `parts`, or None when it has none or a damaged one (not
    JSON, not UTF-8, not an object): then the stage runs again."""
    path = workdir.joinpath(*parts, DONE)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return None
    return record if isinstance(record, dict) else None


@dataclasses.dataclass(frozen=True)
class Problem:
    """Why a marked artifact no longer counts as complete, and what a rerun must discard: the
    `files` that are missing or resized, or everything (`start_over`) when an artifact it was made
    from has changed, so that nothing made from the old one is resumed."""

    reason: str
    files: tuple[str, ...] = ()
    start_over: bool = False


def status(workdir: epath.Path, parts: tuple[str, ...]) -> tuple[dict[str, Any] | None, Problem | None]:
    """(record, None) when artifact `parts` is complete, else (None, its problem; None if never made)."""
    record = read_record(workdir, parts)
    if record is None:
        return None, None
    directory = workdir.joinpath(*parts)
    damaged, reasons = [], []
    for name, expected in record.get("files", {}).items():
        size = storage.size_of(directory / name)
        if size != expected["bytes"]:
            damaged.append(name)
            reasons.append(
                f"{directory / name} is missing"
                if size is None
                else f"{directory / name} has {size} bytes, {expected['bytes']} when it was written"
            )
    if damaged:
        return None, Problem(
            "; ".join(reasons[:3]) + (f" (and {len(reasons) - 3} more)" if len(reasons) > 3 else ""),
            files=tuple(damaged),
        )
    for source, files in record.get("inputs", {}).items():
        current = read_record(workdir, tuple(source.split("/")))
        if current is None or _hashes(current) != files:
            return None, Problem(
                f"it was made from a version of {workdir / source} that has since changed", start_over=True
            )
    return record, None


def discard(workdir: epath.Path, parts: tuple[str, ...], problem: Problem) -> None:
    """Makes artifact `parts` ready to be made again: its mark moved aside, and the damaged files
    (or, to start over, everything it holds) removed."""
    directory = workdir.joinpath(*parts)
    withdraw_mark(directory)
    if problem.start_over:
        for item in list(directory.iterdir()):
            if item.name != WITHDRAWN:
                item.rmtree() if item.is_dir() else item.unlink()
        return
    for name in problem.files:
        (directory / name).unlink(missing_ok=True)


def _hashes(record: dict[str, Any]) -> dict[str, str]:
    return {name: entry["sha256"] for name, entry in record.get("files", {}).items()}


def input_hashes(workdir: epath.Path, inputs: tuple[tuple[str, ...], ...]) -> dict[str, dict[str, str]]:
    """What to record of the artifacts a new one was made from (those that exist): their files' hashes."""
    records = {key(parts): read_record(workdir, parts) for parts in inputs}
    return {name: _hashes(record) for name, record in records.items() if record is not None}


def verified(workdir: epath.Path, parts: tuple[str, ...], name: str, command: str) -> Path:
    """A local path holding `name` of artifact `parts` (a copy for a URL workdir), after checking
    every file of it against the hashes its stage recorded."""
    directory = workdir.joinpath(*parts)
    local = storage.local_copy(directory / name)
    record = read_record(workdir, parts) or {}
    recorded = {n: e for n, e in record.get("files", {}).items() if n == name or n.startswith(f"{name}/")}
    for file, expected in recorded.items():
        copy = local / Path(file).relative_to(name) if file != name else local
        found = storage.digest(epath.Path(copy)) if copy.exists() else None
        if found != expected:
            what = "is missing" if found is None else "does not match the size and SHA-256 recorded when it was written"
            others = _remove_damaged(directory, record)
            withdraw(workdir, parts, name)
            also = f" (so were {', '.join(others)}, also removed)" if others else ""
            raise ArtifactDamaged(
                f"{directory / file} {what} (damaged, truncated or changed by hand){also}. The "
                f"completion mark of {key(parts)} is withdrawn and the file removed, so {command} "
                f"rebuilds it, and what was made from it."
            )
    return local


def _remove_damaged(directory: epath.Path, record: dict[str, Any]) -> list[str]:
    """Checks every file `record` lists and removes those that differ from it: a rerun then remakes
    them instead of keeping one it has not read yet."""
    damaged = []
    for name, expected in record.get("files", {}).items():
        path = directory / name
        if path.exists() and storage.digest(path) != expected:
            path.unlink()
            damaged.append(name)
    return damaged


def withdraw(workdir: epath.Path, parts: tuple[str, ...], name: str) -> None:
    """Removes `name` of artifact `parts` and moves its mark aside, so its stage runs again."""
    directory = workdir.joinpath(*parts)
    for file in storage.files_under(directory / name) if (directory / name).exists() else []:
        file.unlink(missing_ok=True)
    withdraw_mark(directory)


def withdraw_mark(directory: epath.Path) -> None:
    """Moves the mark in `directory` aside (kept as `done.withdrawn.json`, for a look)."""
    mark = directory / DONE
    if mark.exists():
        storage.write_atomic(directory / WITHDRAWN, mark.read_bytes())
        mark.unlink(missing_ok=True)
