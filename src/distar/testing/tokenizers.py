"""Real tokenizers over tiny character-level vocabularies: CLIP (byte BPE, no merges), T5 (unigram) and
Gemma (BPE over characters and lowercase letter pairs).

The tiny text encoders of :mod:`distar.testing.pipelines` and :mod:`distar.testing.reward_models`
are sized for them; they are written to a folder and loaded back with ``from_pretrained``.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from tokenizers import pre_tokenizers
from transformers import CLIPTokenizer, GemmaTokenizer, T5TokenizerFast


def save_tiny_clip_tokenizer(directory: str | Path, model_max_length: int = 77) -> CLIPTokenizer:
    """Write a real :class:`CLIPTokenizer` with a character-level byte BPE vocabulary (no merges).

    The vocabulary holds every byte symbol alone and with the end-of-word marker, plus the start/end
    tokens: 514 entries, so tiny text encoders built on it need ``vocab_size >= 514``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(directory, model_max_length=model_max_length)
    tokenizer.save_pretrained(directory)
    return tokenizer


#: vocabulary size of :func:`save_tiny_clip_tokenizer`; eos = vocab - 1, bos = vocab - 2.
TINY_CLIP_VOCAB_SIZE = 514


def save_tiny_t5_tokenizer(directory: str | Path, model_max_length: int = 512) -> T5TokenizerFast:
    """Write a real :class:`T5TokenizerFast` with a character-level unigram vocabulary.

    Ids: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, then "▁" and the printable ASCII characters:
    :data:`TINY_T5_VOCAB_SIZE` entries.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pieces = ["▁", *(chr(c) for c in range(33, 127))]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *((p, -1.0) for p in pieces)]
    tokenizer = T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=model_max_length)
    tokenizer.save_pretrained(directory)
    return tokenizer


#: vocabulary size of :func:`save_tiny_t5_tokenizer`.
TINY_T5_VOCAB_SIZE = 98


#: The tiny Gemma tokenizer's pieces after its five special tokens: "▁" (space), the printable ASCII
#: characters, then every pair of lowercase letters (its merges, so English text takes about half as
#: many tokens as characters).
_LETTER_PAIRS = [(a, b) for a in string.ascii_lowercase for b in string.ascii_lowercase]
_GEMMA_PIECES = ["▁", *(chr(c) for c in range(33, 127)), *(a + b for a, b in _LETTER_PAIRS)]


def save_tiny_gemma_tokenizer(directory: str | Path, model_max_length: int = 4096) -> GemmaTokenizer:
    """Write a real :class:`GemmaTokenizer` (byte-fallback BPE, ``<bos>`` first) with a vocabulary of
    characters and lowercase letter pairs.

    Ids: ``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3, ``<mask>`` 4, then :data:`_GEMMA_PIECES`:
    :data:`TINY_GEMMA_VOCAB_SIZE` entries. Other characters are ``<unk>``.
    """
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    vocab = {piece: i for i, piece in enumerate(specials + _GEMMA_PIECES)}
    tokenizer = GemmaTokenizer(vocab=vocab, merges=_LETTER_PAIRS, model_max_length=model_max_length, add_bos_token=True)
    tokenizer.save_pretrained(directory)
    return tokenizer


#: vocabulary size of :func:`save_tiny_gemma_tokenizer`.
TINY_GEMMA_VOCAB_SIZE = 5 + len(_GEMMA_PIECES)
