"""Worker for test_train_fsdp.py: `torchrun --nproc_per_node 2 fsdp_worker.py OUT_DIR SECTIONS [KILL]`.

Trains the Gaussian image backend with the config sections SECTIONS (a JSON object, see
:func:`ddp_worker.worker_config`) and writes OUT_DIR/rank<r>.json: the bytes of the generator's
trainable parameters this rank holds and in all, their types and the step records (the weights are in
the run's checkpoints). With KILL, a JSON object ``{"rank": r, "at": "step:3"}``, rank r is killed there
(``$DISTAR_KILL_AT``); with ``"resume": true`` in it the run resumes from its latest checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from ddp_worker import worker_config  # noqa: E402
from train_helpers import PROMPTS, GaussianBackend, MeanReward  # noqa: E402

from distar.train import Trainer  # noqa: E402
from distar.train import checkpoint as ckpt  # noqa: E402
from distar.train import distributed  # noqa: E402


def main(out: Path, sections: dict, kill: dict) -> None:
    if kill.get("rank") == int(os.environ["RANK"]):
        os.environ[ckpt.KILL_ENV] = kill["at"]
    backend = GaussianBackend(image=True)
    trainer = Trainer(worker_config(out, sections), backend, MeanReward(), PROMPTS)
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
