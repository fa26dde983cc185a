"""``distar eval`` end to end on tiny local models: a one-step export next to a 4-step CFG baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from distar.cli import main
from distar.eval.metrics import METRIC_NAMES
from distar.eval.report import COLUMNS


def _reference_images(folder, count=8):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def test_eval_two_tiny_pipelines_every_metric(tmp_path, tiny_pipelines, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube on a table\na blue ball\na green cat in the snow\n")
    _reference_images(tmp_path / "ref")
    out = tmp_path / "out"
    argv = [
        "eval",
        "--model", f"{tiny_pipelines['one']}::name=one_step",
        "--model", f"{tiny_pipelines['base']}::name=baseline,steps=4,guidance=7.5",
        "--benchmark", str(prompts),
        "--metrics", ",".join(METRIC_NAMES),
        "--out", str(out),
        "--seeds", "0,1",
        "--batch-size", "2",
        "--timing-images", "6",  # 3 timed batches per model
        "--fid-reference", str(tmp_path / "ref"),
        "--fid-resolution", "32",
        "--device", "cpu",
    ]
    for name in METRIC_NAMES:
        argv += ["--metric-path", f"{name}=tiny"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "prompts: 3 from" in printed

    summary = json.loads((out / "summary.json").read_text())
    assert [m["name"] for m in summary["models"]] == ["one_step", "baseline"]
    for row in summary["models"]:
        assert row["images"] == 6 and not row["failures"]
        assert all(np.isfinite(row["scores"][name]) for name in METRIC_NAMES), row["scores"]
        assert row["extras"]["fid_reference_images"] == 8 and row["extras"]["diversity_prompts"] == 3
    one, base = (m["cost"]["seconds_per_10_images"] for m in summary["models"])
    assert one < base  # 1 UNet evaluation per image against 4 × 2 (CFG), measured in this run
    assert summary["models"][0]["sampling"]["timesteps"] == [399]

    markdown = (out / "summary.md").read_text()
    assert "| Model | Steps | " + " | ".join(title for title, _ in COLUMNS.values()) in markdown
    assert "| one_step | 1 |" in markdown and "| baseline | 4 |" in markdown
    lines = [json.loads(l) for l in (out / "one_step" / "scores.jsonl").read_text().splitlines()]
    scored = [l for l in lines if "pickscore" in l]
    assert len(scored) == 6 and {(l["index"], l["seed"]) for l in scored} == {(i, s) for i in range(3) for s in (0, 1)}
    first = next(l for l in lines if l.get("new"))
    assert first["prompt"] == "a red cube on a table" and (out / first["image"]).is_file()
    assert Image.open(out / first["image"]).size == (16, 16)
    assert (out / "one_step" / "grid.png").is_file() and (out / "compare.png").is_file()
    assert (out / "eval_config.yaml").is_file()

    # Running again resumes: nothing is generated or scored again, the summary is the same.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/images/*.png")}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/images/*.png")} == stamps
    again = json.loads((out / "summary.json").read_text())
    assert [m["scores"] for m in again["models"]] == [m["scores"] for m in summary["models"]]
    assert len((out / "one_step" / "scores.jsonl").read_text().splitlines()) == len(lines)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--metrics", "clip,bogus"], "unknown metric 'bogus'"),
        (["--metrics", "fid"], "needs a reference"),
        (["--metric-path", "clip"], "NAME=PATH"),
        (["--model", "x::steps=0"], "steps must be"),
    ],
)
def test_user_errors_exit_2(tmp_path, capsys, extra, message):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\n")
    argv = ["eval", "--model", "some/model", "--benchmark", str(prompts), "--out", str(tmp_path / "o"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_dry_run_prints_resolved_config(tmp_path, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text("benchmark: hps\nseeds: [1, 2]\nmetrics: [pickscore]\n")
    assert main(["eval", "--config", str(config), "--model", "m::steps=1", "--seeds", "3,4", "5", "--dry-run", "batch_size=8"]) == 0
    printed = capsys.readouterr().out
    assert "benchmark: hps" in printed and "batch_size: 8" in printed and "steps: 1" in printed
    assert "seeds:\n- 3\n- 4\n- 5\n" in printed
