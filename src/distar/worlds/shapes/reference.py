"""The reference diffusion model: a pixel-space diffusers ``UNet2DConditionModel`` with CFG.

Trained by v-prediction denoising score matching (docs/math.md §1, Eq. 2.2 in v form, v = α_t ε − σ_t x0:
plain v-MSE is the x0-MSE weighted by λ(t) = α_t²/σ_t² + 1) on rendered images scaled to [−1, 1], with
the prompt replaced by "" with probability ``cond_dropout`` so the same network gives s(x_t | ∅) for
classifier-free guidance (Eq. 3.5). The noise levels are drawn as EDM draws them, ln σ ~ N(P_mean, P_std²)
with σ = σ_t/α_t, at the nearest step of the DDPM schedule. P_mean is 0.5, above EDM's −1.2: where the
object goes is decided where x_t is almost pure noise (σ ≈ 5-20, the x0 prediction there must put it
where the prompt says), and at P_mean −0.5 (8 % of draws above σ = 5) the reference had not learned
to place objects after 2,750 steps; at 0.5 (23 %) it places them by step 1,000. Uniform steps (44 %
above σ = 5) place them too but learn the rest more slowly (FID 10.4 against 6.3 at step 1,000).
The text conditioning is ``last_hidden_state`` of the reference's text encoder (:mod:`.reader`: the
CLIP analogue's text tower taught to read the grammar), frozen, prompts padded to the tokenizer's
length as Stable Diffusion does. Saved as a diffusers folder without a VAE — ``unet/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/`` — so decode = (x + 1)/2.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Literal

import diffusers
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from torch import Tensor
from transformers import CLIPTextModel, CLIPTokenizer

from distar.config import field
from distar.fit import FitCheckpoint, FitState, Log, TrainLoop, fit
from distar.inference.pixel import SCHEDULER_CONFIG, encode_prompts
from distar.worlds.shapes.data import SceneSampler
from distar.worlds.shapes.grammar import IMAGE_SIZE

@dataclasses.dataclass
class ReferenceLoop(TrainLoop):
    """Training of the reference UNet."""

    cond_dropout: float = field(0.1, help="probability of training on the empty prompt (for CFG)")
    ema_decay: float = field(0.999, help="EMA decay of the saved weights (with warm-up)")
    noise_levels: Literal["lognormal", "uniform"] = field(
        "lognormal", help="how steps t are drawn: 'lognormal' = ln σ ~ N(log_sigma_mean, log_sigma_std²), σ = σ_t/α_t "
        "(EDM), at the nearest schedule step; 'uniform' = t ~ U{0..999} (DDPM)"
    )
    log_sigma_mean: float = field(0.5, help="P_mean of the lognormal noise levels (module docstring)")
    log_sigma_std: float = field(1.5, help="P_std of the lognormal noise levels")
    min_snr_gamma: float | None = field(
        None, help="cap γ of the x0-unit loss weight: min(SNR + 1, γ) (Min-SNR-γ); null = plain v-MSE"
    )
    checkpoint_every: int = field(
        250, help="save the training state to <build>.building/reference.partial every N steps (0: never)"
    )


@dataclasses.dataclass
class UNetArch:
    """Size and conditioning of the reference UNet."""

    block_out_channels: tuple[int, ...] = field(
        (32, 64, 64, 64), help="channels per resolution level (32, 16, 8, 4 px): the 4-px level sees the whole canvas"
    )
    layers_per_block: int = field(1, help="ResNet blocks per level")
    attention_head_dim: int = field(8, help="channels per attention head")
    norm_num_groups: int = field(16, help="GroupNorm groups")
    attention_levels: int = field(2, help="lowest-resolution levels with (self- and cross-) attention blocks")
    text_time_embedding: bool = field(
        True,
        help="also pool the text states into the time embedding (diffusers addition_embed_type='text'), "
        "with scale-shift norms, so every ResNet block sees the prompt",
    )


def new_unet(arch: UNetArch, cross_attention_dim: int, seed: int) -> UNet2DConditionModel:
    """A randomly initialised pixel-space UNet for 32×32 RGB images."""
    levels = len(arch.block_out_channels)
    plain = levels - arch.attention_levels
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE,
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(arch.block_out_channels),
        down_block_types=("DownBlock2D",) * plain + ("CrossAttnDownBlock2D",) * arch.attention_levels,
        up_block_types=("CrossAttnUpBlock2D",) * arch.attention_levels + ("UpBlock2D",) * plain,
        layers_per_block=arch.layers_per_block,
        attention_head_dim=arch.attention_head_dim,
        norm_num_groups=arch.norm_num_groups,
        cross_attention_dim=cross_attention_dim,
        addition_embed_type="text" if arch.text_time_embedding else None,
        addition_embed_type_num_heads=max(1, cross_attention_dim // 32),
        resnet_time_scale_shift="scale_shift" if arch.text_time_embedding else "default",
    )


class NoiseLevels:
    """Training steps t of the schedule, drawn as ``loop.noise_levels`` says (ReferenceLoop)."""

    def __init__(self, scheduler: DDPMScheduler, loop: ReferenceLoop, generator: torch.Generator) -> None:
        alphas_cumprod = scheduler.alphas_cumprod
        #: ln σ_t/α_t at every step, increasing in t
        self.log_sigma = (0.5 * ((1 - alphas_cumprod) / alphas_cumprod).log()).contiguous()
        self.loop, self.generator = loop, generator

    def __call__(self, n: int) -> Tensor:
        if self.loop.noise_levels == "uniform":
            return torch.randint(0, len(self.log_sigma), (n,), generator=self.generator)
        log_sigma = self.loop.log_sigma_mean + self.loop.log_sigma_std * torch.randn(n, generator=self.generator)
        return torch.searchsorted(self.log_sigma, log_sigma).clamp(0, len(self.log_sigma) - 1)


class ReferenceCheckpoint(FitCheckpoint):
    """The reference's training state (:class:`~distar.fit.FitCheckpoint`): ``state.pt`` holds
    the weights, the EMA, the optimiser and schedule, and every random stream of the run; ``unet/`` the
    EMA weights as a diffusers UNet, to look at while the build runs. :func:`train_reference` given a
    checkpoint whose key matches continues from its state and ends with the weights of a run that never
    stopped.
    """


def train_reference(
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    loop: ReferenceLoop,
    log: Log,
    checkpoint: ReferenceCheckpoint | None = None,
) -> None:
    """v-prediction DSM with condition dropout (module docstring), in place; ends with the EMA weights
    in ``unet``, in eval mode, frozen. The text encoder stays frozen. With ``checkpoint``, the run
    continues from its saved state, if any, and saves its own when due.
    """
    scheduler = DDPMScheduler(**SCHEDULER_CONFIG)
    snr = scheduler.alphas_cumprod / (1 - scheduler.alphas_cumprod)
    # v-MSE = (SNR + 1)·x0-MSE, so the x0 weight min(SNR + 1, γ) is min(1, γ / (SNR + 1)) on v.
    weight = torch.ones_like(snr) if loop.min_snr_gamma is None else (loop.min_snr_gamma / (snr + 1)).clamp(max=1)
    sampler = SceneSampler(loop.seed)
    generator = torch.Generator().manual_seed(loop.seed)
    draw_t = NoiseLevels(scheduler, loop, generator)
    text_encoder.eval().requires_grad_(False)
    ema = EMAModel(unet.parameters(), decay=loop.ema_decay, use_ema_warmup=True)
    resume = checkpoint.load() if checkpoint is not None else None
    if resume is not None:
        unet.load_state_dict(resume["unet"])
        ema.load_state_dict(resume["ema"])
        sampler.set_state(resume["scenes"])
        generator.set_state(resume["generator"])

    def step_loss() -> dict[str, Tensor]:
        specs, images, _ = sampler.batch(loop.batch_size)
        drop = torch.rand(len(specs), generator=generator) < loop.cond_dropout
        prompts = ["" if d else s.prompt() for s, d in zip(specs, drop)]
        x0 = images * 2 - 1
        noise = torch.randn(x0.shape, generator=generator)
        t = draw_t(len(specs))
        x_t = scheduler.add_noise(x0, noise, t)
        with torch.no_grad():
            cond = encode_prompts(text_encoder, tokenizer, prompts)
        v = unet(x_t, t, cond).sample
        per_sample = (v - scheduler.get_velocity(x0, noise, t)).pow(2).mean((1, 2, 3))
        return {"loss": (weight[t] * per_sample).mean(), "v_mse": per_sample.mean()}

    def save(step: int, fit_state: Callable[[], FitState]) -> None:
        ema.step(unet.parameters())
        if checkpoint is None or not checkpoint.due(step):
            return
        state = {
            "fit": fit_state(),
            "unet": unet.state_dict(),
            "ema": ema.state_dict(),
            "scenes": sampler.get_state(),
            "generator": generator.get_state(),
        }

        def ema_unet(folder: Path) -> None:  # the EMA weights, passed through ``unet``, as ``unet/``
            ema.store(unet.parameters())
            ema.copy_to(unet.parameters())
            try:
                unet.save_pretrained(folder / "unet")
            finally:
                ema.restore(unet.parameters())

        checkpoint.save(state, ema_unet)

    fit(unet, loop, step_loss, log, checkpoint=save, resume=None if resume is None else resume["fit"])
    ema.copy_to(unet.parameters())
    unet.eval().requires_grad_(False)


def save_reference(
    directory: str | Path, unet: UNet2DConditionModel, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer
) -> Path:
    """Write the diffusers folder (unet/, text_encoder/, tokenizer/, scheduler/, model_index.json)."""
    directory = Path(directory)
    parts = {"unet": unet, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": DDPMScheduler(**SCHEDULER_CONFIG)}
    index = {"_class_name": "DiffusionPipeline", "_diffusers_version": diffusers.__version__}
    for name, part in parts.items():
        part.save_pretrained(directory / name)
        index[name] = [type(part).__module__.split(".")[0], type(part).__name__]  # library, class
    (directory / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return directory
