"""The embedded demo: the whole SAE-FT pipeline on handwritten digits, with no download.

    python -m saeft_jax.main --config=configs/demo.py --workdir=/tmp/saeft_demo
    python -m saeft_jax.main --config=configs/demo.py:smoke --workdir=/tmp/saeft_smoke   # shortened, for tests

Data: scikit-learn's bundled digits rendered at 24x24 in six styles (clean, inverted, rotated,
noisy, thick, colored); written once to `data_dir` (default ~/tensorflow_datasets/saeft/).
Fine-tuning and the in-distribution test use the colored style, which is rare (2%) in
pretraining; the five other styles are the distribution shifts. Model: a small CLIP (ViT of
width 96, 3 layers, patch 6; text transformer of width 64) with its own BPE tokenizer,
pretrained contrastively here on captioned digits of every style (a split disjoint from
fine-tuning and test), saved in Hugging Face format and cached in ~/.cache/saeft_jax, so a second
run skips pretraining. Then the standard stages, plain fine-tuning (`none`) against SAE-FT
(`sae_add_remove`), and the report.

Hardware: sized for 2 CPU cores: 4.5 minutes for the first run (2-2.5 of them pretraining), 2
once the CLIP is cached; the smoke variant about 1.5. Expected results (measured, top-1 %, ID
colored / average of the five shifts): zero-shot 25.3 / 70.3; plain fine-tuning 46.1 / 54.5;
SAE-FT 48.9 / 60.2; the SAE-FT WiSE-FT curve above the plain one (README, "What the demo shows").
"""

import ml_collections

from saeft_jax.config import base_config, method


def get_config(arg: str | None = None):
    c = base_config()
    c.demo.enabled = True
    c.model = "demo"  # stands for the demo's own checkpoint, built or taken from demo.cache_dir
    c.train_dataset = "digits_train"
    c.eval_suite = "digits"
    c.features.batch_size = 64
    c.features.chunk_steps = 8
    c.sae.update(dict_size=256, k=8, batch_size=128, epochs=60, auxk=True, renorm_decoder=True)
    c.finetune.methods = ml_collections.ConfigDict({
        "none": method("none"),  # plain fine-tuning
        "sae_add_remove": method("sae_add_remove", reg_lambda=100.0),  # SAE-FT
    })
    c.finetune.update(batch_size=64, steps=400, lr=1e-3, warmup_steps=30, checkpoint_every=100, log_every=20)
    c.evaluate.batch_size = 64
    c.report.concepts = ("colorful", "plain", "inverted", "rotated", "noisy", "bold", "background", "stroke")
    if arg == "smoke":  # the same pipeline, shortened to about two minutes (tests, CI)
        c.demo.pretrain_steps = 200
        c.demo.pretrain_batch_size = 64
        c.sae.epochs = 10
        c.finetune.steps = 60
        c.finetune.warmup_steps = 6
        c.finetune.checkpoint_every = 30
    elif arg:
        raise ValueError(f"configs/demo.py takes no argument or 'smoke'; got {arg!r}")
    return c
