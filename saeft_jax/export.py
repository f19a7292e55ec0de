"""`python -m saeft_jax.export WORKDIR --method NAME --format open_clip|hf --out DIR`: a run's
fine-tuned method as a checkpoint other code opens: transformers' layout (`CLIPModel` /
`SiglipModel.from_pretrained`) or open_clip's (`open_clip.create_model("local-dir:DIR")`; CLIP
family only), with the method's classification head (`head.safetensors`) beside it.

The method's files are checked against the hashes its stage recorded first; `--out` must not
exist yet (it appears complete or not at all). Exit code 2 with one paragraph for a mistake.
"""

from __future__ import annotations

import argparse
import shutil
import sys

from etils import epath

from saeft_jax import models, storage
from saeft_jax.errors import UsageError, command_exit_code
from saeft_jax.stages import completion

STAGE = "finetune"


def export(workdir: str, method: str, out: str, format: str = "open_clip") -> epath.Path:
    """Writes method `method` of the run in `workdir` to `out` in `format` ("hf" or "open_clip")."""
    if format not in models.family.FORMATS:
        raise UsageError(f"--format {format!r} is not one of {', '.join(models.family.FORMATS)}.")
    root = storage.path(workdir)
    if not root.is_dir():
        raise UsageError(f"{workdir} is not a directory; name the workdir of a run (its --workdir).")
    if completion.status(root, (STAGE, method))[0] is None:
        made = sorted(p.name for p in (root / STAGE).iterdir()) if (root / STAGE).is_dir() else []
        raise UsageError(
            f"{workdir} has no finished fine-tuned method {method!r} (finished or started: "
            f"{', '.join(made) or 'none'}); run its pipeline to the end of the finetune stage first."
        )
    target = storage.path(out)
    inside = (
        not storage.is_remote(target)
        and not storage.is_remote(root)
        and epath.Path(target).resolve().is_relative_to(epath.Path(root).resolve())
    )
    if target.exists() or inside:
        raise UsageError(
            f"--out {out} {'already exists' if target.exists() else 'lies inside the run'}; name a new "
            f"directory outside {workdir} (nothing was written)."
        )
    command = f"python -m saeft_jax.export {workdir} --method {method}"
    final = completion.verified(root, (STAGE, method), "final", command)
    head = completion.verified(root, (STAGE, method), "head.safetensors", command)
    model = models.load(final)

    def with_head(staging):
        model.family.save(model, model.params, staging, format)
        shutil.copyfile(head, staging / "head.safetensors")

    return models.weights.publish_dir(out, with_head)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m saeft_jax.export", description=__doc__.splitlines()[0])
    parser.add_argument("workdir", help="a run's workdir (local or gs://)")
    parser.add_argument("--method", required=True, help="the fine-tuned method's name (config.finetune.methods)")
    parser.add_argument("--format", default="open_clip", help="open_clip (default) or hf")
    parser.add_argument("--out", required=True, help="the new checkpoint directory")
    args = parser.parse_args(argv)
    return command_exit_code(lambda: export(args.workdir, args.method, args.out, args.format))


if __name__ == "__main__":
    sys.exit(main())
