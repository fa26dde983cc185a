"""`distar plan`: the estimate per phase, the cheapest options tried in order, and FSDP's per-process figure."""

from __future__ import annotations

from pathlib import Path

import pytest

from distar.cli import main
from distar.commands import plan
from distar.config import load_config
from distar.errors import UserError
from distar.train.config import TrainConfig
from distar.train.memory import MemoryEstimate

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
GIB = 2**30


@pytest.mark.parametrize(
    "text, size", [("24GiB", 24 * GIB), ("24", 24 * GIB), ("80GB", 80 * 10**9), ("0.5 gib", GIB // 2), ("512MiB", 2**29)]
)
def test_sizes(text, size):
    assert plan.parse_size(text) == size


def test_a_size_that_cannot_be_read():
    with pytest.raises(UserError, match="--gpu-memory: cannot read '24 potatoes'"):
        plan.parse_size("24 potatoes")


def test_options_apply_only_where_the_config_lacks_them():
    config = load_config(TrainConfig, CONFIGS / "sdxl_dmd2_pickscore.yaml")
    names = [o.name for o in plan.OPTIONS if o.applies(config)]
    assert names == ["no EMA", "LoRA-64 generator"]
    bare = load_config(TrainConfig, CONFIGS / "tiny_sd.yaml", ["ema.decay=0.0"])
    assert "no EMA" not in [o.name for o in plan.OPTIONS if o.applies(bare)]


def test_fsdp_takes_the_fewest_processes_that_fit():
    found = MemoryEstimate(
        peak=100 * GIB, peak_phase="generator step backward", resident=80 * GIB, warm_up_peak=80 * GIB,
        trainable={"generator weights": 20 * GIB, "generator optimiser states": 40 * GIB, "EMA": 20 * GIB},
    )
    assert plan.sharded_state(found) == 100 * GIB  # the state plus the generator's gradients
    assert plan.fsdp_processes(found, 20 * GIB) == (8, int(100 * GIB - 7 / 8 * 100 * GIB))  # 4 give 25 GiB
    assert plan.fsdp_processes(found, 1 * GIB) is None


def test_a_config_that_fits(capsys):
    assert main(["plan", "--config", str(CONFIGS / "tiny_sd.yaml"), "--gpu-memory", "1GiB", "rewards=[]",
                 "objective.reward_scale=0"]) == 0
    out = capsys.readouterr().out
    assert "fits: ≈" in out and "generator step backward" in out and "generator weights" in out


def test_a_config_that_does_not_fit_tries_the_options_in_order(capsys):
    overrides = [
        "rewards=[]", "objective.reward_scale=0", "model.offload_text_encoders=true", "model.dtype=bfloat16",
        "model.gradient_checkpointing=false",
    ]
    code = main(["plan", "--config", str(CONFIGS / "tiny_sd.yaml"), "--gpu-memory", "0.01MiB", *overrides])
    out = capsys.readouterr().out
    tried = [line.split(":")[0].strip() for line in out.splitlines() if line.startswith("  + ")]
    assert tried == ["+ 8-bit AdamW", "+ gradient checkpointing", "+ no EMA under FSDP"]  # FSDP keeps no EMA
    assert code == 1 and "does not fit even with FSDP over 64 processes" in out


def test_unknown_hub_models_are_refused_in_one_line(capsys):
    assert main(["plan", "--config", str(CONFIGS / "tiny_sd.yaml"), "model.pretrained=someone/model"]) == 2
    assert "no architecture of 'someone/model' offline" in capsys.readouterr().err
