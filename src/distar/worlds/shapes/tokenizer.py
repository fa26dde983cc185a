"""A word-level CLIP tokenizer for the shapes grammar: every grammar word is one token.

The vocabulary is the byte-level alphabet of :func:`distar.testing.tokenizers.save_tiny_clip_tokenizer` (so any
text still tokenizes, character by character) plus BPE merges learnt on the grammar's words until
each of them is a single ``word</w>`` token.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Sequence

from transformers import CLIPTokenizer

from distar.testing.tokenizers import save_tiny_clip_tokenizer


def learn_merges(words: Sequence[str]) -> list[tuple[str, str]]:
    """BPE merges (most frequent pair first, ties alphabetical) that make each word one symbol."""
    pieces = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in words}
    merges: list[tuple[str, str]] = []
    while True:
        pairs = collections.Counter(
            (a, b) for symbols in pieces.values() for a, b in zip(symbols, symbols[1:])
        )
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for word, symbols in pieces.items():
            merged, i = [], 0
            while i < len(symbols):
                if tuple(symbols[i : i + 2]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            pieces[word] = merged


def save_word_tokenizer(directory: str | Path, words: Sequence[str], model_max_length: int) -> CLIPTokenizer:
    """Write a :class:`CLIPTokenizer` in which each of ``words`` (lower case) is a single token."""
    directory = Path(directory)
    save_tiny_clip_tokenizer(directory, model_max_length=model_max_length)
    vocab = json.loads((directory / "vocab.json").read_text())
    merges = learn_merges(sorted(set(words)))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    (directory / "vocab.json").write_text(json.dumps(vocab))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n")
    (directory / "tokenizer.json").unlink(missing_ok=True)  # rebuilt from vocab + merges below
    tokenizer = CLIPTokenizer.from_pretrained(directory, model_max_length=model_max_length)
    tokenizer.save_pretrained(directory)
    return tokenizer
