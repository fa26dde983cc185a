"""The VAE decoder recomputed one layer at a time gives the gradients of the plain decoder."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

from distar.backends.build import checkpoint_layer_by_layer


def decode_grads(vae: AutoencoderKL, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    latents = latents.clone().requires_grad_(True)
    image = vae.decode(latents, return_dict=False)[0]
    (image.square().mean()).backward()
    return image.detach(), latents.grad


def test_layer_by_layer_checkpointing_keeps_the_decoder_gradients():
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, layers_per_block=2,
    ).requires_grad_(False)
    latents = torch.randn(2, 4, 8, 8)
    plain = decode_grads(vae, latents)
    calls: list[str] = []

    def counted(block, *args):
        calls.append(type(block).__name__)
        return checkpoint_layer_by_layer(block, *args)

    vae.enable_gradient_checkpointing(counted)
    checkpointed = decode_grads(vae, latents)
    assert "UpDecoderBlock2D" in calls and "UNetMidBlock2D" in calls
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
