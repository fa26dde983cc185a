"""The tiny CLIP tokenizer builder, kept under this name for :mod:`distar.worlds.shapes.tokenizer`,
whose word tokenizer extends its byte alphabet; the builders live in :mod:`distar.testing.tokenizers`."""

from distar.testing.tokenizers import save_tiny_clip_tokenizer

__all__ = ["save_tiny_clip_tokenizer"]
