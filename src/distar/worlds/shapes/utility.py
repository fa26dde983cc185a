"""The hidden "true human utility" u(x, c) of the shapes world and simulated pairwise choices.

The simulated human looks at the pixels only (never at a model's internals) and likes:

- **contrast**: the luminance difference |Y(f̄) − Y(b)| between the mean object colour f̄ and the
  background colour b (Y = 0.299 R + 0.587 G + 0.114 B), in [0, 1];
- **composition**: the object's centroid near the asked position (the image centre when the prompt
  names none): −‖centroid − target‖² in coordinates normalised to [−1, 1];
- **cleanliness**: flat regions, crisp edges: −(noise + softness). Each pixel is modelled as
  b + k (f̄ − b) with coverage k ∈ [0, 1] (projection onto the background→object colour axis);
  noise = mean squared RGB residual of that model, softness = mean of 4 k (1 − k) (the area, as a
  fraction of the image, of half-covered pixels: a crisp outline has little, a blurred one much);
- **faithfulness** to the colours and size the prompt names: −‖f̄ − colour‖ and −‖b − background‖
  (RGB distance / √3), −|√area − √area_asked| (area as a fraction of the image).

Background b = mean of the one-pixel border; object mask m = σ((‖x − b‖/√3 − 0.15)/0.02); object
colour f̄ = mean of x weighted by m ‖x − b‖² (the interior counts more than the antialiased rim).
u = Σ_k w_k term_k with the weights of :class:`UtilityWeights`. The shape kind and the count are not
judged (that is the alignment metric's job, :mod:`distar.worlds.shapes.metrics`).

Pairwise choices follow Bradley–Terry: P(A ≻ B) = σ((u_A − u_B) / τ).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from distar.rewards.base import Reward
from distar.worlds.shapes.grammar import BACKGROUNDS, COLOURS, IMAGE_SIZE, POSITIONS, SIZES, parse_prompt

_LUMA = (0.299, 0.587, 0.114)


@dataclasses.dataclass(frozen=True)
class UtilityWeights:
    """Weights w_k of the utility terms and the Bradley–Terry temperature τ."""

    contrast: float = 3.0
    composition: float = 3.0
    cleanliness: float = 20.0
    colour: float = 3.0
    background: float = 3.0
    size: float = 6.0
    temperature: float = 0.5


def _targets(prompts: Sequence[str], device: torch.device) -> dict[str, Tensor]:
    """Per-prompt targets and masks (1 where the prompt names the attribute)."""
    specs = [parse_prompt(p) for p in prompts]
    centre = IMAGE_SIZE / 2

    def norm(xy: tuple[float, float]) -> list[float]:
        return [(v - centre) / centre for v in xy]

    def mean_area(s) -> float:
        lo, hi = SIZES[s.size] if s.size else (0.0, 0.0)
        return s.count * math.pi * ((lo + hi) / 2) ** 2 / IMAGE_SIZE**2

    rows = {
        "position": [norm(POSITIONS[s.position]) if s.position else [0.0, 0.0] for s in specs],
        "colour": [COLOURS[s.colour] if s.colour else (0.0, 0.0, 0.0) for s in specs],
        "colour_mask": [float(s.colour is not None) for s in specs],
        "background": [BACKGROUNDS[s.background] if s.background else (0.0, 0.0, 0.0) for s in specs],
        "background_mask": [float(s.background is not None) for s in specs],
        "area": [mean_area(s) for s in specs],
        "area_mask": [float(s.size is not None) for s in specs],
    }
    return {k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in rows.items()}


def utility_terms(images: Tensor, prompts: Sequence[str]) -> dict[str, Tensor]:
    """Each term of u (module docstring) for images (B, 3, H, W) in [0, 1]; (B,) each, differentiable."""
    x = images.float()
    B, _, H, W = x.shape
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1]], dim=-1)
    b = border.mean(-1)  # (B, 3)
    dist = (x - b[..., None, None]).norm(dim=1) / math.sqrt(3)  # (B, H, W)
    m = torch.sigmoid((dist - 0.15) / 0.02)
    mass = m.sum((1, 2)) + 1e-3
    weight = m * dist.pow(2)  # favours the object's interior over its antialiased rim
    f = (x * weight[:, None]).sum((2, 3)) / (weight.sum((1, 2)) + 1e-6)[:, None]  # (B, 3)
    luma = torch.tensor(_LUMA, device=x.device)
    contrast = ((f - b) @ luma).abs()

    ys, xs = torch.meshgrid(
        (torch.arange(H, device=x.device) + 0.5) / H * 2 - 1,
        (torch.arange(W, device=x.device) + 0.5) / W * 2 - 1,
        indexing="ij",
    )
    centroid = torch.stack([(m * xs).sum((1, 2)), (m * ys).sum((1, 2))], -1) / mass[:, None]
    target = _targets(prompts, x.device)
    composition = -(centroid - target["position"]).pow(2).sum(-1)

    # Two-colour model of each pixel: b + k (f̄ − b), coverage k ∈ [0, 1] by projection.
    axis = f - b
    k = torch.einsum("bchw,bc->bhw", x - b[..., None, None], axis) / (axis.pow(2).sum(-1)[:, None, None] + 1e-3)
    k = k.clamp(0, 1)
    residual = x - (b[..., None, None] + k[:, None] * axis[..., None, None])
    noise = residual.pow(2).sum(1).mean((1, 2))
    softness = (4 * k * (1 - k)).mean((1, 2))
    cleanliness = -(noise + softness)

    colour = -target["colour_mask"] * (f - target["colour"]).norm(dim=-1) / math.sqrt(3)
    background = -target["background_mask"] * (b - target["background"]).norm(dim=-1) / math.sqrt(3)
    area = m.mean((1, 2))
    size = -target["area_mask"] * (area.clamp_min(0).sqrt() - target["area"].sqrt()).abs()
    return {
        "contrast": contrast,
        "composition": composition,
        "cleanliness": cleanliness,
        "colour": colour,
        "background": background,
        "size": size,
    }


class TrueUtility(Reward):
    """The hidden human utility u(x, c) as a (differentiable) :class:`~distar.rewards.base.Reward`."""

    name = "true_utility"

    def __init__(self, weights: UtilityWeights = UtilityWeights()) -> None:
        super().__init__()
        self.weights = weights

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        terms = utility_terms(images, prompts)
        return sum(getattr(self.weights, k) * v for k, v in terms.items())


def choice_probability(u_a: Tensor, u_b: Tensor, temperature: float) -> Tensor:
    """Bradley–Terry P(A ≻ B) = σ((u_A − u_B)/τ)."""
    return torch.sigmoid((u_a - u_b) / temperature)


def simulate_choices(u_a: Tensor, u_b: Tensor, temperature: float, generator: torch.Generator) -> Tensor:
    """Simulated human choices: 1.0 where A is preferred, drawn from :func:`choice_probability`."""
    p = choice_probability(u_a, u_b, temperature)
    return (torch.rand(p.shape, generator=generator, device=p.device) < p).float()


def degrade(images: Tensor, generator: torch.Generator) -> Tensor:
    """Random defects of the kind generators make, each applied to a random subset of images.

    Gaussian blur (σ up to 1.2 px), additive noise (σ up to 0.12), washed-out contrast (blend
    towards the mean colour by up to 50 %) and a shift of up to 6 px (wrapping around). Each
    defect hits an image with probability ½, with a uniformly drawn strength. Output in [0, 1].
    """
    B = images.shape[0]

    def draw(scale: float) -> Tensor:
        hit = torch.rand(B, generator=generator) < 0.5
        return (torch.rand(B, generator=generator) * scale * hit).to(images.device)

    blur, noise, wash = draw(1.2), draw(0.12), draw(0.5)
    shifts = (torch.rand(B, 2, generator=generator) * 13 - 6).round().long() * (
        torch.rand(B, 1, generator=generator) < 0.5
    )
    out = torch.stack([gaussian_blur(img, float(s)) for img, s in zip(images, blur)])
    mean = out.mean((2, 3), keepdim=True)
    out = out + wash[:, None, None, None] * (mean - out)
    out = out + noise[:, None, None, None] * torch.randn(out.shape, generator=generator).to(out.device)
    out = torch.stack([torch.roll(img, (int(dy), int(dx)), (1, 2)) for img, (dx, dy) in zip(out, shifts)])
    return out.clamp(0, 1)


def gaussian_blur(image: Tensor, sigma: float) -> Tensor:
    """Blur one image (C, H, W) with a Gaussian of ``sigma`` pixels (reflect padding); σ = 0 is identity."""
    if sigma <= 0:
        return image
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    C = image.shape[0]
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)
    return x[0]
