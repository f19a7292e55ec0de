"""A small CLIP-format BPE tokenizer learned from the demo's captions (`vocab.json` +
`merges.txt`, byte-level, `</w>` word ends), which `transformers.CLIPTokenizerFast` loads like
OpenAI's."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def build_tokenizer(
    corpus: Iterable[str], directory: str | Path, vocab_size: int = 1000
) -> transformers.CLIPTokenizerFast:
    """Learns merges from `corpus` (lower-cased) and writes a CLIP tokenizer to `directory`: the
    256 byte symbols, the same with `</w>`, one token per merge, then the two special tokens."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    learner = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    learner.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    learner.train_from_iterator(
        (text.lower() for text in corpus),
        trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=alphabet, end_of_word_suffix="</w>", show_progress=False
        ),
    )
    merges = [" ".join(pair) for pair in _merges(learner)]
    tokens = alphabet + [c + "</w>" for c in alphabet]
    known = set(tokens)
    for merge in merges:
        token = merge.replace(" ", "")
        if token not in known:
            tokens.append(token)
            known.add(token)
    tokens += list(SPECIAL)
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return transformers.CLIPTokenizerFast.from_pretrained(directory, trust_remote_code=False)


def _merges(learner: Tokenizer) -> list[tuple[str, str]]:
    model = json.loads(learner.to_str())["model"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
