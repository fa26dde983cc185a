"""Alarm replay over monitor.jsonl records: which figures count as the truth."""

import json

from distar.train.monitor_replay import alarm_counts, read_run


def _write(folder, records):
    folder.mkdir()
    (folder / "monitor.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_truth_is_every_metric_by_default_and_exactly_the_named_figures_otherwise(tmp_path):
    fall = {"step": 10, "decides": True, "alarm": None, "change": {"reward": [5.0, 1.0], "metric/alignment_shape": [-3.0, 1.0]}}
    run = _write(tmp_path / "run", [{"step": 0, "decides": True, "alarm": None, "change": {}}, fall])
    assert read_run(run, z=3.0)["truth_fell"] == [10]
    named = read_run(run, z=3.0, truth=("metric/alignment",))
    assert named["truth_fell"] == [] and named["best_step"] is None
    assert alarm_counts([named]) == {"hits": 0, "false_alarms": 0, "misses": 0, "quiet": 1}


def test_records_of_models_that_do_not_decide_are_ignored(tmp_path):
    record = {"step": 10, "decides": False, "alarm": {"figures": ["judge/clip"]}, "change": {"metric/x": [-9.0, 1.0]}}
    read = read_run(_write(tmp_path / "run", [record]), z=3.0)
    assert read["alarms"] == [] and read["truth_fell"] == []
