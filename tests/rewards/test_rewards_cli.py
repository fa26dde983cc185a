"""`distar rewards` end to end on tiny local models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distar.cli import main
from distar.rewards import load_reward


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("b.png", (32, 32)), ("a.png", (32, 32)), ("c.jpg", (40, 48))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def _model_args(tiny_paths: dict[str, Path], names: list[str]) -> list[str]:
    return [arg for n in names for arg in ("--model-path", f"{n}={tiny_paths[n]}")]


def test_scores_folder_with_prompt_file(tiny_paths, image_dir: Path, tmp_path: Path, capsys) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat\na blue dog\na green bird\n")
    out = tmp_path / "scores.json"
    names = ["pickscore", "imagereward"]
    code = main(["rewards", "--images", str(image_dir), "--prompts", str(prompts), "--rewards", ",".join(names),
                 *_model_args(tiny_paths, names), "--batch-size", "2", "--json", str(out)])
    assert code == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["image", *names]
    assert [line.split()[0] for line in table[1:]] == ["a.png", "b.png", "c.jpg", "mean"]
    record = json.loads(out.read_text())
    assert record["prompts"] == ["a red cat", "a blue dog", "a green bird"]
    # The CLI's numbers are the reward's own scores of the decoded files.
    reward = load_reward("pickscore", path=str(tiny_paths["pickscore"]))
    image = torch.from_numpy(np.array(Image.open(image_dir / "b.png"))).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        assert record["scores"]["pickscore"][1] == pytest.approx(float(reward.score(image, ["a blue dog"])), abs=1e-5)
    assert record["mean"]["imagereward"] == pytest.approx(np.mean(record["scores"]["imagereward"]))


def test_jsonl_pairs_and_single_prompt(tiny_paths, image_dir: Path, tmp_path: Path) -> None:
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text('{"image": "c.jpg", "prompt": "a cat"}\n{"image": "a.png", "prompt": "a dog"}\n')
    out = tmp_path / "pairs.json"
    assert main(["rewards", "--images", str(image_dir), "--prompts", str(jsonl), "--rewards", "aesthetic",
                 *_model_args(tiny_paths, ["aesthetic"]), "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert [Path(p).name for p in record["images"]] == ["c.jpg", "a.png"] and record["prompts"] == ["a cat", "a dog"]
    out2 = tmp_path / "single.json"
    assert main(["rewards", "--images", str(image_dir), "--prompts", "a photo", "--rewards", "clip,hpsv2.1",
                 *_model_args(tiny_paths, ["clip", "hpsv2.1"]), "--json", str(out2)]) == 0
    record = json.loads(out2.read_text())
    assert record["prompts"] == ["a photo"] * 3 and set(record["scores"]) == {"clip", "hpsv2.1"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--rewards", "pickscor"], "unknown reward 'pickscor'"),
        (["--rewards", "clip", "--model-path", "pickscore=x"], "--model-path 'pickscore=x'"),
        (["--rewards", "hpsv2", "--model-path", "hpsv2=/nonexistent", "--local-files-only"],
         "HPSv2 needs HPS_v2_compressed.pt"),
    ],
)
def test_user_errors_exit_2_with_one_line(image_dir: Path, extra: list[str], message: str, capsys) -> None:
    assert main(["rewards", "--images", str(image_dir), "--prompts", "a photo", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_prompt_count_mismatch(image_dir: Path, tmp_path: Path, capsys) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("only one\n")
    args = ["rewards", "--images", str(image_dir), "--prompts", str(prompts), "--model-path", "pickscore=tiny"]
    assert main(args) == 2
    assert "1 prompts but" in capsys.readouterr().err


def test_console_entry_point_offline(image_dir: Path) -> None:
    """As a user runs it: a subprocess, hub offline, default weights missing → one line, exit 2."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "distar", "rewards", "--images", str(image_dir), "--prompts", "x",
                             "--rewards", "imagereward"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "distar rewards: error: ImageReward needs ImageReward.pt (looked in THUDM/ImageReward): "
        "download it from the hub repo THUDM/ImageReward and pass path=..."
    )
