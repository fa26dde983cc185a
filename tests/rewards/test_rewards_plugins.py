"""Reward plugins: module:Class and entry-point names, the contract probe, and plugins in train, eval and
`distar rewards`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from distar.cli import main
from distar.config import ConfigError
from distar.rewards import RewardSpec, load_reward
from distar.rewards.plugins import probe_reward

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MODULE = "distar_test_plugin"

PLUGIN_SOURCE = '''
import torch
from distar.rewards.base import Reward


class Brightness(Reward):
    """offset + mean pixel value: a differentiable score in [offset, offset + 1]."""

    name = "brightness"

    def __init__(self, offset: float = 0.0) -> None:
        super().__init__()
        self.offset = offset

    def score(self, images, prompts):
        return self.offset + images.mean(dim=(1, 2, 3))


class Detached(Brightness):
    def score(self, images, prompts):
        return super().score(images, prompts).detach()


class WrongShape(Brightness):
    def score(self, images, prompts):
        return images.mean()


class NotAReward:
    pass
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A plugin module written to a temporary folder on sys.path; returns its name."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / f"{MODULE}.py").write_text(PLUGIN_SOURCE)
    (tmp_path / "plugins" / "distar_test_broken.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    yield MODULE
    for name in (MODULE, "distar_test_broken"):
        sys.modules.pop(name, None)


@pytest.fixture(autouse=True)
def fresh_accelerate():
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def train(out: Path, *overrides: str) -> int:
    quick = ["logging.progress_bar=false", "logging.every=1", "sampling.every=0", "checkpointing.every=0"]
    return main(["train", "--config", str(CONFIGS / "tiny_sd.yaml"), f"output_dir={out}", *quick, *overrides])


def test_plugin_reward_trains_a_tiny_run_with_its_score_in_the_log(plugin: str, tmp_path: Path) -> None:
    rewards = f"rewards=[{{name: '{plugin}:Brightness', options: {{offset: 100}}}}]"
    assert train(tmp_path / "run", rewards, "loop.max_steps=2") == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(100.0 <= r["generator/reward"] <= 101.0 for r in records)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("distar_test_broken:Anything", {}, "cannot import distar_test_broken (boom)"),
        ("distar_test_missing_module:X", {}, "cannot import distar_test_missing_module"),
        (f"{MODULE}:NotAReward", {}, "not a distar.rewards.base.Reward subclass"),
        (f"{MODULE}:Nothing", {}, "not a distar.rewards.base.Reward subclass"),
        (f"{MODULE}:Brightness", {"scale": 2}, "options ['scale'] do not fit"),
        (f"{MODULE}:Detached", {}, "no gradient to the images"),
        (f"{MODULE}:WrongShape", {}, "must return a (B,) tensor, got () for B = 1"),
    ],
)
def test_a_broken_plugin_is_refused_in_one_line_before_the_generator_loads(
    plugin: str, name: str, options: dict, message: str, tmp_path: Path, capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import distar.backends

    def no_generator(*args: object, **kwargs: object) -> None:
        raise AssertionError("the generator was loaded before the plugin was checked")

    monkeypatch.setattr(distar.backends, "build_backend", no_generator)
    assert train(tmp_path / "run", f"rewards=[{{name: '{name}', options: {json.dumps(options)}}}]") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_the_gradient_is_only_required_when_the_reward_is_trained_on(plugin: str) -> None:
    detached = load_reward(RewardSpec(f"{plugin}:Detached"))
    probe_reward(detached, "a cat", name="detached", differentiable=False)
    with pytest.raises(ConfigError, match="no gradient"):
        probe_reward(detached, "a cat", name="detached", differentiable=True)
    probe_reward(load_reward(RewardSpec(f"{plugin}:Brightness")), "a cat", name="b", differentiable=True)


def test_an_installed_entry_point_names_a_plugin(plugin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dist = tmp_path / "site" / "my_reward-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-reward\nVersion: 1.0\n")
    entry_points = f"[distar.rewards]\nmy-bright = {plugin}:Brightness\nclip = {plugin}:Detached\n"
    (dist / "entry_points.txt").write_text(entry_points)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    spec = RewardSpec("my-bright", options={"offset": 3})
    assert spec.is_plugin and not RewardSpec("clip").is_plugin  # a built-in name wins over an entry point
    reward = load_reward(spec)
    assert reward.device == torch.device("cpu") and reward.dtype == torch.float32
    assert float(reward.score(torch.ones(1, 3, 8, 8), ["x"])) == 4.0
    with pytest.raises(ConfigError, match="unknown reward 'my-brigth'"):
        RewardSpec("my-brigth")


def test_plugins_are_metrics_in_eval_and_score_folders_in_distar_rewards(
    plugin: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from distar.eval.metrics import metric_loaders, parse_metric_names

    name = f"{plugin}:Brightness"
    assert parse_metric_names(f"PickScore, {name}") == ["pickscore", name]
    (metric,) = metric_loaders([name], options={name: {"offset": 10}})
    assert metric.kind == "image" and float(metric.load().score(torch.zeros(1, 3, 8, 8), ["x"])) == 10.0
    with pytest.raises(ConfigError, match="not a reward plugin"):
        metric_loaders(["clip"], options={"clip": {"offset": 1}})

    images = tmp_path / "images"
    images.mkdir()
    for value in (0, 255):
        Image.new("RGB", (16, 16), (value,) * 3).save(images / f"{value:03d}.png")
    out = tmp_path / "scores.json"
    argv = ["rewards", "--images", str(images), "--prompts", "a cat", "--rewards", name, "--json", str(out)]
    assert main([*argv, "--options", f'{name}={{"offset": 1}}']) == 0
    assert json.loads(out.read_text())["scores"][name] == [1.0, 2.0]
    assert main([*argv, "--options", f"{name}=[1]"]) == 2
    assert "expected a JSON object" in capsys.readouterr().err
