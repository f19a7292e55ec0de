"""SAE-FT on ImageNet with CLIP ViT-L/14 (d = 768: SAE dictionary 3072, k 24).

    python -m saeft_jax.main --config=configs/vitl14.py --workdir=gs://my-bucket/saeft/vitl14

Data: as configs/vitb16.py. Sized for a TPU v4-64 or 16 x 80 GB GPUs: global batch 512, bf16
compute, FSDP-sharded parameters and optimizer state, rematerialised blocks. The numbers and their
sources are configs/vitb16.py's (WiSE-FT's lr 3e-5 at batch 512; bfloat16 compute is this
project's choice, `--config.dtype=float32` gives the reference's float32); the SAE keeps k = d/32.

Expected: docs/method.md records reference numbers for ViT-B/16 only (see configs/vitb16.py); L/14
should exceed them at every point. Not yet run by this project.
"""

from saeft_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.model = "openai/clip-vit-large-patch14"
    c.dtype = "bfloat16"
    c.remat = True
    c.saes.main.update(dict_size=3072, k=24)
    c.features.batch_size = 512
    c.finetune.update(batch_size=512, epochs=10, lr=3e-5, fsdp=True, val_fraction=0.01)  # WiSE-FT's protocol
    if arg:
        raise ValueError(f"configs/vitl14.py takes no argument; got {arg!r}")
    return c
