"""SAE-FT on ImageNet with CLIP ViT-B/32: the cheaper ImageNet run (same protocol as vitb16.py).

    python -m saeft_jax.main --config=configs/vitb32.py --workdir=gs://my-bucket/saeft/vitb32

Data: as configs/vitb16.py (ImageNet and its five shifts; see that docstring for preparation).
Sized for a TPU v4-8 or 4-8 GPUs: global batch 512, bf16 compute, 10 epochs. The numbers and their
sources are configs/vitb16.py's (WiSE-FT's lr 3e-5 at batch 512; bfloat16 compute is this
project's choice, `--config.dtype=float32` gives the reference's float32).

Expected: docs/method.md records reference numbers for ViT-B/16 only (see configs/vitb16.py); for
B/32 expect lower accuracy than B/16 at both ends. Not yet run by this project.
"""

from saeft_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.model = "openai/clip-vit-base-patch32"
    c.dtype = "bfloat16"
    c.finetune.update(batch_size=512, epochs=10, lr=3e-5, val_fraction=0.01)  # WiSE-FT's protocol
    if arg:
        raise ValueError(f"configs/vitb32.py takes no argument; got {arg!r}")
    return c
