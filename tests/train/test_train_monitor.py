"""The training monitor: held-out records, the alarm, the best checkpoint, its pictures, exact resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from train_helpers import GaussianBackend, MeanReward, make_config

from distar.cli import main
from distar.config import ConfigError, from_dict
from distar.errors import HackingAlarm
from distar.train import checkpoint as ckpt
from distar.train.callbacks import KILL_ENV
from distar.train.config import MonitorConfig
from distar.train.loop import Trainer
from distar.train.monitor import held_out_split, paired_change

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny_sd.yaml"
TINY_MONITOR = [
    "loop.max_steps=8",
    "loop.assistant_steps=1",
    "checkpointing.every=2",
    "checkpointing.total_limit=2",
    "sampling.every=0",
    "logging.progress_bar=false",
    "monitor.every=2",
    "monitor.prompts=2",
    "monitor.drift_steps=3",
    "monitor.judges=[{name: clip, path: tiny}]",
]


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "monitor.jsonl").read_text().splitlines()]


def monitored(out: Path) -> list[tuple[int, str]]:
    return [(r["step"], r["model"]) for r in records(out)]


def distar_train(out: Path, *, kill_at: str | None = None, resume: bool = False) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", KILL_ENV: kill_at or ""}
    cmd = [sys.executable, "-m", "distar", "train", "--config", str(CONFIG), f"output_dir={out}", *TINY_MONITOR]
    result = subprocess.run(cmd + (["--resume", "latest"] if resume else []), env=env, capture_output=True, text=True)
    assert result.returncode == (-signal.SIGKILL if kill_at else 0), result.stderr[-2000:]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """configs/tiny_sd.yaml (EMA on) with a tiny CLIP judge, monitored every 2 steps, uninterrupted."""
    out = tmp_path_factory.mktemp("monitor") / "run"
    assert main(["train", "--config", str(CONFIG), f"output_dir={out}", *TINY_MONITOR]) == 0
    AcceleratorState._reset_state(reset_partial_state=True)
    return out


def test_a_tiny_sd_run_monitors_every_step_once_and_keeps_a_verified_best(tiny_run):
    assert monitored(tiny_run) == [(s, m) for s in (0, 2, 4, 6, 8) for m in ("generator", "ema")]
    first = records(tiny_run)[0]
    for name in ("reward/pickscore", "judge/clip", "diversity", "prompt_diversity", "drift"):
        assert math.isfinite(first["mean"][name]) and len(first["per_prompt"][name]) == 2
    decided = [r for r in records(tiny_run) if r.get("decides")]
    assert all(r["model"] == "ema" for r in decided)  # the EMA is what export uses, so it is what is selected
    best_steps = [r["step"] for r in decided if r["best"]]
    assert best_steps[0] == 0  # step 0 is the baseline every later step must beat
    best = json.loads((tiny_run / "best.json").read_text())
    assert best["step"] == best_steps[-1]
    assert ckpt.verify_checkpoint(tiny_run / "best") is None
    assert json.loads((tiny_run / "best" / ckpt.TRAINER_STATE_FILE).read_text())["step"] == best["step"]
    assert [s for s, _ in ckpt.list_checkpoints(tiny_run)] == [6, 8]  # best/ is not pruned with them, nor counted
    for picture in ("monitor.png", "monitor_grid.png"):
        assert (tiny_run / picture).stat().st_size > 1000
    assert (tiny_run / "monitor" / "reference.safetensors").is_file()  # the drift's reference images, cached


def test_export_best_and_generate_from_it(tiny_run, tmp_path):
    assert main(["export", str(tiny_run), "--best", "--out", str(tmp_path / "best_export")]) == 0
    meta = json.loads((tmp_path / "best_export" / "distar.json").read_text())
    assert meta["step"] == json.loads((tiny_run / "best.json").read_text())["step"]
    assert main(["generate", "--model", str(tiny_run / "best"), "--prompt", "a cat", "--out", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").is_file()


def test_export_best_without_a_best_checkpoint_is_one_line(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["export", str(tmp_path / "run"), "--best", "--out", str(tmp_path / "x")]) == 2
    assert "has no best/ checkpoint" in capsys.readouterr().err


def test_kill_during_a_monitor_pass_then_resume_monitors_each_step_exactly_once(tiny_run, tmp_path):
    out = tmp_path / "run"
    # step 4: killed between its generator and EMA records (before checkpoint-4); step 6: the same
    for i, point in enumerate(["monitor:4", "monitor:6"]):
        distar_train(out, kill_at=point, resume=i > 0)
    distar_train(out, resume=True)
    assert monitored(out) == monitored(tiny_run)
    for got, want in zip(records(out), records(tiny_run)):
        assert got["mean"] == pytest.approx(want["mean"], rel=1e-6, abs=1e-9)
    assert json.loads((out / "best.json").read_text()) == json.loads((tiny_run / "best.json").read_text())


#: Prompts of different lengths: the Gaussian backend's conditioning is the length.
PROMPTS = [f"prompt {'x' * i}" for i in range(12)]


def gaussian_trainer(tmp_path, **monitor) -> Trainer:
    config = make_config(
        tmp_path / "run",
        objective={"preset": "di_star", "reward_scale": 200.0},
        loop={"max_steps": 8, "assistant_steps": 1},
        data={"prompts": PROMPTS},
        monitor={"every": 2, "prompts": 3, "seeds": [0, 1, 2], "drift_steps": 0, **monitor},
    )
    return Trainer(config, GaussianBackend(image=True), MeanReward(), PROMPTS)


def test_the_alarm_fires_once_per_spell_and_names_what_moved(tmp_path, caplog):
    trainer = gaussian_trainer(tmp_path, z=2.0, judges=[{"name": "train_helpers:BrightnessJudge"}], watch=["diversity"])
    trainer.train()  # the sigmoid saturates: brighter images are also more alike
    decided = [r for r in records(tmp_path / "run") if r.get("decides")]
    assert [r["step"] for r in decided if r["alarm"]] == [2]
    assert all(r["streak"] for r in decided[1:]) and decided[-1]["alarms"] == [2]
    lines = [m for m in caplog.messages if "reward hacking alarm" in m]
    assert len(lines) == 1 and "diversity" in lines[0] and "\n" not in lines[0]


def test_the_alarm_fires_when_the_reward_rises_while_a_judge_falls_and_stop_exits_3(tmp_path, caplog):
    trainer = gaussian_trainer(
        tmp_path, z=2.0, stop=True, judges=[{"name": "train_helpers:BrightnessJudge", "options": {"sign": -1.0}}]
    )
    with pytest.raises(HackingAlarm) as err:
        trainer.train()
    assert err.value.exit_code == 3
    assert "reward hacking alarm" in str(err.value) and "judge/brightness" in str(err.value)
    assert "saving" in str(err.value)
    stopped = trainer.step
    assert stopped < 8 and [s for s, _ in ckpt.list_checkpoints(tmp_path / "run")] == [stopped]
    alarms = [r for r in records(tmp_path / "run") if r.get("alarm")]
    assert [r["step"] for r in alarms] == [stopped]
    assert alarms[0]["worse"]["judge/brightness"] > 2.0


def test_no_alarm_when_the_judge_agrees_and_the_best_is_the_highest_reward(tmp_path):
    trainer = gaussian_trainer(
        tmp_path, z=2.0, judges=[{"name": "train_helpers:BrightnessJudge"}], watch=["judges"], select="guarded"
    )
    trainer.train()
    decided = [r for r in records(tmp_path / "run") if r.get("decides")]
    assert not any(r["alarm"] for r in decided)
    rewards = {r["step"]: r["mean"]["reward"] for r in decided}
    assert json.loads((tmp_path / "run" / "best.json").read_text())["step"] == max(rewards, key=rewards.get)


def test_a_guarded_selection_skips_steps_where_the_judge_fell(tmp_path):
    trainer = gaussian_trainer(
        tmp_path, z=2.0, judges=[{"name": "train_helpers:BrightnessJudge", "options": {"sign": -1.0}}], watch=["judges"]
    )
    trainer.train()
    decided = [r for r in records(tmp_path / "run") if r.get("decides")]
    best = json.loads((tmp_path / "run" / "best.json").read_text())["step"]
    assert any(r["worse"] for r in decided)  # the judge fell somewhere ...
    assert not next(r for r in decided if r["step"] == best)["worse"]  # ... but not at the selected step


def test_the_monitor_does_not_change_the_training_draws(tmp_path):
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("a held-out prompt\nanother held-out prompt\n")
    logs = []
    for name, monitor in (("off", {"every": 0}), ("on", {"every": 2, "prompts": str(held_out), "drift_steps": 2})):
        config = make_config(
            tmp_path / name, loop={"max_steps": 6, "assistant_steps": 1}, data={"prompts": PROMPTS}, monitor=monitor
        )
        Trainer(config, GaussianBackend(image=True), MeanReward(), PROMPTS).train()
        logs.append([{k: v for k, v in r.items() if not k.startswith(("time/", "mem/"))}
                     for r in map(json.loads, (tmp_path / name / "log.jsonl").read_text().splitlines())])
        AcceleratorState._reset_state(reset_partial_state=True)
    assert logs[0] == logs[1]
    assert monitored(tmp_path / "on") == [(s, "generator") for s in (0, 2, 4, 6)]


def test_held_out_prompts_are_never_trained_on():
    prompts = [f"p{i}" for i in range(20)] * 3
    train, held = held_out_split(prompts, MonitorConfig(prompts=4), seed=1)
    assert len(held) == 4 and not set(held) & set(train) and len(train) == 48
    assert [p for p in train] == [p for p in prompts if p not in held]  # the order of the rest is kept
    assert held_out_split(prompts, MonitorConfig(prompts=4), seed=1)[1] == held  # the same set on resume
    assert held_out_split(prompts, MonitorConfig(prompts=6), seed=1)[1] == []  # 20 distinct prompts cannot spare 6


def test_a_lazy_prompt_table_keeps_its_rows_in_place(tmp_path):
    from distar.train.data import index_text_file

    file = tmp_path / "prompts.txt"
    file.write_text("".join(f"prompt {i}\n" for i in range(1000)))
    table = index_text_file(file)
    train, held = held_out_split(table, MonitorConfig(prompts=16), seed=3)
    assert len(held) == 16 and len(train) == 984
    assert list(train) == [p for p in (table[i] for i in range(1000)) if p not in held]


def test_paired_change_is_the_mean_and_standard_error_of_the_differences():
    mean, se = paired_change([2.0, 3.0, 5.0], [1.0, 1.0, 1.0])
    assert mean == pytest.approx(7 / 3)
    assert se == pytest.approx(torch.tensor([1.0, 2.0, 4.0]).std().item() / math.sqrt(3))
    assert math.isnan(paired_change([1.0], [0.0])[1])


@pytest.mark.parametrize(
    "section, message",
    [
        ({"watch": ["vibes"]}, "watch: unknown 'vibes'"),
        ({"select": "hpsv2"}, "select: 'hpsv2' is not guarded, none or a judge"),
        ({"seeds": [1, 1]}, "seeds must be distinct"),
        ({"judges": [{"name": "no_such_module:Judge"}]}, "cannot import no_such_module"),
    ],
)
def test_monitor_config_errors_are_one_line(section, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(MonitorConfig, section, prefix="monitor.")
