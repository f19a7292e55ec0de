"""The demo's parts: its tokenizer, the styled digits and the datasets it writes."""

from __future__ import annotations

import os

import numpy as np

from saeft_jax.data import records
from saeft_jax.data.locations import prepared_dir
from saeft_jax.demo import digits
from saeft_jax.demo.tokenizer import build_tokenizer


def test_tokenizer_learns_whole_words_and_loads_as_clip(tmp_path):
    from saeft_jax import hf

    build_tokenizer(["a photo of the digit seven.", "a noisy image of the number three."] * 5, tmp_path)
    tokenizer = hf.load_tokenizer(tmp_path)
    ids = tokenizer("A photo of the digit seven.")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == [
        "<|startoftext|>",
        "a</w>",
        "photo</w>",
        "of</w>",
        "the</w>",
        "digit</w>",
        "seven</w>",
        ".</w>",
        "<|endoftext|>",
    ]
    assert tokenizer.eos_token_id == len(tokenizer) - 1 and tokenizer.bos_token_id == len(tokenizer) - 2
    unseen = tokenizer("zebra")["input_ids"]  # unseen words fall back to byte-level pieces
    assert tokenizer.decode(unseen, skip_special_tokens=True).strip() == "zebra"


def test_styles_differ_and_rendering_is_seeded():
    image = digits._digits()[0][3]
    rendered = {s: digits.render(image, s, 24, np.random.default_rng(0)) for s in digits.STYLES}
    assert all(r.shape == (24, 24, 3) and r.dtype == np.uint8 for r in rendered.values())
    assert rendered["inverted"].mean() > rendered["clean"].mean()  # white background
    assert not np.array_equal(rendered["colored"][..., 0], rendered["colored"][..., 1])  # in colour
    np.testing.assert_array_equal(rendered["noisy"], digits.render(image, "noisy", 24, np.random.default_rng(0)))
    gray = [s for s in digits.STYLES if s != "colored"]
    assert all(np.array_equal(rendered[s][..., 0], rendered[s][..., 1]) for s in gray)


def test_splits_are_disjoint_and_the_finetuning_style_is_rare_in_pretraining():
    setup = digits.DigitsSetup()
    splits = digits.split_indices(1797, setup)
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not set(splits[a]) & set(splits[b]), (a, b)  # no image in two splits
    assert sum(len(v) for v in splits.values()) == 1797 and len(splits["val"]) > 40
    _, labels, styles = digits.pretraining_set(setup)
    share = np.mean(styles == digits.STYLES.index(setup.finetune_style))
    assert 0.015 < share < 0.03 and set(labels) == set(range(10))


def test_written_dataset_has_every_split_and_is_written_once(tmp_path):
    setup = digits.DigitsSetup()
    directory = digits.write_dataset(tmp_path, setup)
    info = records.read_info(directory)
    assert directory == prepared_dir(tmp_path, setup.dataset)
    tests = len(digits.split_indices(1797, setup)["test"])
    assert info["splits"] == {
        "train": 2 * len(digits.split_indices(1797, setup)["finetune"]),
        "val": len(digits.split_indices(1797, setup)["val"]),
        **{f"test_{s}": tests for s in digits.STYLES},
    }
    stamp = os.stat(directory / "info.json").st_mtime_ns
    digits.write_dataset(tmp_path, setup)
    assert os.stat(directory / "info.json").st_mtime_ns == stamp
    assert digits.DigitsSetup(finetune_style="noisy").dataset != setup.dataset
