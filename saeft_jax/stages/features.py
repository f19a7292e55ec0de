"""Stage features: the frozen zero-shot encoder's embeddings of every training image
(evaluation preprocessing) and their labels, for the SAE, the linear probe and the teacher cache.

The pass goes chunk by chunk (`features.chunk_steps` global batches); each process writes its
own rows of a chunk (`chunks/s<first step>-n<steps>-p<process>.npz`: source indices, embeddings
and labels), so a stopped pass resumes at the first missing chunk, also after `chunk_steps`
changed. Process 0 then assembles `train.npy`, (N, d) float32 in source order: row i is example
i's embedding, and `labels.npy`, (N,) int32; every row must be covered by some chunk.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from saeft_jax import parallel, stopping, storage
from saeft_jax.data import pipeline
from saeft_jax.data.preprocess import eval_transform
from saeft_jax.data.registry import DatasetSpec
from saeft_jax.evaluation.wise import as_numpy
from saeft_jax.finite import check_artifact
from saeft_jax.observe import progress
from saeft_jax.stages import completion
from saeft_jax.stages.context import Run

STAGE = "features"


def run_stage(run: Run) -> None:
    """Computes the chunks not yet written, assembles train.npy and labels.npy, marks the stage."""
    source = run.source(run.train_spec)
    cfg = run.config.features
    share = pipeline.Share.of_this_process(cfg.batch_size)
    steps = pipeline.eval_steps(source, cfg.batch_size)
    chunks = run.dir(STAGE, "chunks")
    encode, batch_sharding = _zeroshot_encoder(run)
    bar = progress(steps, "features", enabled=run.config.show_progress, unit="batch")
    for first in range(0, steps, cfg.chunk_steps):
        count = min(cfg.chunk_steps, steps - first)
        path = chunks / f"s{first:07d}-n{count:05d}-p{jax.process_index():03d}.npz"
        if not path.exists():
            rows = []
            for b in pipeline.eval_batches(
                source,
                share=share,
                transform=eval_transform(run.model.image_spec),
                num_workers=run.config.num_workers,
                first_step=first,
                num_steps=cfg.chunk_steps,
            ):
                stopping.check(f"in stage features at step {first + len(rows)} of {steps}")
                rows.append(_local_rows(encode(jax.make_array_from_process_local_data(batch_sharding, b["image"])), b))
            storage.save_npz(
                path,
                index=np.concatenate([r[0] for r in rows]),
                embedding=np.concatenate([r[1] for r in rows]),
                label=np.concatenate([r[2] for r in rows]),
            )
        bar.update(count)
    bar.close()
    run.barrier("features chunks")
    if run.is_writer:
        _assemble(run, len(source))
    run.mark_done({"n": len(source), "d": run.model.embed_dim}, STAGE, files=FILES)


FILES = ("train.npy", "labels.npy")


def _zeroshot_encoder(run: Run) -> tuple[Callable[[jax.Array], jax.Array], jax.sharding.Sharding]:
    """(encode(global images) -> embeddings, the batch sharding) of the frozen zero-shot encoder."""
    encoder, batch_sharding = run.model.image_encoder(), parallel.batch_sharding(run.mesh)
    frozen = jax.device_put(run.model.image_params(), parallel.replicated(run.mesh))
    apply = jax.jit(
        lambda p, x: encoder.apply({"params": p}, x), in_shardings=(parallel.replicated(run.mesh), batch_sharding)
    )
    return (lambda images: apply(frozen, images)), batch_sharding


def embed(run: Run, spec: DatasetSpec) -> dict[str, np.ndarray]:
    """{"embedding", "label", "group"} of every example of dataset `spec` (source order, on every
    process): the zero-shot encoder's pass in memory, for a split too small to need chunks (the
    validation split the probe's l2 is chosen on)."""
    source = run.source(spec)
    encode, sharding = _zeroshot_encoder(run)
    share = pipeline.Share.of_this_process(run.config.features.batch_size)
    keep: dict[str, list[np.ndarray]] = {key: [] for key in ("embedding", "label", "group", "mask")}
    for batch in pipeline.eval_batches(
        source,
        share=share,
        transform=eval_transform(run.model.image_spec, spec.border_crop),
        num_workers=run.config.num_workers,
    ):
        keep["embedding"].append(as_numpy(encode(jax.make_array_from_process_local_data(sharding, batch["image"]))))
        for key in ("label", "group", "mask"):
            keep[key].append(as_numpy(jax.make_array_from_process_local_data(sharding, batch[key])))
    mask = np.concatenate(keep.pop("mask"))
    return {key: np.concatenate(values)[mask] for key, values in keep.items()}


