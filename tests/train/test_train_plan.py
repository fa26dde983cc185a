"""`distar plan`: the estimate per phase, the cheapest options tried in order, and FSDP's per-process figure."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

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
    assert tried == ["+ 8-bit AdamW", "+ gradient checkpointing"]  # FSDP2 takes this layout as it is
    assert code == 1 and "does not fit even with FSDP over 64 processes" in out


def test_unknown_hub_models_are_refused_in_one_line(capsys):
    assert main(["plan", "--config", str(CONFIGS / "tiny_sd.yaml"), "model.pretrained=someone/model"]) == 2
    assert "no architecture of 'someone/model' offline" in capsys.readouterr().err


def tiny_config(*overrides: str) -> TrainConfig:
    return load_config(TrainConfig, CONFIGS / "tiny_sd.yaml", ["rewards=[]", "objective.reward_scale=0", *overrides])


def test_the_memory_check_of_a_training_run_says_whether_the_estimate_fits():
    fits, line = plan.memory_check(tiny_config(), GIB)
    assert fits and line.startswith("memory estimate ≈ ") and line.endswith("fits the GPU's 1.0 GiB")
    fits, line = plan.memory_check(tiny_config(), 2**20)
    assert not fits and "more than the GPU's 1.0 MiB less 10%" in line and "loop.plan_memory=false" in line


def test_only_rank_zero_of_a_gpu_run_checks_its_memory(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: SimpleNamespace(total_memory=24 * GIB))
    monkeypatch.delenv("RANK", raising=False)
    assert plan.training_gpu_memory(tiny_config()) == 24 * GIB
    assert plan.training_gpu_memory(tiny_config("loop.plan_memory=false")) is None
    monkeypatch.setenv("RANK", "1")
    assert plan.training_gpu_memory(tiny_config()) is None


def test_a_cpu_run_makes_no_memory_check(monkeypatch, caplog):
    import torch

    def no_cuda(index):
        raise AssertionError("a CPU run asked for the GPU's memory")

    monkeypatch.setattr(torch.cuda, "get_device_properties", no_cuda)
    plan.check_training_memory(tiny_config("loop.cpu=true"))
    assert "memory estimate" not in caplog.text


def test_a_training_run_that_will_not_fit_is_warned_before_its_first_step(monkeypatch, caplog):
    monkeypatch.setattr(plan, "training_gpu_memory", lambda config: 2**20)
    with caplog.at_level("INFO", logger="distar"):
        plan.check_training_memory(tiny_config())
    [record] = [r for r in caplog.records if "memory estimate" in r.getMessage()]
    assert record.levelname == "WARNING" and "more than the GPU's 1.0 MiB" in record.getMessage()


def test_fsdp_needs_only_the_shared_layouts_drift_images_off():
    """FSDP2 keeps the EMA and shards the shared-LoRA layout; the monitor's drift images, made by one
    process from the sharded reference, are what it cannot run."""

    def needs(*overrides: str) -> list[str]:
        config = load_config(TrainConfig, CONFIGS / "tiny_sd.yaml", ["monitor.every=2", *overrides])
        return [option.overrides[0] for option in plan.fsdp_needs(config)]

    assert needs() == []  # the assistant is a separate copy
    assert needs("model.assistant_lora_rank=4") == ["monitor.drift_steps=0"]
    assert needs("model.assistant_lora_rank=4", "monitor.drift_steps=0") == []
    assert needs("model.assistant_lora_rank=4", "model.assistant_lora_shared=false") == []
    assert needs("model.assistant_lora_rank=4", "monitor.every=0") == []
