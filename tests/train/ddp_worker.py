"""Worker for test_train_multiprocess.py: `torchrun --nproc_per_node 2 ddp_worker.py OUT_DIR [SECTIONS]`.

Trains the Gaussian backend for two steps (checkpointing each) and writes what each rank saw and
its final generator parameters to OUT_DIR/rank<r>.json. SECTIONS, a JSON object of config sections,
replaces that run's settings (see :func:`worker_config`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from train_helpers import PROMPTS, GaussianBackend, MeanReward, make_config  # noqa: E402

from distar.train import Trainer  # noqa: E402


def worker_config(out: Path, sections: dict | None = None):
    """The run's config: two steps, a checkpoint after each, EMA; or ``sections`` instead."""
    if sections is None:
        sections = {"loop": {"max_steps": 2}, "checkpointing": {"every": 1}, "ema": {"decay": 0.9}}
    return make_config(out, **sections)


def main(out: Path, sections: dict | None = None) -> None:
    config = worker_config(out, sections)
    backend = GaussianBackend()
    trainer = Trainer(config, backend, MeanReward(), PROMPTS)
    acc = trainer.accelerator
    first_batch = PromptsSeen(trainer)
    records = trainer.train()
    report = {
        "rank": acc.process_index,
        "world_size": acc.num_processes,
        "distributed_type": str(acc.distributed_type),
        "wrapped": type(backend.generator).__name__,
        "prompts": first_batch.prompts,
        "generator": {k: v.tolist() for k, v in acc.unwrap_model(backend.generator).state_dict().items()},
        "records": records,
    }
    (out / f"rank{acc.process_index}.json").write_text(json.dumps(report))


class PromptsSeen:
    """Records the prompts this process draws (its data shard)."""

    def __init__(self, trainer: Trainer) -> None:
        self.prompts: list[str] = []
        draw = trainer.data.next_batch

        def recording() -> list[str]:
            batch = draw()
            self.prompts += batch
            return batch

        trainer.data.next_batch = recording


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(sys.argv[2]) if len(sys.argv) > 2 else None)