def _local_rows(embeddings: jax.Array, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """This process's rows of a batch: source indices, embeddings (its addressable shards, in
    order) and labels, unpadded."""
    shards = sorted(embeddings.addressable_shards, key=lambda s: s.index[0].start or 0)
    local = np.concatenate([np.asarray(s.data) for s in shards])
    keep = batch["mask"]
    return batch["index"][keep], local[keep], batch["label"][keep].astype(np.int32)


def _assemble(run: Run, n: int) -> None:
    """Builds train.npy on a local disk (for a URL workdir, where `features_path` will look for its
    copy) and moves or uploads it into place, then labels.npy."""
    out = run.dir(STAGE) / "train.npy"
    local = storage.cache_path(out) if storage.is_remote(out) else Path(out)
    local.parent.mkdir(parents=True, exist_ok=True)
    partial = local.with_name("train.partial.npy")
    chunks = run.workdir / STAGE / "chunks"
    features, covered, labels = None, np.zeros(n, bool), np.zeros(n, np.int32)
    for path in sorted(chunks.glob("s*-n*-p*.npz")):
        chunk = _load_chunk(run, path)
        if features is None:
            features = np.lib.format.open_memmap(partial, "w+", np.float32, (n, chunk["embedding"].shape[1]))
        features[chunk["index"]] = chunk["embedding"]  # chunks that overlap hold the same rows
        labels[chunk["index"]] = chunk["label"]
        covered[chunk["index"]] = True
    if not covered.all():
        chunks.rmtree()
        raise completion.ArtifactDamaged(
            f"the feature chunks in {chunks} cover {covered.sum()} of the {n} training "
            f"examples (chunks of another run?); they are removed, so {run.command} "
            f"computes the pass again."
        )
    features.flush()
    del features
    os.replace(partial, local)
    if storage.is_remote(out):
        storage.upload(local, out)
    storage.save_npy(run.dir(STAGE) / "labels.npy", labels)


def _load_chunk(run: Run, path) -> dict[str, np.ndarray]:
    """A chunk of the pass; a damaged one (its zip checksums fail) is removed to be computed again."""
    try:
        return storage.load_npz(path)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        path.unlink(missing_ok=True)
        raise completion.ArtifactDamaged(
            f"{path} is damaged ({error}); it is removed, so {run.command} computes that chunk again."
        ) from error


def features_path(run: Run) -> str:
    """The (N, d) training embeddings' `.npy` file on a local disk (for a URL workdir, a copy),
    checked against its recorded hash, against the model's width and the training set's size, and finite."""
    path = run.read((STAGE,), "train.npy")
    expected = (len(run.source(run.train_spec)), run.model.embed_dim)
    try:
        shape = np.load(path, mmap_mode="r").shape
    except ValueError:  # not an .npy file at all
        shape = None
    if shape != expected:
        completion.withdraw(run.workdir, (STAGE,), "train.npy")
        raise completion.ArtifactDamaged(
            f"{run.workdir / STAGE / 'train.npy'} holds embeddings of shape {shape}, but this run needs {expected} "
            f"({run.config.train_dataset} examples x the model's embedding width). It is removed and its mark "
            f"withdrawn, so {run.command} computes it again."
        )
    check_artifact(
        np.load(path, mmap_mode="r"),
        run.workdir,
        (STAGE,),
        "train.npy",
        f"they are {run.model_path}'s image embeddings, so check that checkpoint's weights if it comes back",
        run.command,
    )
    return str(path)


def load_features(run: Run) -> np.ndarray:
    """The (N, d) training embeddings, memory-mapped (checked as `features_path` says)."""
    return np.load(features_path(run), mmap_mode="r")
