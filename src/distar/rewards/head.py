"""The linear MLP head shared by the LAION aesthetic predictor and ImageReward (metrics.md §3-4).

Both are ``nn.Sequential(Linear(d, 1024), Dropout, Linear(1024, 128), Dropout, Linear(128, 64),
Dropout, Linear(64, 16), Linear(16, 1))`` with no activations: in eval mode an affine map
y = wᵀx + b. The Linear layers sit at Sequential indices 0, 2, 4, 6, 7 (state-dict keys
``layers.{0,2,4,6,7}.{weight,bias}``); they are folded into one (w, b) at load time.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

#: Sequential indices of the Linear layers in the original heads.
LINEAR_INDICES = (0, 2, 4, 6, 7)


class LinearHead(nn.Module):
    """y = wᵀx + b, (B, d) → (B,), kept and evaluated in float32."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight.reshape(1, -1).float())
        self.register_buffer("bias", bias.reshape(1).float())

    @classmethod
    def from_mlp_state_dict(cls, state_dict: Mapping[str, Tensor], prefix: str = "layers.") -> "LinearHead":
        """Fold the five Linear layers ``{prefix}{0,2,4,6,7}`` into one, composing in float64."""
        weight: Tensor | None = None
        bias: Tensor | None = None
        for index in LINEAR_INDICES:
            w = state_dict[f"{prefix}{index}.weight"].double()
            b = state_dict[f"{prefix}{index}.bias"].double()
            weight = w if weight is None else w @ weight
            bias = b if bias is None else w @ bias + b
        assert weight is not None and bias is not None
        if weight.shape[0] != 1:
            raise ValueError(f"MLP head must end in one output, got {weight.shape[0]}")
        return cls(weight, bias)

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> "LinearHead":
        # Follow device moves but not dtype casts: the folded head stays float32 (a bf16 reward
        # backbone must not round w and b).
        device = fn(torch.zeros(())).device
        self.weight, self.bias = self.weight.to(device), self.bias.to(device)
        return self

    def forward(self, features: Tensor) -> Tensor:
        return features.float() @ self.weight[0] + self.bias
