"""Worker for test_train_fsdp.py: `torchrun --nproc_per_node 2 fsdp_worker.py OUT_DIR SECTIONS [KILL]`.

Trains the Gaussian image backend (rank 1's reward NaN at step NAN_STEP) with the config sections SECTIONS (a JSON object, see
:func:`ddp_worker.worker_config`) and writes OUT_DIR/rank<r>.json: the bytes of the generator's
trainable parameters this rank holds and in all, their types and the step records (the weights are in
the run's checkpoints). With KILL, a JSON object ``{"rank": r, "at": "step:3"}``, rank r is killed there
(a :class:`~distar.train.callbacks.FaultHook`); with ``"resume": true`` in it the run resumes from its latest checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from ddp_worker import worker_config  # noqa: E402
from train_helpers import PROMPTS, GaussianBackend, MeanReward  # noqa: E402
from torch import Tensor  # noqa: E402

from distar.train import Trainer  # noqa: E402
from distar.train import distributed  # noqa: E402
from distar.train.callbacks import FaultHook  # noqa: E402


#: The step whose generator update rank 1's reward makes non-finite (see :class:`NaNAtStep`).
NAN_STEP = 2


class NaNAtStep(MeanReward):
    """MeanReward, but NaN for the samples of process ``rank`` in training step ``step`` (1-based):
    one process's non-finite loss must make every process skip that generator update."""

    def __init__(self, step: int, rank: int) -> None:
        super().__init__()
        self.step, self.rank = step, rank
        self.trainer: Trainer | None = None  # set once the trainer is made

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        value = super().score(images, prompts)
        trainer = self.trainer
        bad = trainer.step + 1 == self.step and trainer.accelerator.process_index == self.rank
        return value * float("nan") if bad else value


def main(out: Path, sections: dict, kill: dict) -> None:
    hooks = [FaultHook(kill["at"])] if kill.get("rank") == int(os.environ["RANK"]) else []
    backend, reward = GaussianBackend(image=True), NaNAtStep(NAN_STEP, rank=1)
    trainer = reward.trainer = Trainer(worker_config(out, sections), backend, reward, PROMPTS, callbacks=hooks)
    params = trainer.generator_params
    report = {
        "param_types": sorted({type(p).__name__ for p in params}),
        "local_bytes": distributed.local_bytes(params),
        "total_bytes": sum(p.numel() * p.element_size() for p in params),
        "records": trainer.train(resume="latest" if kill.get("resume") else None),
    }
    (out / f"rank{trainer.accelerator.process_index}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})
