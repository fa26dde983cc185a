"""Worker for test_train_multinode.py: one node of a two-node run on this machine.

``torchrun --nnodes 2 --nproc_per_node 1 --node_rank R ... node_worker.py RUN_DIR REPORT [--resume | --overwrite] [--fsdp]``
trains the Gaussian backend for four steps (a checkpoint every two) in RUN_DIR, this node's own run
folder, and writes this rank's final generator weights and records to REPORT. A refused start prints
``refused: <message>`` and exits 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from train_helpers import PROMPTS, GaussianBackend, MeanReward, make_config  # noqa: E402

from distar.config import ConfigError  # noqa: E402
from distar.train import Trainer  # noqa: E402
from distar.train.callbacks import FaultHook  # noqa: E402

SECTIONS = {"loop": {"max_steps": 4}, "checkpointing": {"every": 2}, "ema": {"decay": 0.9}, "data": {"batch_size": 2}}


def main(run_dir: Path, report: Path, flags: list[str]) -> int:
    resume, overwrite = "--resume" in flags, "--overwrite" in flags
    sections = {**SECTIONS, "loop": {**SECTIONS["loop"], "fsdp": "--fsdp" in flags}}
    try:
        hook = FaultHook.from_env()  # $DISTAR_KILL_AT, as `distar train` reads it
        config = make_config(run_dir, **sections)
        trainer = Trainer(config, GaussianBackend(), MeanReward(), PROMPTS, callbacks=[hook] if hook else [])
        records = trainer.train(resume="latest" if resume else None, overwrite=overwrite)
    except ConfigError as err:
        print(f"refused: {err}", file=sys.stderr)
        return 2
    generator = trainer.accelerator.unwrap_model(trainer.backend.generator)
    report.write_text(json.dumps({
        "nodes": [trainer.nodes.count, trainer.nodes.shared],
        "generator": {k: v.tolist() for k, v in generator.state_dict().items()},
        "records": records,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]))
