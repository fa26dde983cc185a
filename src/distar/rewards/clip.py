"""CLIP-similarity rewards on transformers ``CLIPModel``: PickScore, CLIP score, HPSv2/v2.1 (metrics.md §1, 2, 5).

All three score s · cos(e_img, e_txt) with e = L2-normalised projected CLIP features:

- PickScore (``yuvalkirstain/PickScore_v1``): s = 1 (``form="cosine"``, as DI* reports it, ≈0.23) or
  s = exp(logit_scale) (``form="logit"``, the reference code's ≈22);
- CLIP score (``openai/clip-vit-large-patch14``): s = 100, prompts truncated to 77 tokens with EOS kept;
- HPSv2 / HPSv2.1 (open_clip ViT-H-14 checkpoints from ``xswu/HPSv2``, mapped to CLIPModel by
  :mod:`distar.rewards.convert`): s = 100, long-side resize + zero pad.

Text embeddings carry no gradient and are cached per prompt; the image side is differentiable.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AutoTokenizer, CLIPModel, PreTrainedTokenizerBase

from distar.rewards import hub
from distar.rewards.base import Reward
from distar.rewards.convert import (
    OPEN_CLIP_VIT_H_14,
    clip_config_from_open_clip,
    convert_open_clip_state_dict,
    to_float,
)
from distar.rewards.preprocess import ImageTransform
from distar.rewards.spec import RewardSpec

logger = logging.getLogger(__name__)
R = TypeVar("R", bound="CLIPSimilarityReward")

#: Tokenizer and image-processor source of PickScore and HPS (both OpenAI-BPE ViT-H/14 models).
LAION_VIT_H_14 = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.json", "vocab.txt")


def processor_source(spec: RewardSpec, path: str, default: str | None) -> str:
    """Where the tokenizer/preprocessor config comes from: ``spec.processor``, else ``path`` when it is a
    local folder with tokenizer files (or ``default`` is None), else ``default``."""
    if spec.processor is not None:
        return spec.processor
    local = Path(path)
    if default is None or (local.is_dir() and any((local / f).is_file() for f in TOKENIZER_FILES)):
        return path
    return default


class PromptCache:
    """A bounded LRU map prompt → per-prompt tensor computed by ``compute``; no gradient.

    Each new prompt is computed alone (a batch of one), so its entry has the same bits whatever it
    was asked for beside: a padded batch changes the last bits of an embedding with its partners,
    and a resumed run, which refills the cache with other partners, would otherwise drift.
    """

    def __init__(self, compute: Callable[[list[str]], Tensor], capacity: int = 4096) -> None:
        self.compute = compute
        self.capacity = capacity
        self.entries: OrderedDict[str, Tensor] = OrderedDict()

    def clear(self) -> None:
        self.entries.clear()

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> Tensor:
        missing = list(dict.fromkeys(p for p in prompts if p not in self.entries))
        if missing:
            for prompt in missing:
                self.entries[prompt] = self.compute([prompt])[0].detach()
        out = []
        for prompt in prompts:
            self.entries.move_to_end(prompt)
            out.append(self.entries[prompt])
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
        return torch.stack(out)


class CLIPSimilarityReward(Reward):
    """r(x, c) = scale · cos(e_img(x), e_txt(c)) on a transformers :class:`CLIPModel`."""

    def __init__(
        self,
        model: CLIPModel,
        tokenizer: PreTrainedTokenizerBase,
        transform: ImageTransform,
        *,
        scale: float,
        name: str,
    ) -> None:
        super().__init__()
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.transform = transform
        self.scale = float(scale)
        self.max_length = min(int(tokenizer.model_max_length), model.config.text_config.max_position_embeddings)
        self.text_cache = PromptCache(self.embed_text)
        self.freeze()

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> "CLIPSimilarityReward":
        # .to()/.half() change device or dtype: cached text embeddings would be stale.
        self.text_cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def embed_text(self, prompts: list[str]) -> Tensor:
        """(B, D) unit-norm float32 text embeddings, computed now (not cached) and differentiable in the
        text tower's weights (reward model training)."""
        device = self.model.text_projection.weight.device
        tokens = self.tokenizer(
            prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        pooled = self.model.text_model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).pooler_output
        return F.normalize(self.model.text_projection(pooled).float(), dim=-1)

    def text_embeddings(self, prompts: Sequence[str]) -> Tensor:
        """(B, D) unit-norm float32 text embeddings (cached, no gradient)."""
        return self.text_cache(prompts)

    def image_embeddings(self, images: Tensor) -> Tensor:
        """(B, D) unit-norm float32 image embeddings of images (B, 3, H, W) in [0, 1], differentiable."""
        return self.pixel_embeddings(self.transform(images))

    def pixel_embeddings(self, pixels: Tensor) -> Tensor:
        """(B, D) unit-norm float32 image embeddings of pixels already through :attr:`transform`."""
        pixels = pixels.to(self.model.visual_projection.weight.dtype)
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{self.name}: {images.shape[0]} images but {len(prompts)} prompts")
        text = self.text_embeddings(prompts).to(images.device)
        return self.scale * (self.image_embeddings(images) * text).sum(dim=-1)

    #: Where the published model is, its name in messages, and the tokenizer/preprocessor source when
    #: ``path`` has none (None: ``path`` itself).
    DEFAULT_PATH: ClassVar[str]
    WHAT: ClassVar[str]
    PROCESSOR: ClassVar[str | None] = None
    #: HPS: long side + zero pad on float tensors (no uint8 clipping); the others: PIL-style crop.
    HPS_TRANSFORM: ClassVar[bool] = False

    @classmethod
    def load_model(cls, spec: RewardSpec, path: str) -> CLIPModel:
        """The ``CLIPModel`` at ``path`` (hub id or folder); with ``spec.random_weights`` its architecture only."""
        return hub.from_pretrained(
            CLIPModel, path, what=cls.WHAT, local_files_only=spec.local_files_only, random_weights=spec.random_weights
        )

    @classmethod
    def score_scale(cls, spec: RewardSpec, model: CLIPModel) -> float:
        """s of r = s · cos."""
        return 100.0

    @classmethod
    def from_spec(cls: type[R], spec: RewardSpec) -> R:
        """The reward of ``spec``: its model (``spec.path``, default :attr:`DEFAULT_PATH`), tokenizer and
        image transform."""
        path = spec.path or cls.DEFAULT_PATH
        model = cls.load_model(spec, path)
        folder = str(Path(path).parent) if Path(path).is_file() else path
        processor = processor_source(spec, folder, cls.PROCESSOR)
        tokenizer = hub.from_pretrained(AutoTokenizer, processor, what=spec.name, local_files_only=spec.local_files_only)
        transform = ImageTransform.from_config(
            hub.read_json(processor, "preprocessor_config.json", local_files_only=spec.local_files_only),
            image_size=model.config.vision_config.image_size,
            mode="pad" if cls.HPS_TRANSFORM else "crop",
            clamp=not cls.HPS_TRANSFORM,
        )
        return cls(model, tokenizer, transform, scale=cls.score_scale(spec, model), name=spec.name)


