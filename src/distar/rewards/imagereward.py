"""ImageReward (Xu et al. 2023) on transformers' BLIP classes (metrics.md §3).

The prompt (BERT tokens, padded/truncated to 35) runs through BLIP's text encoder with
cross-attention to the ViT image tokens; the [CLS] hidden state h goes through the linear MLP head
(:mod:`distar.rewards.head`) and is standardised:

    r(x, c) = (head(h) − 0.16717362830052426) / 1.0333394966054072.

Weights come from ``ImageReward.pt`` (BLIP's original key names) and ``med_config.json`` of the hub
repo ``THUDM/ImageReward``, mapped by :func:`distar.rewards.convert.convert_blip_state_dict`; the
tokenizer is ``bert-base-uncased`` with BLIP's extra ``[DEC]``/``[ENC]`` tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor
from transformers import AutoTokenizer, BlipTextModel, BlipVisionModel, PreTrainedTokenizerBase

from distar.config import ConfigError
from distar.rewards import hub
from distar.rewards.base import Reward
from distar.rewards.clip import PromptCache, processor_source
from distar.rewards.convert import BLIP_VIT_LARGE, blip_configs, convert_blip_state_dict, to_float
from distar.rewards.head import LinearHead
from distar.rewards.preprocess import ImageTransform
from distar.rewards.spec import RewardSpec


class ImageReward(Reward):
    """ImageReward-v1.0: BLIP ViT-L/16 + BERT cross-encoder + linear head, standardised."""

    name = "imagereward"
    MEAN = 0.16717362830052426
    STD = 1.0333394966054072
    MAX_LENGTH = 35
    HUB_REPO = "THUDM/ImageReward"
    TOKENIZER = "bert-base-uncased"

    def __init__(
        self,
        vision: BlipVisionModel,
        text: BlipTextModel,
        head: LinearHead,
        tokenizer: PreTrainedTokenizerBase,
        transform: ImageTransform,
    ) -> None:
        super().__init__()
        self.vision = vision
        self.text = text
        self.head = head
        self.tokenizer = tokenizer
        self.transform = transform
        self.token_cache = PromptCache(self._tokenize)
        self.freeze()

    def _tokenize(self, prompts: list[str]) -> Tensor:
        tokens = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.MAX_LENGTH, return_tensors="pt"
        )
        return torch.stack([tokens.input_ids, tokens.attention_mask], dim=1)  # (B, 2, 35)

    def tokens(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """(input_ids, attention_mask), each (B, 35), cached per prompt."""
        both = self.token_cache(prompts)
        return both[:, 0], both[:, 1]

    def score_tokens(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B,) rewards from normalised pixels (B, 3, S, S) and token ids/mask (B, L); differentiable in pixels."""
        dtype = self.vision.embeddings.patch_embedding.weight.dtype
        image_embeds = self.vision(pixel_values=pixel_values.to(dtype)).last_hidden_state
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        hidden = self.text(
            input_ids=input_ids.to(image_embeds.device),
            attention_mask=attention_mask.to(image_embeds.device),
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
        ).last_hidden_state
        return (self.head(hidden[:, 0]) - self.MEAN) / self.STD

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        if len(prompts) != images.shape[0]:
            raise ValueError(f"imagereward: {images.shape[0]} images but {len(prompts)} prompts")
        input_ids, attention_mask = self.tokens(prompts)
        return self.score_tokens(self.transform(images), input_ids, attention_mask)

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Path, med_config: dict, vision: dict, tokenizer: PreTrainedTokenizerBase,
        transform: ImageTransform,
    ) -> "ImageReward":
        """Build from an ``ImageReward.pt``-style state dict (``blip.*``, ``mlp.layers.*``)."""
        state_dict = to_float(hub.load_torch_checkpoint(checkpoint))
        vision_config, text_config = blip_configs(med_config, vision)
        vision_sd, text_sd = convert_blip_state_dict(state_dict)
        what = f"ImageReward ({checkpoint})"
        vision_model = hub.from_state_dict(BlipVisionModel, vision_config, vision_sd, what=what)
        text_model = hub.from_state_dict(BlipTextModel, text_config, text_sd, what=what, add_pooling_layer=False)
        head = LinearHead.from_mlp_state_dict(state_dict, prefix="mlp.layers.")
        if len(tokenizer) > text_config.vocab_size:
            raise ConfigError(f"{what}: tokenizer has {len(tokenizer)} tokens, the model {text_config.vocab_size}")
        return cls(vision_model, text_model, head, tokenizer, transform)

    @classmethod
    def from_spec(cls, spec: RewardSpec) -> "ImageReward":
        """Load ``ImageReward.pt`` + ``med_config.json`` from ``path`` (folder or hub repo).

        The image encoder is ViT-L/16 at 224 px unless a ``vision_config.json`` (BlipVisionConfig
        fields) sits beside the checkpoint, as in the tiny test models.
        """
        path = spec.path or cls.HUB_REPO
        if Path(path).is_file():
            path = str(Path(path).parent)
        hint = f"download it from the hub repo {cls.HUB_REPO}"
        local = spec.local_files_only
        checkpoint = hub.require_file(path, "ImageReward.pt", what="ImageReward", hint=hint, local_files_only=local)
        med_file = hub.require_file(path, "med_config.json", what="ImageReward", hint=hint, local_files_only=local)
        vision = hub.read_json(path, "vision_config.json", local_files_only=local) or BLIP_VIT_LARGE
        processor = processor_source(spec, path, cls.TOKENIZER)
        tokenizer = hub.from_pretrained(AutoTokenizer, processor, what="ImageReward tokenizer", local_files_only=local)
        # BLIP's tokenizer additions; a no-op when the saved tokenizer already has them.
        tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
        # ImageReward resizes the short side and centre-crops (not BlipImageProcessor's squash).
        processor_config = hub.read_json(path, "preprocessor_config.json", local_files_only=local)
        transform = ImageTransform.from_config(processor_config, image_size=int(vision["image_size"]))
        return cls.from_checkpoint(checkpoint, json.loads(med_file.read_text()), vision, tokenizer, transform)
