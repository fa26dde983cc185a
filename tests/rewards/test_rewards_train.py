"""`distar rewards train`: preference data layouts, the Bradley–Terry fit on learnable synthetic pairs, the
report, exact resume, and the output used as `pickscore` in training and scoring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from distar.cli import main
from distar.io import to_uint8
from distar.rewards.preference import agreement_stats, bradley_terry_loss, read_pairs
from distar.testing.reward_models import save_tiny_clip_model

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
#: Settings under which the tiny CLIP learns the synthetic preference in seconds.
FAST = ["lr=1e-3", "warmup_steps=5", "weight_decay=0", "heldout=0.25", "progress_bar=false"]


def write_pairs(folder: Path, *, prompts: int = 40, per_prompt: int = 6, seed: int = 0) -> Path:
    """A JSONL of pairs of noisy flat-colour images in which the brighter image is preferred (a tie when
    the brightnesses are within 0.05); image paths relative to the file."""
    generator = torch.Generator().manual_seed(seed)
    (folder / "images").mkdir(parents=True)
    lines = []
    for p in range(prompts):
        for k in range(per_prompt):
            brightness = torch.rand(2, generator=generator)
            names = []
            for i in range(2):
                tint = torch.rand(3, 1, 1, generator=generator) * 0.1
                noise = 0.05 * torch.randn(3, 32, 32, generator=generator)
                name = f"images/{p:03d}-{k}-{i}.png"
                Image.fromarray(to_uint8((0.7 * brightness[i] + tint + noise).clamp(0, 1))).save(folder / name)
                names.append(name)
            gap = float(brightness[0] - brightness[1])
            label = 0.5 if abs(gap) < 0.05 else (0 if gap > 0 else 1)
            record = {"prompt": f"picture {p}", "image_0": names[0], "image_1": names[1], "label": label}
            lines.append(json.dumps(record))
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "pairs.jsonl"


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("pairs"))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip_model(tmp_path_factory.mktemp("base"))


@pytest.fixture(autouse=True)
def fresh_accelerate():
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def train_reward(pairs: Path, base: Path, out: Path, *overrides: str, resume: bool = False) -> int:
    argv = ["rewards", "train", "--data", str(pairs), "--base", str(base), "--out", str(out)]
    return main(argv + (["--resume"] if resume else []) + [*FAST, *overrides])


def test_learns_a_learnable_preference_and_the_output_is_a_pickscore(
    pairs_file: Path, base: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "reward"
    assert train_reward(pairs_file, base, out, "steps=100") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["after"]["agreement"] >= 0.9 > report["before"]["agreement"]
    assert report["after"]["log_loss"] < report["before"]["log_loss"]
    assert report["heldout_pairs"] + report["train_pairs"] == len(read_pairs(pairs_file))
    assert sum(b["pairs"] for b in report["after"]["calibration"]) == report["heldout_pairs"]
    assert "held-out agreement" in capsys.readouterr().out and (out / "report.md").is_file()

    run = tmp_path / "run"
    rewards = f"rewards=[{{name: pickscore, path: '{out}'}}]"
    quick = ["logging.progress_bar=false", "logging.every=1", "sampling.every=0", "checkpointing.every=0"]
    argv = ["train", "--config", str(CONFIGS / "tiny_sd.yaml"), f"output_dir={run}", rewards, "loop.max_steps=1"]
    assert main(argv + quick) == 0
    assert "generator/reward" in json.loads((run / "log.jsonl").read_text().splitlines()[0])

    image = json.loads(pairs_file.read_text().splitlines()[0])["image_0"]
    scores = tmp_path / "scores.json"
    argv = ["rewards", "--images", str(pairs_file.parent / Path(image).parent), "--prompts", "picture 0",
            "--model-path", f"pickscore={out}", "--json", str(scores)]
    assert main(argv) == 0
    assert len(json.loads(scores.read_text())["scores"]["pickscore"]) == 2 * len(read_pairs(pairs_file))


def test_an_interrupted_run_resumes_exactly(
    pairs_file: Path, base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = ["steps=6", "checkpoint_every=2", "batch_size=4"]
    assert train_reward(pairs_file, base, tmp_path / "straight", *settings) == 0

    import distar.train.reward_model as trainer

    calls = []

    def interrupted(logits: torch.Tensor, wins: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 4:  # step 4 of 6: the last checkpoint is checkpoint-2
            raise KeyboardInterrupt
        return bradley_terry_loss(logits, wins)

    monkeypatch.setattr(trainer, "bradley_terry_loss", interrupted)
    assert train_reward(pairs_file, base, tmp_path / "split", *settings) == 130
    assert not (tmp_path / "split" / "report.json").exists()
    assert train_reward(pairs_file, base, tmp_path / "split", *settings) == 2  # a run is there: --resume it
    monkeypatch.setattr(trainer, "bradley_terry_loss", bradley_terry_loss)
    assert train_reward(pairs_file, base, tmp_path / "split", *settings, resume=True) == 0

    straight, split = (tmp_path / name for name in ("straight", "split"))
    assert (split / "log.jsonl").read_text() == (straight / "log.jsonl").read_text()
    a, b = (load_file(folder / "model.safetensors") for folder in (straight, split))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    reports = [json.loads((folder / "report.json").read_text()) for folder in (straight, split)]
    assert reports[0] == {**reports[1], "data": reports[0]["data"]}
    assert sorted(p.name for p in split.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]


def test_held_out_pairs_can_be_given_apart(pairs_file: Path, base: Path, tmp_path: Path) -> None:
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(line.replace('"images/', f'"{pairs_file.parent}/images/') + "\n"
                                for line in pairs_file.read_text().splitlines()[:10]))
    assert train_reward(pairs_file, base, tmp_path / "out", "steps=1", f"heldout_data={held_out}") == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (report["train_pairs"], report["heldout_pairs"]) == (len(read_pairs(pairs_file)), 10)


def test_ties_count_half_in_the_loss_and_the_report() -> None:
    logits, labels = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([0.0, 0.0, 0.5])
    stats = agreement_stats(logits, labels, bins=2)
    assert stats["agreement"] == 0.5 and stats["ties"] == 1
    assert stats["tie_aware_accuracy"] == pytest.approx((1 + 0.5) / 3)
    tie = bradley_terry_loss(torch.tensor([0.7]), torch.tensor([0.5]))
    half = (bradley_terry_loss(torch.tensor([0.7]), torch.tensor([1.0])) + bradley_terry_loss(
        torch.tensor([0.7]), torch.tensor([0.0]))) / 2
    assert torch.allclose(tie, half)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "a", "image_0": "x.png", "image_1": "x.png", "label": 2}', "label must be 0, 1 or 0.5"),
        ('{"prompt": "a", "image_0": "x.png", "label": 1}', "missing image_1"),
        ('{"prompt": "a", "image_0": "gone.png", "image_1": "x.png", "label": 1}', "image_0 not found"),
        ("not json", "not JSON"),
    ],
)
def test_bad_pairs_are_refused_in_one_line(
    line: str, message: str, base: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    (tmp_path / "pairs.jsonl").write_text(line + "\n")
    assert train_reward(tmp_path / "pairs.jsonl", base, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_pick_a_pic_parquet(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "a.jpg")
    jpg = (tmp_path / "a.jpg").read_bytes()
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        (tmp_path / "shard.parquet").write_bytes(b"PAR1")
        with pytest.raises(Exception, match="needs pyarrow"):
            read_pairs(tmp_path / "shard.parquet")
        return
    table = pa.table({
        "caption": ["a", "b", "c"], "jpg_0": [jpg] * 3, "jpg_1": [jpg] * 3,
        "label_0": [1.0, 0.5, 0.0], "label_1": [0.0, 0.5, 0.0],  # the last row has no choice
    })
    pq.write_table(table, tmp_path / "shard.parquet")
    pairs = read_pairs(tmp_path)
    assert [(p.prompt, p.label) for p in pairs] == [("a", 0.0), ("b", 0.5)]
    assert pairs[0].image_0 == jpg