class PickScore(CLIPSimilarityReward):
    """PickScore (Kirstain et al. 2023): cos, or exp(logit_scale)·cos with ``form="logit"``."""

    DEFAULT_PATH, WHAT, PROCESSOR = "yuvalkirstain/PickScore_v1", "PickScore", LAION_VIT_H_14

    @classmethod
    def score_scale(cls, spec: RewardSpec, model: CLIPModel) -> float:
        logit_scale = float(model.logit_scale.detach().float().exp())
        logger.info("PickScore exp(logit_scale) = %.4f (form=%s)", logit_scale, spec.form)
        return logit_scale if spec.form == "logit" else 1.0


class CLIPScore(CLIPSimilarityReward):
    """CLIP score: 100 · cos (torchmetrics' per-pair value, but with EOS-preserving truncation)."""

    DEFAULT_PATH, WHAT = "openai/clip-vit-large-patch14", "CLIP score"


class HPSv2(CLIPSimilarityReward):
    """Human Preference Score v2 / v2.1 (Wu et al. 2023): 100 · cos on open_clip ViT-H-14 weights."""

    HUB_REPO = DEFAULT_PATH = "xswu/HPSv2"
    PROCESSOR, HPS_TRANSFORM = LAION_VIT_H_14, True
    FILES = {"hpsv2": "HPS_v2_compressed.pt", "hpsv2.1": "HPS_v2.1_compressed.pt"}

    @classmethod
    def load_model(cls, spec: RewardSpec, path: str) -> CLIPModel:
        """A CLIPModel from a converted folder (with ``config.json``) or from the original checkpoint.

        The checkpoint (``path`` a file, a folder holding it, or a hub repo) is an open_clip state dict;
        its architecture is ViT-H-14 unless an ``open_clip_config.json`` (``{"model_cfg": ...}``, as on
        open_clip hub repos) sits beside it.
        """
        what = "HPSv2.1" if spec.name == "hpsv2.1" else "HPSv2"
        if (Path(path) / "config.json").is_file():
            return hub.from_pretrained(CLIPModel, path, what=what, local_files_only=True)
        checkpoint = hub.require_file(
            path, cls.FILES[spec.name], what=what, hint=f"download it from the hub repo {cls.HUB_REPO}",
            local_files_only=spec.local_files_only,
        )
        open_clip_cfg = hub.read_json(checkpoint.parent, "open_clip_config.json")
        config = clip_config_from_open_clip(open_clip_cfg["model_cfg"] if open_clip_cfg else OPEN_CLIP_VIT_H_14)
        state_dict = convert_open_clip_state_dict(to_float(hub.load_torch_checkpoint(checkpoint)))
        return hub.from_state_dict(CLIPModel, config, state_dict, what=f"{what} ({checkpoint})")
