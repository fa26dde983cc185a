"""Train, resume, export and generate from Python (docs/python.md), on tiny random SD models that
distar builds locally: no GPU, no downloads, well under a minute on one CPU core.

    python examples/train_in_python.py       # writes runs/python_api/ in the working folder

Each `# %%` block is one notebook cell (`jupytext --to notebook examples/train_in_python.py` writes
the notebook; VS Code runs the cells as they are).
"""

from pathlib import Path

from distar.config import load_config
from distar.export.pipeline import export_checkpoint, generator_images, load_generator
from distar.runtime import quiet_libraries
from distar.train import TrainConfig, build_trainer
from distar.train.logs import save_png

quiet_libraries()  # as distar's commands do: no weight-loading bars or notices that say nothing about the run
OUT = Path("runs/python_api")

# %%
# A config as a dict, with the keys of a YAML config (load_config also reads a file:
# load_config(TrainConfig, "configs/tiny_sd.yaml", ["loop.max_steps=2"])).
CONFIG = {
    "model": {"family": "sd", "pretrained": "tiny:sd"},  # a tiny random SD pipeline, built on first use
    "rewards": [{"name": "pickscore", "path": "tiny"}],  # a tiny random PickScore
    "objective": {"preset": "di_star"},  # pseudo-Huber divergence, α = 100, inner CFG ω = 7.5
    "data": {"prompts": ["a photo of a cat", "a red bicycle", "a lighthouse at dusk", "a bowl of ramen"],
             "batch_size": 2},
    "loop": {"max_steps": 2, "assistant_steps": 1, "mixed_precision": "no"},
    "checkpointing": {"every": 2},
    "sampling": {"every": 2, "seeds": [0, 1]},  # sample grids in OUT/run/samples/
    "logging": {"every": 1, "report_to": "none", "progress_bar": False},
    "output_dir": str(OUT / "run"),
}

# %%
# Train: build the backend, reward and prompts, then run to loop.max_steps (one record per step).
config = load_config(TrainConfig, CONFIG)
trainer = build_trainer(config)
records = trainer.train(overwrite=True)  # overwrite: replace this example's earlier run, if any
print("trained:", [(r["step"], round(r["generator/loss"], 4)) for r in records])

# %%
# Resume: a longer run in the same folder continues from its latest checkpoint. A second trainer in
# the same process may use another loop.mixed_precision (or loop.cpu): this one runs under bf16 autocast.
resumed_config = load_config(TrainConfig, CONFIG, ["loop.max_steps=4", "loop.mixed_precision=bf16"])
resumed_trainer = build_trainer(resumed_config)
resumed = resumed_trainer.train(resume="latest")
print("resumed:", [r["step"] for r in resumed], "in", resumed_trainer.accelerator.mixed_precision)

# %%
# Export: the latest checkpoint (EMA weights) as a plain diffusers pipeline folder with a model card.
export = export_checkpoint(OUT / "run", OUT / "export", overwrite=True)

# %%
# Generate: one network evaluation per image, from the export (a checkpoint or run folder loads too).
pipe, call = load_generator(export)
pipe.set_progress_bar_config(disable=True)
images = generator_images(pipe, ["a photo of a cat"], [0], call=call)  # (B, 3, H, W) in [0, 1]
save_png(images[0], OUT / "cat.png")
print("wrote", OUT / "cat.png", tuple(images.shape))
