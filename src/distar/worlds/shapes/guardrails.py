"""The training monitor scored against the shapes world's truth (docs/monitor.md, docs/shapes.md).

Each demo run trains with :mod:`distar.train.monitor` on: its judge is the world's CLIP analogue
(prompt-image cosine), which nothing trains on; its metrics are the truth the monitor is scored
against and never selects on: the attribute classifier's alignment (overall and per attribute) and
the hidden human's true utility. Each run's ``monitor.jsonl`` is read back by
:mod:`distar.train.monitor_replay` with :data:`TRUTH` as the truth (alignment or true utility below
step 0 on the held-out prompts, paired over prompts); this module gives the report's monitor
figures (laid out by the demo's sweep file): final against selected checkpoints, alarm counts (hits, false
alarms, misses) and the Pareto picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distar.rewards import RewardSpec
from distar.sweep import as_number, mean_ci95
from distar.train import MonitorConfig
from distar.train.monitor_replay import RULES, TRUTH_Z, alarm_counts

#: The truth the monitor is scored against.
TRUTH = ("metric/alignment", "metric/true_utility")
ATTRIBUTES = ("shape", "count", "colour", "size")


def monitor_config(base: MonitorConfig, root: Path, reference_cache: Path) -> MonitorConfig:
    """``base`` with the world's judge and truth metrics, and the shared cache of the reference's images."""
    import dataclasses

    from distar.worlds.shapes.assets import asset

    module = "distar.worlds.shapes"
    models = {"models": str(root)}
    metrics = [
        RewardSpec(f"{module}.metrics:AlignmentScore", options=models),
        RewardSpec(f"{module}.utility:TrueUtility"),
        *[RewardSpec(f"{module}.metrics:AlignmentScore", options={**models, "attribute": a}) for a in ATTRIBUTES],
    ]
    return dataclasses.replace(
        base,
        judges=base.judges or [RewardSpec("clip", path=str(asset("clip", root)))],
        metrics=base.metrics or metrics,
        reference_images=str(reference_cache),
    )


#: The figures the final and selected checkpoints are compared on (what the trainer never sees).
COMPARED = ("true_utility", "alignment", "open_diversity", "fid")


def monitor_report(
    *,
    rows: dict[str, dict[str, Any]],
    settings: dict[str, list[str]],
    start: dict[str, tuple[float, float]],
    digits: dict[str, int],
    out: Path,
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, Any], dict[str, Any]]:
    """The report's monitor figures: its tables, its texts' values and report.json's ``monitor``.

    Tables: ``monitor``, per setting with a selection (``settings`` maps a report row, method at α, to its
    runs), whether the final checkpoint lost alignment, the selected steps, the runs with an alarm and per
    :data:`COMPARED` figure "final → selected (Δ selected − final)" with ``digits[figure]`` decimals;
    ``replayed``, the alarm counts under each watch rule. Values: ``alarms`` (the counts over the runs with
    a reward, their number ``runs`` and the rates' denominators ``fell`` and ``alarmed``, at least 1),
    ``truth_z`` and, when drawn, ``pareto`` (the Pareto picture's file, ``pareto.png``).
    """
    from distar.sweep import format_ci, plot_pareto

    table, figures, points = {}, {}, {}
    for label, members in settings.items():
        if not all("selected_as" in rows[m] for m in members):
            continue  # not monitored, or no reward to select on
        final = {k: [as_number(rows[m].get(k)) for m in members] for k in COMPARED}
        chosen = {k: [as_number(rows[rows[m]["selected_as"]].get(k)) for m in members] for k in COMPARED}
        hacked = mean_ci95(final["alignment"])[0] < start["alignment"][0] - start["alignment"][1]
        entry = {"hacked": hacked, "selected_steps": [rows[m]["monitor"]["best_step"] for m in members]}
        alarms = sum(bool(rows[m]["monitor"]["alarms"]) for m in members)
        row = table[label] = {
            "lost_alignment": "yes" if hacked else "no", "selected_steps": ", ".join(str(s) for s in entry["selected_steps"]),
            "runs_alarmed": f"{alarms} of {len(members)}",
        }  # fmt: skip
        for k in COMPARED:
            diff = mean_ci95([s - f for s, f in zip(chosen[k], final[k])])  # paired over training seeds
            entry[k] = {"final": mean_ci95(final[k]), "selected": mean_ci95(chosen[k]), "selected_minus_final": diff}
            row[k] = " → ".join(format_ci(*entry[k][end], digits=digits[k]) for end in ("final", "selected"))
            row[k] += f" (Δ {format_ci(*diff, digits=digits[k])})"
        figures[label] = entry
        method, _, alpha = label.partition(" (α = ")
        if alpha:
            points.setdefault(method, []).append({"alpha": float(alpha.rstrip(")")), **{k: entry[k]["final"] for k in COMPARED}})
    monitored = [  # the alarm is about a reward: runs without one are not counted
        rows[m]["monitor"] for members in settings.values() for m in members
        if rows[m].get("monitor") and rows[m].get("reward_scale")
    ]
    counts = alarm_counts(monitored)
    replayed = {rule: alarm_counts(monitored, rule) for rule in RULES}
    fell, alarmed = counts["hits"] + counts["misses"], counts["hits"] + counts["false_alarms"]
    values: dict[str, Any] = {
        "alarms": {**counts, "runs": len(monitored), "fell": fell or 1, "alarmed": alarmed or 1}, "truth_z": TRUTH_Z,
    }  # fmt: skip
    if points:
        plot_pareto(
            points, out / "pareto.png", y=("true_utility", "true utility ↑"),
            xs=[("alignment", "alignment ↑"), ("open_diversity", "open-attribute diversity ↑")],
            title="final checkpoints over α: mean ± 95 % interval over training seeds",
        )  # fmt: skip
        values["pareto"] = "pareto.png"
    tables = {"monitor": table, "replayed": replayed}
    return tables, values, {"settings": figures, "alarms": counts, "replayed": replayed}
