"""Training-checkpoint folders written the way the trainer writes them, for export tests."""

from __future__ import annotations

import json

import yaml

from distar.backends.lora import save_checkpoint_lora
from distar.backends.weights import trainable_state_dict
from distar.config import to_dict
from distar.train.checkpoint import save_tensors, write_manifest

PROMPT = "a small red house"


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
