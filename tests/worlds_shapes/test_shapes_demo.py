"""DI* in the shapes world through the project's trainer and evaluation suite."""

from __future__ import annotations

import json

import pytest
import torch

from distar.objectives.presets import preset
from distar.rewards import RewardSpec, load_reward
from distar.train.build import build_trainer
from distar.worlds.shapes.assets import build_record
from distar.worlds.shapes.grammar import sample_prompts
from distar.protocols import BackendModel
from distar.worlds.shapes.one_step import OneStepLoop, train_config


def test_short_di_star_run_raises_the_learned_reward(shipped, tmp_path):
    torch.manual_seed(0)
    prompts = sample_prompts(8, seed=7)
    loop = OneStepLoop(steps=6, batch_size=4, generator_lr=2e-4, train_prompts=len(prompts), seed=0)
    config = train_config(
        shipped / "reference",
        preset("di_star", reward_scale=1000.0, guidance_scale=3.0),
        loop,
        prompts,
        tmp_path,
        build_record(shipped)["config"]["one_step"]["t_init"],
        reward=shipped / "reward",
        generator_init=shipped / "one_step",
        progress_bar=False,
    )
    trainer = build_trainer(config)
    reward = load_reward(RewardSpec("pickscore", path=str(shipped / "reward")))
    sampler = BackendModel(trainer.backend, "di_star")
    seeds = list(range(100, 100 + len(prompts)))

    def learned_reward() -> float:
        with torch.no_grad():
            return float(reward.score(sampler.generate_images(prompts, seeds), prompts).mean())

    before = learned_reward()
    records = trainer.train()
    after = learned_reward()
    assert len(records) == loop.steps and all(torch.isfinite(torch.tensor(r["generator/loss"])) for r in records)
    assert after > before + 0.005, (before, after)


