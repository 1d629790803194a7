"""Build a CLIP tokenizer offline whose BPE merges make every word of a vocabulary one token."""

from __future__ import annotations

import json
from collections.abc import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPTokenizer

SPECIAL = ["<|startoftext|>", "<|endoftext|>"]


def build_clip_tokenizer(words: Iterable[str], model_max_length: int = 77) -> CLIPTokenizer:
    """Train byte-level BPE merges on `words` with CLIP's end-of-word suffix; any other text still tokenizes."""
    bpe = Tokenizer(models.BPE(unk_token=SPECIAL[1], continuing_subword_prefix="", end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=1_000_000, min_frequency=1, special_tokens=SPECIAL,
                                  initial_alphabet=alphabet, end_of_word_suffix="</w>", show_progress=False)
    bpe.train_from_iterator(sorted({w.lower() for w in words}), trainer)
    vocab = bpe.get_vocab()
    # Every byte also gets its end-of-word form, so words outside the vocabulary never become unknown tokens.
    for char in sorted(alphabet):
        vocab.setdefault(char + "</w>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(bpe.to_str())["model"]["merges"]]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
