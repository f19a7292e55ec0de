"""SAE-FT on ImageNet with a SigLIP ViT-B/16 (or a fixed-resolution SigLIP 2): the ImageNet protocol
of configs/vitb16.py on SigLIP's family.

    python -m saeft_jax.main --config=configs/siglip_vitb16.py --workdir=gs://my-bucket/saeft/siglip_b16
    python -m saeft_jax.main --config=configs/siglip_vitb16.py:siglip2 --workdir=gs://my-bucket/saeft/siglip2_b16

Model: google/siglip-base-patch16-224 (768-wide pooled embedding from the attention-pooling head,
context 64, SigLIP's sentencepiece tokenizer, images squashed to 224 with mean and std 0.5), or with
`:siglip2` google/siglip2-base-patch16-224 (the same layout, Gemma's tokenizer). NaFlex SigLIP 2
checkpoints are not covered. The SAE reads the pooled image embedding: dictionary 4 x 768, k 16.

Data: as configs/vitb16.py (imagenet2012 and its shifts in TFDS ArrayRecord, ObjectNet prepared).

Hardware: sized like configs/vitb16.py (a TPU v4-32 / v5e-64 slice or 8 x 80 GB GPUs): global batch
512, fp32 parameters with bf16 compute, 10 epochs, 1% of ImageNet-train held out for validation.

Expected: not run at ImageNet scale by this project (no accelerator time so far), and no published
SAE-FT or WiSE-FT numbers exist for SigLIP to compare with. SigLIP's model card reports zero-shot
ImageNet 76.2 for siglip-base-patch16-224 (its own prompts; the zero-shot row here uses the
CLIP templates of `imagenet`). The parity of the towers with transformers' SiglipModel and the
whole pipeline on the demo's SigLIP (`configs/demo.py:siglip`) are what is tested here.
"""

from saeft_jax.config import base_config, method

MODELS = {None: "google/siglip-base-patch16-224", "siglip2": "google/siglip2-base-patch16-224"}


def get_config(arg: str | None = None):
    if arg not in MODELS:
        raise ValueError(f"configs/siglip_vitb16.py takes no argument or 'siglip2'; got {arg!r}")
    c = base_config()
    c.model = MODELS[arg]
    c.dtype = "bfloat16"
    c.train_dataset = "imagenet_train"
    c.eval_suite = "imagenet"
    c.finetune.methods.flyp = method(recipe="flyp")  # FLYP with SigLIP's sigmoid loss (docs/method.md)
    c.finetune.update(batch_size=512, epochs=10, lr=1e-5, val_fraction=0.01)
    c.saes.main.update(dict_size=3072, k=16)
    return c
