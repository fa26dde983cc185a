"""evaluate(): records, tables, resume without recomputation, and reported (never silent) skips."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from eval_fakes import Brightness, FakeModel

from distar.config import ConfigError
from distar.errors import UserError
from distar.eval import Diversity, evaluate
from distar.eval.benchmarks import PromptItem
from distar.eval.cost import measure_cost
from distar.eval.suite import EvalWarning, ModelFiles
from distar.io import load_image


def flat(images: torch.Tensor) -> torch.Tensor:
    return images.flatten(1)


def test_records_summary_and_tables(tmp_path, styles_benchmark):
    models = [FakeModel("a"), FakeModel("b", size=12)]
    summary = evaluate(models, styles_benchmark, [Brightness(), Diversity(flat)], tmp_path, seeds=[0, 1], batch_size=3, timing_images=3)

    records = ModelFiles(tmp_path, "a").read_records()
    assert sorted(records) == [(i, s) for i in range(4) for s in (0, 1)]
    first = records[(2, 1)]
    assert first["prompt"] == "a tree" and first["group"] == "photo" and first["image"] == "a/images/00002_s1.png"
    # The stored scores are those of the images on disk, and the summary is their mean.
    images = {k: load_image(tmp_path / r["image"]) for k, r in records.items()}
    for key, record in records.items():
        assert record["aesthetic"] == pytest.approx(float(images[key].mean()), abs=1e-6)
    row = summary.models[0]
    assert row.images == 8
    assert row.scores["aesthetic"] == pytest.approx(sum(float(x.mean()) for x in images.values()) / 8, abs=1e-6)
    photo = [float(images[(i, s)].mean()) for i in (2, 3) for s in (0, 1)]
    assert row.groups["photo"]["aesthetic"] == pytest.approx(sum(photo) / 4, abs=1e-6)
    assert 0 < row.scores["diversity"] < 2 and row.extras["diversity_prompts"] == 4
    assert row.cost["images_timed"] == 3 and row.cost["seconds_per_10_images"] > 0

    markdown = (tmp_path / "summary.md").read_text()
    assert "| Model | Steps | Aes | Diversity | s / 10 images | Peak memory (GiB) |" in markdown
    assert "## Table 3: Aes by style" in markdown and "| Model | Animation | Photo | Average |" in markdown
    assert json.loads((tmp_path / "summary.json").read_text())["models"][1]["name"] == "b"
    for path in (tmp_path / "a" / "grid.png", tmp_path / "b" / "grid.png", tmp_path / "compare.png"):
        assert path.is_file()


def test_resume_recomputes_only_missing_work(tmp_path, styles_benchmark):
    evaluate([FakeModel("a")], styles_benchmark, [Brightness()], tmp_path, seeds=[0, 1], timing_images=2)
    before = json.loads((tmp_path / "summary.json").read_text())["models"][0]["scores"]
    files = ModelFiles(tmp_path, "a")
    files.image((3, 1)).unlink()  # killed before this image was written
    lines = files.scores.read_text().splitlines()
    # ... and one image whose score line was never written, then a torn last line.
    files.scores.write_text("\n".join(l for l in lines if '"aesthetic"' not in l or '"index": 0, "seed": 0' not in l) + '\n{"index": 1, "se')

    model, metric = FakeModel("a"), Brightness()
    with pytest.warns(EvalWarning, match="unreadable line"):
        summary = evaluate([model], styles_benchmark, [metric], tmp_path, seeds=[0, 1], timing_images=2)
    assert model.calls == [("a house", 1)]  # no re-timing: cost.json is kept
    assert metric.scored == 2  # the regenerated image and the one without a score
    assert summary.models[0].scores["aesthetic"] == pytest.approx(before["aesthetic"], abs=1e-6)


def test_bad_prompts_and_images_are_reported(tmp_path, styles_benchmark):
    model = FakeModel("a", fail_on=["a dog"], nan_on=["a tree"])
    with pytest.warns(EvalWarning) as caught:
        summary = evaluate([model], styles_benchmark, [Brightness()], tmp_path, batch_size=4, timing_images=0)
    messages = " ".join(str(w.message) for w in caught)
    assert "prompt 1 seed 0: generation failed (RuntimeError: cannot draw that)" in messages
    assert "prompt 2 seed 0: non-finite pixels" in messages
    row = summary.models[0]
    assert row.images == 2 and "2 of 4 images missing" in row.failures
    assert "2 of 4 images missing" in (tmp_path / "summary.md").read_text()

    # A corrupt file on disk is reported and generated again.
    path = ModelFiles(tmp_path, "a").image((0, 0))
    path.write_bytes(b"not a png")
    fixed = FakeModel("a")
    with pytest.warns(EvalWarning, match="corrupt image 00000_s0.png"):
        evaluate([fixed], styles_benchmark, [Brightness()], tmp_path, timing_images=0)
    assert ("a cat", 0) in fixed.calls and load_image(path).shape == (3, 8, 8)


def test_model_that_never_works_is_an_error(tmp_path, styles_benchmark):
    broken = FakeModel("x", fail_on=["a cat", "a dog", "a tree", "a house"])
    with pytest.warns(EvalWarning), pytest.raises(RuntimeError, match="produced no image"):
        evaluate([broken], styles_benchmark, [Brightness()], tmp_path, timing_images=0)


def test_results_folder_grows_but_never_mixes_prompts(tmp_path, styles_benchmark):
    evaluate([FakeModel("a")], styles_benchmark.subset(2), [Brightness()], tmp_path, timing_images=0)
    more = FakeModel("a")
    summary = evaluate([more], styles_benchmark, [Brightness()], tmp_path, seeds=[0, 1], timing_images=0)
    assert len(more.calls) == 8 - 2 and summary.models[0].images == 8  # only the new prompts and seeds
    other = replace(styles_benchmark, items=(PromptItem(0, "a different prompt"),))
    with pytest.raises(ConfigError, match="belongs to another benchmark"):
        evaluate([FakeModel("a")], other, [Brightness()], tmp_path, timing_images=0)
    with pytest.raises(ConfigError, match="used twice"):
        evaluate([FakeModel("a"), FakeModel("a")], styles_benchmark, [Brightness()], tmp_path / "new")


def test_measure_cost_warms_up_then_times():
    model = FakeModel("a")
    cost = measure_cost(model, ["p", "q", "r"], batch_size=4, num_images=10)
    assert len(model.calls) == 4 + 10  # one warm-up batch, then the timed images
    assert [p for p, _ in model.calls[4:]] == ["p", "q", "r"] * 3 + ["p"]
    assert cost.images_timed == 10 and cost.batch_size == 4 and cost.peak_memory_gib > 0


#: Damage to one line of a model's scores.jsonl (the record of prompt 1, seed 0), as text → new line.
LINE_DAMAGE = {
    "non-UTF-8 byte": lambda line: line[:10] + "\udcff" + line[10:],
    "string score": lambda line: line.replace('"aesthetic": ', '"aesthetic": "x", "was": '),
    "list score": lambda line: line.replace('"aesthetic": ', '"aesthetic": [1], "was": '),
    "index 1e400": lambda line: line.replace('"index": 1', '"index": 1e400'),
    "float index, bool seed": lambda line: line.replace('"index": 1', '"index": 1.7').replace('"seed": 0', '"seed": true'),
    "NaN score": lambda line: line.replace('"aesthetic": ', '"aesthetic": NaN, "was": '),
    "Infinity score": lambda line: line.replace('"aesthetic": ', '"aesthetic": Infinity, "was": '),
    "negative index": lambda line: line.replace('"index": 1', '"index": -1'),
    "deep nesting": lambda line: line.replace('"aesthetic": ', '"aesthetic": ' + "[" * 5000 + "]" * 5000 + ', "was": '),
    "not an object": lambda line: "[1, 2, 3]",
    "truncated": lambda line: line[: len(line) // 2],
}


@pytest.mark.parametrize("damage", sorted(LINE_DAMAGE))
def test_a_damaged_score_line_is_reported_and_scored_again(tmp_path, styles_benchmark, damage):
    evaluate([FakeModel("a")], styles_benchmark, [Brightness()], tmp_path, timing_images=0)
    before = json.loads((tmp_path / "summary.json").read_text())["models"][0]["scores"]
    files = ModelFiles(tmp_path, "a")
    lines = files.scores.read_text().splitlines()
    target = next(i for i, l in enumerate(lines) if '"index": 1,' in l and '"seed": 0' in l and '"aesthetic"' in l)
    lines[target] = LINE_DAMAGE[damage](lines[target])
    files.scores.write_bytes(("\n".join(lines) + "\n").encode("utf-8", errors="surrogateescape"))
    metric = Brightness()
    with pytest.warns(EvalWarning, match=r"unreadable line|not a finite number, scored again"):
        summary = evaluate([FakeModel("a")], styles_benchmark, [metric], tmp_path, timing_images=0)
    assert metric.scored == 1  # the damaged row, and only it
    assert summary.models[0].scores["aesthetic"] == pytest.approx(before["aesthetic"], abs=1e-6)


@pytest.mark.parametrize("damage", ["scores folder", "cost list", "cost folder", "set_metrics list", "cost not UTF-8"])
def test_damaged_files_of_a_results_folder_are_one_line_or_made_again(tmp_path, styles_benchmark, damage):
    evaluate([FakeModel("a")], styles_benchmark, [Brightness()], tmp_path, timing_images=2)
    files = ModelFiles(tmp_path, "a")
    if damage.endswith("folder"):
        path = files.scores if damage.startswith("scores") else files.cost
        path.unlink()
        path.mkdir()
        with pytest.raises(UserError, match=rf"{path.name}: not a file; move it away"):
            evaluate([FakeModel("a")], styles_benchmark, [Brightness()], tmp_path, timing_images=2)
        return
    path = files.set_metrics if damage.startswith("set_metrics") else files.cost
    path.write_bytes(b"\xff\xfe" if damage.endswith("UTF-8") else b"[1, 2]")
    summary = evaluate([FakeModel("a")], styles_benchmark, [Brightness()], tmp_path, timing_images=2)
    assert summary.models[0].images == 4


def test_non_finite_scores_are_flagged_in_the_summary(tmp_path, styles_benchmark):
    evaluate([FakeModel("a")], styles_benchmark, [Brightness()], tmp_path, timing_images=0)
    files = ModelFiles(tmp_path, "a")
    files.append([{"index": 2, "seed": 0, "aesthetic": None}])  # a score that was not finite when made
    summary = evaluate([FakeModel("a")], styles_benchmark, [Brightness()], tmp_path, timing_images=0)
    assert "aesthetic: 1 non-finite score(s) left out of the mean" in summary.models[0].failures
    assert "1 non-finite score(s)" in (tmp_path / "summary.md").read_text()
    assert "1 non-finite score(s)" in (tmp_path / "summary.json").read_text()


def test_an_image_scores_the_same_whatever_shares_its_batch(tmp_path, styles_benchmark):
    """Scores made in one run equal those made a few at a time over runs that add seeds (other batch
    makeups and sizes), bit for bit: every batch is scored filled to the batch size."""
    from distar.eval.metrics import metric_loaders

    metrics = metric_loaders(["clip", "pickscore"], paths={"clip": "tiny", "pickscore": "tiny"})
    options = dict(batch_size=5, timing_images=0)
    evaluate([FakeModel("a")], styles_benchmark, metrics, tmp_path / "once", seeds=[0, 1, 2], **options)
    for seeds in ([0], [0, 1], [0, 1, 2]):  # batches of 4, 4, 4 images instead of 5, 5, 2, with other partners
        evaluate([FakeModel("a")], styles_benchmark, metrics, tmp_path / "steps", seeds=seeds, **options)
    once, steps = (ModelFiles(tmp_path / name, "a").read_records() for name in ("once", "steps"))
    assert len(once) == 12
    assert all(once[k][m] == steps[k][m] for k in once for m in ("clip", "pickscore"))
