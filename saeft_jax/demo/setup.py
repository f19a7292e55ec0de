"""Readies the demo for a run: writes its datasets, registers them, and returns its model's
checkpoint (CLIP or SigLIP, pretrained now or taken from the cache)."""

from __future__ import annotations

import jax
import ml_collections

from saeft_jax import distributed
from saeft_jax.data.locations import resolve_data_dir
from saeft_jax.demo import digits, pretrain


def prepare(config: ml_collections.ConfigDict) -> str:
    """The demo checkpoint's directory; process 0 builds what is missing while the others wait."""
    data = digits.DigitsSetup(finetune_style=config.demo.finetune_style)
    recipe = pretrain.PretrainSetup(
        family=config.demo.family,
        steps=config.demo.pretrain_steps,
        batch_size=config.demo.pretrain_batch_size,
        seed=config.seed,
    )
    if jax.process_index() == 0:
        digits.write_dataset(resolve_data_dir(config.data_dir), data)
        pretrain.demo_model(config.demo.cache_dir, data, recipe, show_progress=config.show_progress)
    distributed.barrier("demo prepared")
    digits.register(data)
    return str(pretrain.checkpoint_dir(config.demo.cache_dir, data, recipe))
