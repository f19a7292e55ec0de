"""SAE-FT on one transfer set with CLIP ViT-B/16: fine-tune on its training split, test on its test split (and shifts).

    python -m saeft_jax.main --config=configs/transfer_vitb16.py:dataset=NAME --workdir=gs://my-bucket/saeft/NAME

NAME is one of cifar10, cifar100, dtd, stl10, fgvc_aircraft, oxford_iiit_pet, oxford_flowers102,
cars196, caltech101, dsprites_shape, dsprites_scale, dsprites_orientation, dsprites_x, dsprites_y.
The run trains `NAME_train`, evaluates suite `transfer_NAME`: the test split `NAME` in
distribution; as shifts, for cifar10 CIFAR-10.1 (v6), CIFAR-10.2 and CIFAR-10-C, for cifar100
CIFAR-100-C, for the others none (the report then has no OOD average and no WiSE-FT ID-OOD plot).
The WiSE-FT alpha is selected on the dataset's own validation split where it has one (dtd,
oxford_flowers102, fgvc_aircraft: `NAME_val`; dSprites: its 80-90% slice), else on 10% of the
training split held out (`finetune.val_fraction`). CIFAR-C reads `config.corruptions` (default: the
15 benchmark corruptions at severity 5; e.g. `--config.corruptions.severity=3`). Plain fine-tuning
(`none`) against SAE-FT (`sae_add_remove`, lambda 70), as configs/vitb16.py.

Data (in $TFDS_DATA_DIR or --config.data_dir; docs/datasets.md has every command):
- TFDS, `tfds build NAME --file_format=array_record`: cifar10, cifar100, dtd, stl10, oxford_iiit_pet,
  oxford_flowers102, cars196, caltech101, dsprites; for cifar10 also `cifar10_1/v6`.
- prepared, `python -m saeft_jax.data.prepare KIND --source=DIR`: fgvc_aircraft (the unpacked
  fgvc-aircraft-2013b folder), for cifar10 also cifar10_2 (cifar102_test.npz of
  github.com/modestyachts/cifar-10.2) and cifar10_c (the unpacked CIFAR-10-C of Zenodo record
  2535967), for cifar100 also cifar100_c (CIFAR-100-C, Zenodo record 3555552).

Sized for one GPU of 40 GB or more, or several (the batch divides over 1, 2, 4 or 8 devices; the
memory is estimated, not measured): batch 128, bf16 compute, lr 1e-5, 10 epochs (79 steps for
Flowers-102, 3,515 for CIFAR; dSprites: 1 epoch of its 589,824 training images, 4,608 steps, whose
features stage writes 589,824 x 512 floats, 1.2 GB), warmup 500 steps or a tenth of the run when
that is shorter; an SAE batch of 256 below 10,000 training images. The step counts follow from the
sizes in TRAIN_EXAMPLES. These are this project's choices: the paper does not state its transfer setting
(bfloat16 compute included; `--config.dtype=float32` gives the reference's float32).

Expected: the SAE-FT paper lists accuracies DTD 79.2, STL-10 98.7 and CIFAR-100 71.2, in a setting it
does not state (so not necessarily this one's). Not yet run by this project.
"""

from saeft_jax.config import base_config
from saeft_jax.data.labels import DSPRITES_TASKS
from saeft_jax.data.registry import TRANSFER_SETS, validation_of
from saeft_jax.errors import ConfigError

VAL_FRACTION = 0.1  # held out of the training split where a dataset has no validation split of its own
# Published training-split sizes (dSprites: its 80% slice), from which the run's length follows.
TRAIN_EXAMPLES = {
    "cifar10": 50_000,
    "cifar100": 50_000,
    "dtd": 1_880,
    "stl10": 5_000,
    "fgvc_aircraft": 3_334,
    "oxford_iiit_pet": 3_680,
    "oxford_flowers102": 1_020,
    "cars196": 8_144,
    "caltech101": 3_060,
    **{f"dsprites_{task}": 589_824 for task in DSPRITES_TASKS},
}
BATCH = 128


def get_config(arg: str | None = None):
    """`arg`: "dataset=NAME", NAME one of `TRANSFER_SETS`."""
    name = _dataset(arg)
    c = base_config()
    c.model = "openai/clip-vit-base-patch16"
    c.dtype = "bfloat16"
    c.train_dataset = f"{name}_train"
    c.eval_suite = f"transfer_{name}"
    validation = validation_of(name)
    examples = TRAIN_EXAMPLES[name]
    if validation:
        c.finetune.val_dataset = validation
    else:
        c.finetune.val_fraction = VAL_FRACTION
        examples -= int(round(examples * VAL_FRACTION))  # as saeft_jax.data.sources.held_out counts them
    epochs = 1 if name.startswith("dsprites") else 10
    steps = max(1, epochs * examples // BATCH)
    c.finetune.update(batch_size=BATCH, epochs=epochs, lr=1e-5, warmup_steps=min(500, steps // 10))
    if examples < 10_000:
        c.saes.main.batch_size = 256
    return c


def _dataset(arg: str | None) -> str:
    """NAME of "dataset=NAME", refused with the names when it is missing or unknown."""
    key, _, name = (arg or "").partition("=")
    if key != "dataset" or name not in TRANSFER_SETS:
        raise ConfigError(
            f"configs/transfer_vitb16.py takes dataset=NAME (e.g. "
            f"--config=configs/transfer_vitb16.py:dataset=dtd), got {arg!r}; NAME is one of "
            f"{', '.join(TRANSFER_SETS)}."
        )
    return name
