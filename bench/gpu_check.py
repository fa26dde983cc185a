"""One-GPU check of the documented SDXL layouts with random weights: peak memory, step time, one-step
vs 50-step CFG generation. Needs no internet: the models are built from SDXL's published architecture.

    python bench/gpu_check.py                      # SDXL at 1024², batch 1, on cuda (about 35 GB of disk)
    python bench/gpu_check.py --size tiny --device cpu --iterations 1   # the same code on tiny models

For each layout of docs/backends.md ("SDXL on one GPU" and "Layouts and what they cost") it builds
distar's Trainer on a pipeline folder written here (SDXL UNet, VAE and both text encoders with random
weights; a character-level tokenizer), runs ``--iterations`` Algorithm 1 iterations with the recipe's
settings (DI*, CFG 7.5, 5 assistant steps, EMA, bf16 frozen weights and autocast, 8-bit Adam when
bitsandbytes is installed) and prints the peak of ``torch.cuda.max_memory_allocated`` and the median
time per iteration. The reward is left out (its model would need a download); its memory is not in
the figures. Then it times one-step generation (generator + VAE decode) against ``--steps``-step CFG
sampling with the diffusers pipeline, for ``--images`` images.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from distar.config import load_config
from distar.runtime import environment
from distar.testing.pipelines import save_tiny_pipeline
from distar.testing.tokenizers import TINY_CLIP_VOCAB_SIZE, save_tiny_clip_tokenizer
from distar.train import TrainConfig, build_trainer

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sdxl_dmd2_pickscore.yaml"

#: stabilityai/stable-diffusion-xl-base-1.0: unet/config.json, vae/config.json, text_encoder(_2)/config.json.
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SDXL_VAE = dict(
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=1024,
    scaling_factor=0.13025, force_upcast=True,
)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              hidden_act="quick_gelu", projection_dim=768)
CLIP_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                 hidden_act="gelu", projection_dim=1280)
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 steps_offset=1, timestep_spacing="leading")

#: name -> model-section overrides on top of the recipe (configs/sdxl_dmd2_pickscore.yaml).
LAYOUTS = {
    "recipe: shared LoRA-64 assistant": [],
    "LoRA-64 assistant on a copy": ["model.assistant_lora_shared=false"],
    "full assistant copy (DMD2's)": ["model.assistant_lora_rank=0"],
    "LoRA-64 generator + shared assistant": ["model.generator_lora_rank=64"],
    "recipe without checkpointing": ["model.gradient_checkpointing=false"],
}


def text_config(**arch: object) -> CLIPTextConfig:
    """A CLIP text encoder of the given architecture, with the tokenizer's bos/eos ids."""
    eos = TINY_CLIP_VOCAB_SIZE - 1
    return CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, bos_token_id=eos - 1, eos_token_id=eos,
                          pad_token_id=eos, **arch)


def write_sdxl(folder: Path) -> Path:
    """SDXL base with random weights (float16 files), saved as a diffusers pipeline folder."""
    tokenizer = save_tiny_clip_tokenizer(folder / "tokenizer")
    torch.manual_seed(0)
    pipe = StableDiffusionXLPipeline(
        vae=AutoencoderKL(**SDXL_VAE),
        text_encoder=CLIPTextModel(text_config(**CLIP_L)),
        text_encoder_2=CLIPTextModelWithProjection(text_config(**CLIP_BIGG)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=UNet2DConditionModel(**SDXL_UNET),
        scheduler=EulerDiscreteScheduler(**SCHEDULER),
    )
    pipe.to(torch.float16).save_pretrained(folder)
    return folder


def run_layout(folder: Path, size: str, device: str, overrides: list[str], iterations: int) -> tuple[float, float]:
    """(peak allocated GiB or nan off CUDA, median seconds per iteration) of one layout."""
    import importlib.util

    from accelerate.state import AcceleratorState

    tiny = size == "tiny"
    with tempfile.TemporaryDirectory() as out:
        config = load_config(TrainConfig, CONFIG, [
            f"model.pretrained={folder}", "model.variant=null", "model.generator_init=null", "rewards=[]",
            "objective.reward_scale=0", "data.source=null", "data.batch_size=1", f"output_dir={out}",
            "sampling.every=0", "checkpointing.every=0", "checkpointing.save_final=false",
            "logging.report_to=none", "logging.progress_bar=false", f"loop.max_steps={iterations + 1}",
            f"loop.cpu={str(device == 'cpu').lower()}",
            f"optim.use_8bit_adam={str(importlib.util.find_spec('bitsandbytes') is not None and device != 'cpu').lower()}",
            *(["model.resolution=16", "loop.mixed_precision='no'", "loop.assistant_steps=1"] if tiny else []),
            "data.prompts=[a photo of an astronaut riding a horse on the moon, a watercolour fox]", *overrides,
        ])
        trainer = build_trainer(config)
        trainer.train_step()  # warm-up
        if device != "cpu":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(iterations):
            tick = time.perf_counter()
            trainer.train_step()
            if device != "cpu":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - tick)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device != "cpu" else float("nan")
        del trainer
        AcceleratorState._reset_state(reset_partial_state=True)
        gc.collect()
        if device != "cpu":
            torch.cuda.empty_cache()
        return peak, statistics.median(times)


def generation_seconds(folder: Path, device: str, images: int, steps: int) -> tuple[float, float]:
    """(one step without CFG, ``steps`` steps with CFG 7.5) seconds for ``images`` decoded images."""
    dtype = torch.float32 if device == "cpu" else torch.float16
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a photo of a cat"] * images

    def timed(**kwargs: object) -> float:
        generator = torch.Generator(device).manual_seed(0)
        tick = time.perf_counter()
        pipe(prompts, generator=generator, **kwargs)
        if device != "cpu":
            torch.cuda.synchronize()
        return time.perf_counter() - tick

    timed(num_inference_steps=1, guidance_scale=0.0)  # warm-up
    return timed(num_inference_steps=1, guidance_scale=0.0), timed(num_inference_steps=steps, guidance_scale=7.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("sdxl", "tiny"), default="sdxl")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--images", type=int, default=2, help="images per generation timing")
    parser.add_argument("--steps", type=int, default=50, help="steps of the CFG sampler")
    parser.add_argument("--layouts", nargs="*", choices=list(LAYOUTS), default=list(LAYOUTS))
    args = parser.parse_args(argv)
    env = environment()
    print(f"{env['device']}, torch {env['torch']}, diffusers {env['diffusers']}; {args.size}, batch 1", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pipe"
        tick = time.perf_counter()
        write_sdxl(folder) if args.size == "sdxl" else save_tiny_pipeline(folder, "sdxl")
        print(f"random-weight pipeline written in {time.perf_counter() - tick:.0f} s", flush=True)
        print(f"{'layout':<38} {'peak GiB':>9} {'s / iteration':>14}", flush=True)
        for name in args.layouts:
            peak, seconds = run_layout(folder, args.size, args.device, LAYOUTS[name], args.iterations)
            print(f"{name:<38} {peak:9.2f} {seconds:14.3f}", flush=True)
        one, many = generation_seconds(folder, args.device, args.images, args.steps)
        print(f"\n{args.images} image(s): one step {one:.3f} s, {args.steps}-step CFG {many:.3f} s, ratio {one / many:.4f}")


if __name__ == "__main__":
    sys.exit(main())
