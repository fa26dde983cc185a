"""The training monitor scored against the shapes world's truth (docs/monitor.md, docs/shapes.md).

Each demo run trains with :mod:`distar.train.monitor` on: its judge is the world's CLIP analogue
(prompt-image cosine), which nothing trains on; its metrics are the truth the monitor is scored
against and never selects on: the attribute classifier's alignment (overall and per attribute) and
the hidden human's true utility. Each run's ``monitor.jsonl`` is read back by
:mod:`distar.train.monitor_replay` with :data:`TRUTH` as the truth (alignment or true utility below
step 0 on the held-out prompts, paired over prompts); this module adds the report section: final
against selected checkpoints, alarm counts (hits, false alarms, misses) and the Pareto picture.
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
COMPARED = {"true_utility": "true utility ↑", "alignment": "alignment ↑", "open_diversity": "open-attribute diversity ↑", "fid": "FID ↓"}


def monitor_section(
    *,
    rows: dict[str, dict[str, Any]],
    settings: dict[str, list[str]],
    start: dict[str, tuple[float, float]],
    out: Path,
) -> tuple[list[str], dict[str, Any]]:
    """The report's monitor section: final against selected checkpoints, alarm counts over the runs
    with a reward, the Pareto picture (``pareto.png``); ``settings`` maps a report row (method at α)
    to its runs."""
    from distar.sweep import format_ci, markdown_table, plot_pareto

    lines = ["## The monitor: final against selected checkpoints", ""]
    table, figures, points = [], {}, {}
    for label, members in settings.items():
        if not all("selected_as" in rows[m] for m in members):
            continue  # not monitored, or no reward to select on
        final = {k: [as_number(rows[m].get(k)) for m in members] for k in COMPARED}
        chosen = {k: [as_number(rows[rows[m]["selected_as"]].get(k)) for m in members] for k in COMPARED}
        hacked = mean_ci95(final["alignment"])[0] < start["alignment"][0] - start["alignment"][1]
        cells, entry = [], {"hacked": hacked, "selected_steps": [rows[m]["monitor"]["best_step"] for m in members]}
        for k in COMPARED:
            diff = mean_ci95([s - f for s, f in zip(chosen[k], final[k])])  # paired over training seeds
            entry[k] = {"final": mean_ci95(final[k]), "selected": mean_ci95(chosen[k]), "selected_minus_final": diff}
            digits = 2 if k in ("fid", "true_utility") else 3
            cells.append(f"{format_ci(*entry[k]['final'], digits=digits)} → {format_ci(*entry[k]['selected'], digits=digits)} "
                         f"(Δ {format_ci(*diff, digits=digits)})")
        steps = ", ".join(str(s) for s in entry["selected_steps"])
        alarms = sum(bool(rows[m]["monitor"]["alarms"]) for m in members)
        table.append([label, "yes" if hacked else "no", steps, f"{alarms} of {len(members)}", *cells])
        figures[label] = entry
        method, _, alpha = label.partition(" (α = ")
        if alpha:
            points.setdefault(method, []).append({"alpha": float(alpha.rstrip(")")), **{k: entry[k]["final"] for k in COMPARED}})
    lines += markdown_table(["setting", "final lost alignment", "selected steps", "runs with an alarm", *COMPARED.values()], table)
    lines += [
        "",
        "Each cell: final → selected checkpoint (Δ = selected − final, paired over training seeds), mean ± 95 % "
        "interval, on the evaluation prompts (never monitored). \"Final lost alignment\": its alignment is below the "
        "one-step start's interval.",
        "",
    ]
    monitored = [  # the alarm is about a reward: runs without one are not counted
        rows[m]["monitor"] for members in settings.values() for m in members
        if rows[m].get("monitor") and rows[m].get("reward_scale")
    ]
    counts = alarm_counts(monitored)
    alarmed = counts["hits"] + counts["false_alarms"]
    fell = counts["hits"] + counts["misses"]
    lines += [
        "### Alarms against the truth",
        "",
        f"Over {len(monitored)} monitored runs: **{counts['hits']} hits**, **{counts['false_alarms']} false alarms**, "
        f"**{counts['misses']} misses**, {counts['quiet']} runs where neither the alarm fired nor the truth fell. "
        f"Hit rate {counts['hits']}/{fell or 1} of the runs whose truth fell; false alarms "
        f"{counts['false_alarms']}/{alarmed or 1} of the alarms. The truth fell where held-out alignment or true "
        f"utility was below step 0 by more than {TRUTH_Z} standard errors over the held-out prompts.",
        "",
        "The same records replayed under other watch rules (patience 1, the runs' z):",
        "",
    ]
    replayed = {rule: alarm_counts(monitored, rule) for rule in RULES}
    lines += markdown_table(
        ["watched with the reward", "hits", "false alarms", "misses", "neither"],
        [[rule, c["hits"], c["false_alarms"], c["misses"], c["quiet"]] for rule, c in replayed.items()],
    )
    lines += [""]
    if points:
        plot_pareto(
            points, out / "pareto.png", y=("true_utility", "true utility ↑"),
            xs=[("alignment", "alignment ↑"), ("open_diversity", "open-attribute diversity ↑")],
            title="final checkpoints over α: mean ± 95 % interval over training seeds",
        )  # fmt: skip
        lines += ["![true utility against alignment and open-attribute diversity over α](pareto.png)", ""]
    return lines, {"settings": figures, "alarms": counts, "replayed": replayed}
