"""LAION aesthetic score (improved-aesthetic-predictor, metrics.md §4).

r(x) = head(e / ‖e‖), e the projected OpenAI CLIP ViT-L/14 image embedding (768-d), head the linear
MLP 768→1024→128→64→16→1 of ``sac+logos+ava1-l14-linearMSE.pth`` (:mod:`distar.rewards.head`).
Output on the 1-10 AVA rating scale; the prompt is ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch.nn.functional as F
from torch import Tensor
from transformers import CLIPConfig, CLIPVisionModelWithProjection

from distar.rewards import hub
from distar.rewards.base import Reward
from distar.rewards.head import LinearHead
from distar.rewards.preprocess import ImageTransform
from distar.rewards.spec import RewardSpec


class AestheticReward(Reward):
    """LAION aesthetic predictor on a CLIP image encoder."""

    name = "aesthetic"
    DEFAULT_BACKBONE = "openai/clip-vit-large-patch14"
    #: Re-upload of the predictor used by TRL's DDPO example (same architecture and keys).
    HUB_REPO, HUB_FILE = "trl-lib/ddpo-aesthetic-predictor", "aesthetic-model.pth"
    FILE = "sac+logos+ava1-l14-linearMSE.pth"

    def __init__(self, encoder: CLIPVisionModelWithProjection, head: LinearHead, transform: ImageTransform) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.transform = transform
        self.freeze()

    def image_embeddings(self, images: Tensor) -> Tensor:
        """(B, D) unit-norm float32 CLIP image embeddings (zero vectors stay zero)."""
        pixels = self.transform(images).to(self.encoder.visual_projection.weight.dtype)
        return F.normalize(self.encoder(pixel_values=pixels).image_embeds.float(), dim=-1)

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return self.head(self.image_embeddings(images))

    @classmethod
    def head_file(cls, spec: RewardSpec) -> Path:
        """The MLP checkpoint: ``path`` itself, ``FILE`` in a ``path`` folder/repo, or the hub re-upload."""
        source, filename = (cls.HUB_REPO, cls.HUB_FILE) if spec.path is None else (spec.path, cls.FILE)
        found = hub.find_file(source, filename, local_files_only=spec.local_files_only)
        if found is None:
            raise FileNotFoundError(
                f"LAION aesthetic needs {cls.FILE} (looked for {filename} in {source}): download it from "
                "github.com/christophschuhmann/improved-aesthetic-predictor and pass path=..."
            )
        return found

    @classmethod
    def from_spec(cls, spec: RewardSpec) -> "AestheticReward":
        head_file = cls.head_file(spec)
        head = LinearHead.from_mlp_state_dict(hub.load_torch_checkpoint(head_file))
        # The CLIP encoder: explicit backbone, else a CLIP model saved in the head's folder, else ViT-L/14.
        beside = head_file.parent
        backbone = spec.backbone or (str(beside) if (beside / "config.json").is_file() else cls.DEFAULT_BACKBONE)
        what, local = "LAION aesthetic (CLIP ViT-L/14)", spec.local_files_only
        # Only the image tower of the CLIPModel checkpoint; its projection width is the top-level one.
        config = hub.from_pretrained(CLIPConfig, backbone, what=what, local_files_only=local)
        vision_config = config.vision_config
        vision_config.projection_dim = config.projection_dim
        encoder = hub.from_pretrained(
            CLIPVisionModelWithProjection, backbone, what=what, local_files_only=local, config=vision_config
        )
        processor = spec.processor or backbone
        transform = ImageTransform.from_config(
            hub.read_json(processor, "preprocessor_config.json", local_files_only=local),
            image_size=encoder.config.image_size,
        )
        return cls(encoder, head, transform)
