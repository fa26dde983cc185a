"""Tiny, randomly initialised stand-ins for hub assets, built locally (tests and offline trials).

Real loaders (``from_pretrained``) are exercised by saving these to a folder and loading them back.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from tokenizers import pre_tokenizers
from transformers import CLIPTokenizer


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


def cache_dir() -> Path:
    """Where locally built models live: ``$DISTAR_CACHE`` or ``~/.cache/distar``."""
    return Path(os.environ.get("DISTAR_CACHE", Path.home() / ".cache" / "distar"))


def build_once(target: Path, build: Callable[[Path], object]) -> Path:
    """Build into ``target`` once; safe across processes.

    The build goes to a temporary sibling folder, marked complete and renamed into place, so
    concurrent processes (e.g. the ranks of a ``torchrun`` job) never see a half-written model.
    """
    if not (target / ".complete").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        build(tmp)
        (tmp / ".complete").touch()
        try:
            tmp.rename(target)
        except OSError:  # built concurrently by another process: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    return target
