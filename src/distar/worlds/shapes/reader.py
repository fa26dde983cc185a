"""The reference's text encoder: the CLIP analogue's text tower, taught to read the grammar (text only).

Contrastive training teaches the CLIP analogue's text tower what tells images apart first — colour and
count — and its layers squash the other words: between "a large red square" and "a large red triangle"
the largest change of a token state is 0.20 of the mean state norm at the last layer; "on the left"
against "on the right" 0.14; "red" against "blue" 1.47 (docs/shapes.md).
A UNet conditioned on those states learns colour and count and never the shape or position words.

So, as text-to-image models take a text encoder pretrained on text, the reference's encoder is the CLIP
analogue's text tower fine-tuned on prompts alone, with two linear heads that are thrown away after:

- every token's last state predicts the token itself (cross-entropy), so no word is squashed;
- the end-of-text state predicts every attribute the prompt names, or that it names none (one
  cross-entropy per attribute), so the state that sums up the prompt carries all of them.

Empty prompts (CFG's ∅) are part of the stream. No image is seen; this takes a minute on one core.
"""

from __future__ import annotations

import dataclasses
import random

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

from distar.config import field
from distar.fit import Log, TrainLoop, fit
from distar.worlds.shapes.grammar import ATTRIBUTE_VALUES, parse_prompt, sample_spec


@dataclasses.dataclass
class ReaderLoop(TrainLoop):
    """Text-only fine-tuning of the reference's text encoder."""

    empty_prompts: float = field(0.1, help="fraction of empty prompts in the stream")


def text_encoder_from_clip(clip: CLIPModel) -> CLIPTextModel:
    """The CLIP analogue's text tower as a stand-alone ``CLIPTextModel`` (a copy, frozen, eval mode)."""
    encoder = CLIPTextModel(clip.config.text_config)
    encoder.load_state_dict(clip.text_model.state_dict())
    return encoder.eval().requires_grad_(False)


def attribute_labels(prompts: list[str]) -> dict[str, Tensor]:
    """Per attribute, the index of the named value + 1, or 0 where the prompt names none (or is empty)."""
    named = [parse_prompt(p).attributes() if p else {} for p in prompts]
    return {
        a: torch.tensor([values.index(n[a]) + 1 if a in n else 0 for n in named]) for a, values in ATTRIBUTE_VALUES.items()
    }


class ReadingHeads(nn.Module):
    """The two heads of the module docstring over an encoder's last hidden states."""

    def __init__(self, width: int, vocab_size: int) -> None:
        super().__init__()
        self.token = nn.Linear(width, vocab_size)
        self.attributes = nn.ModuleDict({a: nn.Linear(width, len(v) + 1) for a, v in ATTRIBUTE_VALUES.items()})

    def losses(self, states: Tensor, ids: Tensor, mask: Tensor, labels: dict[str, Tensor]) -> dict[str, Tensor]:
        """Token and attribute cross-entropies for states (B, L, D) of token ``ids`` (B, L) with ``mask``."""
        real = mask.bool()
        summary = states[torch.arange(len(ids)), real.sum(1) - 1]  # the end-of-text token
        attributes = sum(F.cross_entropy(head(summary), labels[a]) for a, head in self.attributes.items())
        return {"tokens": F.cross_entropy(self.token(states[real]), ids[real]), "attributes": attributes}


def train_reader(encoder: CLIPTextModel, tokenizer: CLIPTokenizer, loop: ReaderLoop, log: Log) -> None:
    """Fine-tune ``encoder`` in place (module docstring); it ends frozen, in eval mode."""
    rng = random.Random(loop.seed)
    torch.manual_seed(loop.seed)
    heads = ReadingHeads(encoder.config.hidden_size, encoder.config.vocab_size)
    trained = nn.ModuleDict({"encoder": encoder.requires_grad_(True), "heads": heads})

    def step_loss() -> dict[str, Tensor]:
        prompts = ["" if rng.random() < loop.empty_prompts else sample_spec(rng).prompt() for _ in range(loop.batch_size)]
        tokens = tokenizer(
            prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        states = encoder(tokens.input_ids).last_hidden_state
        terms = heads.losses(states, tokens.input_ids, tokens.attention_mask, attribute_labels(prompts))
        return {"loss": terms["tokens"] + terms["attributes"], **terms}

    fit(trained, loop, step_loss, log)
    encoder.eval().requires_grad_(False)
