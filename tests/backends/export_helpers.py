"""Training-checkpoint folders written the way the trainer writes them, and the images export tests compare."""

from __future__ import annotations

import json

import numpy as np
import torch
import yaml
from diffusers import DiffusionPipeline
from PIL import Image

from distar.backends.loading import absent_components
from distar.backends.lora import save_checkpoint_lora
from distar.backends.weights import trainable_state_dict
from distar.config import to_dict
from distar.export import one_step_schedule
from distar.train.checkpoint import save_tensors, write_manifest

PROMPT = "a small red house"


def backend_image(backend, seed):
    """decode(g(z, c)) for the seed's z and :data:`PROMPT`."""
    z = backend.sample_latents(1, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return backend.decode(backend.generate(z, backend.encode_prompts([PROMPT])))


def one_step(pipe, t_init, seed=0):
    """The pipeline's image of :data:`PROMPT`: one step at t_init, no CFG."""
    generator = torch.Generator().manual_seed(seed)
    kwargs = dict(num_inference_steps=1, guidance_scale=0.0, generator=generator, output_type="pt")
    return pipe(PROMPT, **one_step_schedule(pipe, t_init), **kwargs).images


def diffusers_image(folder, t_init, seed):
    """The exported folder run by plain diffusers: one step at t_init, no CFG."""
    return one_step(DiffusionPipeline.from_pretrained(folder, **absent_components(folder)), t_init, seed)


def read_png(path):
    return torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1).float() / 255


def write_checkpoint(run_dir, cfg, backend, perturb, step=5, ema=True):
    """A checkpoint folder in the trainer's layout, with generator weights moved away from the init."""
    folder = run_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": to_dict(cfg), "seed": 0}))
    params = list(backend.generator_parameters())
    perturb(params, seed=10)
    raw = {k: v.clone() for k, v in trainable_state_dict(backend.generator).items()}
    save_tensors(raw, folder / "generator.safetensors")
    averaged = None
    if ema:
        perturb(params, seed=11)  # the backend now holds the "EMA" weights
        averaged = {k: v.clone() for k, v in trainable_state_dict(backend.generator).items()}
        save_tensors(averaged, folder / "generator_ema.safetensors")
    save_checkpoint_lora(backend.generator, folder, raw, averaged)
    (folder / "trainer_state.json").write_text(json.dumps({"step": step}))
    write_manifest(folder)
    return folder, raw