def test_demo_writes_the_report(tiny_world, tmp_path, capsys):
    from distar.cli import main

    out = tmp_path / "demo"
    argv = [
        "demo", "--world", "shapes", "--out", str(out), "--steps", "1",
        f"models={tiny_world}", "train.batch_size=2", "eval_prompts=4", "seeds=[0, 1]",
        "reference_steps=2", "fid_reference_seeds=2", "training_seeds=2", "jobs=1", "extra=[]",
        "monitor.every=1", "monitor.prompts=4", "monitor.drift_steps=2",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.strip().splitlines()[-1] == f"report: {(out / 'report.md').resolve()}"
    assert "[run 6 of 6]" in printed
    report = json.loads((out / "report.json").read_text())
    trained = {"sim_s0", "sim_s1", "di_pp_a30_s0", "di_pp_a30_s1", "di_star_a30_s0", "di_star_a30_s1"}
    selected = {f"{run}_selected" for run in trained if report["models"][run]["monitor"]["best_step"] not in (None, 1)}
    assert set(report["models"]) == {"renders", "reference", "start", *trained, *selected}
    for run in trained:  # every run was monitored at steps 0 and 1; runs with a reward keep a selection
        monitored = report["models"][run]["monitor"]
        assert (monitored["best_step"] is None) == run.startswith("sim")
        assert set(monitored["rules"]) and all(isinstance(s, list) for s in monitored["rules"].values())
    for row in report["models"].values():
        for key in ("pickscore", "true_utility", "alignment", "fid", "diversity", "prompt_diversity", "open_diversity"):
            assert row[key] is not None, key
    stats = report["stats"]
    assert list(stats)[:3] == ["renders (ground truth)", "reference (2-step dpm++, CFG 3)", "one-step start"]
    mean, half = stats["DI* (α = 30)"]["pickscore"]
    seeds = [report["models"][f"di_star_a30_s{i}"]["pickscore"] for i in (0, 1)]
    assert abs(mean - sum(seeds) / 2) < 1e-9 and half > 0
    text = (out / "report.md").read_text()
    for heading in (
        "learned reward ↑", "FID ↓", "s / 10 images ↓", "docs/shapes.md", "Diff-Instruct++ (α = 30)", "steps clipped",
        "final against selected checkpoints", "hits", "false alarms", "misses", "](pareto.png)",
    ):
        assert heading in text, heading
    assert (out / "grid.png").is_file() and (out / "diversity.png").is_file() and (out / "pareto.png").is_file()
    assert set(report["monitor"]["alarms"]) == {"hits", "false_alarms", "misses", "quiet"}


def test_runs_are_planned_per_method_scale_and_seed():
    from distar.sweep import plan
    from distar.worlds.shapes.demo import Run, ShapesDemoConfig, sweep_and_base

    def plan_runs(cfg: ShapesDemoConfig) -> list[Run]:
        return [Run.of(r) for r in plan(*sweep_and_base(cfg))]

    cfg = ShapesDemoConfig(methods=["sim", "di_star"], reward_scale=10.0, sweep=[10.0, 30.0], training_seeds=2, extra=[])
    runs = plan_runs(cfg)
    assert [r.key for r in runs] == ["sim_s0", "sim_s1", "di_star_a10_s0", "di_star_a10_s1", "di_star_a30_s0", "di_star_a30_s1"]
    assert runs[-1].group == "DI* (α = 30)" and runs[0].group == "SIM"
    # extra settings come last, once, and are checked when the config is made
    cfg = ShapesDemoConfig(methods=["sim", "di_star"], reward_scale=10.0, training_seeds=1, extra=["di_star@10", "di_pp@300"])
    assert [r.key for r in plan_runs(cfg)] == ["sim_s0", "di_star_a10_s0", "di_pp_a300_s0"]
    for bad in (["di_star"], ["nope@3"], ["di_star@big"], ["sim@10"]):
        with pytest.raises(ValueError, match="extra"):
            ShapesDemoConfig(extra=bad)


def test_verdicts_name_reward_hacking():
    from distar.worlds.shapes.demo import START, verdicts

    spread = {"prompt_diversity": (0.3, 0.0)}
    stats = {
        START: {"pickscore": (0.2, 0.0), "true_utility": (-5.0, 0.0), "alignment": (0.8, 0.0), "open_diversity": (0.6, 0.0), **spread},
        "A": {"pickscore": (0.3, 0.01), "true_utility": (-6.0, 0.1), "alignment": (0.8, 0.05), "open_diversity": (0.2, 0.05), **spread},
        "B": {"pickscore": (0.3, 0.01), "true_utility": (-4.0, 0.1), "alignment": (0.81, 0.05), "open_diversity": (0.6, 0.05), **spread},
        "C": {"pickscore": (0.4, 0.01), "true_utility": (-4.0, 0.1), "alignment": (0.3, 0.05), "open_diversity": (0.0, 0.05), "prompt_diversity": (0.05, 0.01)},
    }
    a, b, c = verdicts(stats, ["A", "B", "C"], START)
    assert "reward hacking" in a and "; but open-attribute diversity fell. " in a
    assert "a real gain" in b and "kept" in b and "collapsed" not in b
    assert "**collapsed**" in c


def _record(step: int, **z: float) -> dict:
    """A deciding monitor record whose figures changed by z standard errors (SE 1)."""
    return {"step": step, "decides": True, "alarm": None, "change": {k: [v, 1.0] for k, v in z.items()}}


def test_alarms_are_counted_against_the_truth(tmp_path):
    from distar.train.monitor_replay import alarm_counts, read_run

    runs = {
        # the judge falls with the reward up at step 20, and alignment had fallen by then: a hit
        "hit": [_record(0), _record(20, reward=5, **{"judge/clip": -4, "metric/alignment": -3})],
        # an alarm while neither alignment nor true utility fell: a false alarm
        "false": [_record(0), _record(20, reward=5, diversity=-4, **{"metric/alignment": 0.5})],
        # the truth fell, the judge did not: a miss
        "miss": [_record(0), _record(20, reward=5, **{"judge/clip": -1, "metric/true_utility": -2})],
        "quiet": [_record(0), _record(20, reward=1)],
    }
    read = {}
    for name, records in runs.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "monitor.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        read[name] = read_run(folder, z=3.0)
    assert read["hit"]["rules"]["judge only"] == [20] and read["false"]["rules"]["judge only"] == []
    assert read["false"]["rules"]["judge + diversity (default)"] == [20]
    assert read["miss"]["truth_fell"] == [20] and read["quiet"]["truth_fell"] == []
    replayed = alarm_counts(list(read.values()), "judge + diversity (default)")
    assert replayed == {"hits": 1, "false_alarms": 1, "misses": 1, "quiet": 1}


def test_the_packaged_sweep_is_the_demos_training_and_distar_sweep_runs_it(shipped, tmp_path):
    from distar.cli import main
    from distar.config import from_dict, read_config_file
    from distar.sweep import SweepConfig
    from distar.worlds.shapes.demo import BASE_FILE, SWEEP_FILE, ShapesDemoConfig, run_config, settings, sweep_and_base

    sweep, base = sweep_and_base(ShapesDemoConfig(jobs=1))
    assert sweep == from_dict(SweepConfig, {**read_config_file(SWEEP_FILE), "config": None, "jobs": 1})
    packaged, folder = read_config_file(BASE_FILE), tmp_path / "runs" / "a"
    assert run_config(base, folder) == run_config(packaged, folder) and settings(base) == settings(packaged)
    out = tmp_path / "sweep"
    argv = [
        "sweep", "--sweep", str(SWEEP_FILE), "--grid", "objective.preset=[sim]", "--grid", "objective.reward_scale=[0.0]",
        "--seeds", "1", "--out", str(out), "loop.max_steps=2", "data.batch_size=2", "monitor.every=0",
        "shapes.eval_prompts=2", "shapes.eval_seeds=[0, 1]", "shapes.fid_reference_seeds=2",
    ]  # fmt: skip
    assert main(argv) == 0
    (point,) = json.loads((out / "results.json").read_text())["points"]
    assert point["per_seed"][0]["steps"] == 2 and (out / "runs" / point["folders"][0] / "generator").is_dir()
    assert point["per_seed"][0]["pickscore"] is not None  # each run evaluated by the world's evaluator
    text = (out / "report.md").read_text()  # the demo's sections need its tables: the report names the demo instead
    assert text.startswith("# Shapes world: DI* and its baselines") and "come from `distar demo --world shapes`" in text
    assert "## The comparison" not in text
