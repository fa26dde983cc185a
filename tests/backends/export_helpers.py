"""Training-checkpoint folders written the way the trainer writes them, and the images export tests compare."""

from __future__ import annotations

import json

import numpy as np
import torch
import yaml
from diffusers import DiffusionPipeline, FluxPipeline, StableDiffusion3Pipeline
from PIL import Image

from distar.backends.loading import absent_components
from distar.backends.lora import save_checkpoint_lora
from distar.backends.weights import trainable_state_dict
from distar.config import to_dict
from distar.export.pipeline import generator_call
from distar.train.checkpoint import save_tensors, write_manifest

PROMPT = "a small red house"


def backend_image(backend, seed):
    """decode(x0) after the generator's k steps from the seed's z, for :data:`PROMPT` (re-noising
    drawn as the pipelines draw it)."""
    generator = torch.Generator().manual_seed(seed)
    z = backend.sample_latents(1, generator)
    torch.manual_seed(seed)
    # SD3 and FLUX re-noise from the global RNG; LCM and SANA's scheduler step from the call's generator
    noise = None if isinstance(backend.pipe, (StableDiffusion3Pipeline, FluxPipeline)) else [generator]
    with torch.no_grad():
        return backend.decode(backend.sample(z, backend.encode_prompts([PROMPT]), noise))


def one_step(pipe, call, seed=0):
    """The pipeline's image of :data:`PROMPT` run with ``call`` (a ``distar.json``'s
    ``generator_call``, or an int: one UNet step at that t_init); torch's global RNG (SD3's and FLUX's
    re-noising) seeded with the seed too."""
    call = generator_call({"t_init": call}) if isinstance(call, int) else call
    torch.manual_seed(seed)
    return pipe(PROMPT, generator=torch.Generator().manual_seed(seed), output_type="pt", **call).images


def diffusers_image(folder, seed):
    """The exported folder run by plain diffusers with the call its ``distar.json`` records."""
    call = generator_call(json.loads((folder / "distar.json").read_text()))
    return one_step(DiffusionPipeline.from_pretrained(folder, **absent_components(folder)), call, seed)


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
