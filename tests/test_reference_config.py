"""configs/reference_vitb16.py against the reference's own command (Fabian-Mor/sae-ft, commit
7b0baf2, README "Quick start") and the defaults of its `src/args.py`, written out here."""

from __future__ import annotations

import importlib.util
import os
import shlex

from conftest import ROOT

from saeft_jax.config import finish

REFERENCE_COMMAND = """python src/training.py --train-dataset=ImageNet --model=ViT-B/16
    --template=openai_imagenet_template --epochs=10 --lr=1e-5 --batch-size=32
    --data-location=/path/to/imagenet --reg_type=sae_mask --reg_lambda=70
    --sae_path=autoencoders/sae_4_32.pt --sae_mult=4 --k=32 --save=models/B16_sae_mask"""
# src/args.py's defaults of the flags the command leaves out (--normalize: False, so raw embeddings)
REFERENCE_DEFAULTS = {
    "wd": 0.1,
    "ls": 0.0,
    "warmup_length": 500,
    "lambda_mask": 10.0,
    "mu": 1.0,
    "normalize": False,
    "representation_dim": 512,
}


def _flags() -> dict[str, str]:
    words = shlex.split(REFERENCE_COMMAND)[2:]
    return {key.lstrip("-").replace("-", "_"): value for key, value in (w.split("=", 1) for w in words)}


def _config():
    spec = importlib.util.spec_from_file_location("reference_vitb16", os.path.join(ROOT, "configs/reference_vitb16.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, finish(module.get_config())


def test_reference_config_is_the_readme_command():
    flags = _flags()
    module, checked = _config()
    c = checked.config
    assert c.model == "openai/clip-vit-base-patch16" and flags["model"] == "ViT-B/16"
    assert c.train_dataset == "imagenet_train" and c.eval_suite == "imagenet" and flags["train_dataset"] == "ImageNet"
    ft = c.finetune
    assert (ft.epochs, ft.lr, ft.batch_size) == (int(flags["epochs"]), float(flags["lr"]), int(flags["batch_size"]))
    assert (ft.weight_decay, ft.label_smoothing, ft.warmup_steps) == (
        REFERENCE_DEFAULTS["wd"],
        REFERENCE_DEFAULTS["ls"],
        REFERENCE_DEFAULTS["warmup_length"],
    )
    assert ft.steps == 0 and ft.clip_norm == 1.0 and ft.accumulate_steps == 1
    assert ft.random_crop and tuple(ft.crop_scale) == (0.9, 1.0)  # clip.load's training transform
    assert ft.val_fraction == 0 and not ft.val_dataset  # the whole training set, as the reference trains
    assert c.dtype == "float32"
    assert (c.saes.main.dict_size, c.saes.main.k) == (
        int(float(flags["sae_mult"]) * REFERENCE_DEFAULTS["representation_dim"]),
        int(flags["k"]),
    )
    assert c.saes.main.kind == "topk" and not c.saes.main.relu and not c.saes.main.auxk

    ran = checked.methods
    assert set(ran) == {"none", "sae_mask"}
    assert ran["none"].regularizer.name == "none" and ran["none"].recipe.name == "finetune"
    sae = ran["sae_mask"]
    assert sae.regularizer.name == flags["reg_type"] and sae.reg_lambda == float(flags["reg_lambda"])
    assert (
        sae.hparams["lambda_add"] == REFERENCE_DEFAULTS["lambda_mask"] and sae.hparams["mu"] == REFERENCE_DEFAULTS["mu"]
    )
    assert sae.reference_raw_inputs is (not REFERENCE_DEFAULTS["normalize"])
    assert "--reg_type=sae_mask --reg_lambda=70" in module.__doc__ and "--sae_mult=4 --k=32" in module.__doc__
