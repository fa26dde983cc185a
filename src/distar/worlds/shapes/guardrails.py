"""The training monitor scored against the shapes world's truth (docs/monitor.md, docs/shapes.md).

Each demo run trains with :mod:`distar.train.monitor` on: its judge is the world's CLIP analogue
(prompt-image cosine), which nothing trains on; its metrics are the truth the monitor is scored
against and never selects on: the attribute classifier's alignment (overall and per attribute) and
the hidden human's true utility. From each run's ``monitor.jsonl`` this module reads:

- the **alarms** (the monitored steps where it fired) and the **selected** step;
- where the truth **really fell**: alignment or true utility below step 0 on the held-out prompts by
  more than ``TRUTH_Z`` standard errors (paired over prompts, as the monitor tests its own figures).

An alarm is a **hit** when the truth had fallen at its step and a **false alarm** when neither had; a
run whose truth fell at some monitored step with no alarm up to then is a **miss**.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from distar.rewards import RewardSpec
from distar.runstate import JsonlLog
from distar.train import MonitorConfig
from distar.sweep import as_number, mean_ci95

#: One-sided significance of a real fall of the truth (95 %).
TRUTH_Z = 1.645
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


def _z(change: Sequence[float | None]) -> float:
    mean, se = (math.nan if v is None else v for v in change)
    return mean / se if se and math.isfinite(se) and se > 0 else math.nan


#: Other watch rules, replayed from the same records (the run's own rule is what its config says).
RULES = {
    "judge only": ("judge/",),
    "judge + diversity (default)": ("judge/", "diversity", "prompt_diversity"),
    "judge + diversity + drift": ("judge/", "diversity", "prompt_diversity", "drift"),
}


def replayed_alarms(deciding: Sequence[dict[str, Any]], watched: Sequence[str], z: float) -> list[int]:
    """The steps where the alarm would have held under another watch rule (the reward up and a watched
    figure the wrong way by more than ``z`` standard errors each; patience 1)."""
    steps = []
    for record in deciding:
        change = record["change"]
        worse = [
            k for k in change
            if k.startswith(tuple(watched)) and (1 if k == "drift" else -1) * _z(change[k]) > z
        ]
        if worse and _z(change.get("reward", [None, None])) > z:
            steps.append(record["step"])
    return steps


def read_run(run_dir: Path, *, z: float) -> dict[str, Any]:
    """Alarms (its own, and replayed under :data:`RULES`), selection and truth of one run's
    ``monitor.jsonl`` (the records of the model that decides)."""
    records = JsonlLog(run_dir / "monitor.jsonl").read()
    deciding = [r for r in records if r.get("decides")]
    truth_fell = [
        r["step"] for r in deciding if any(_z(r["change"].get(k, [None, None])) < -TRUTH_Z for k in TRUTH)
    ]
    alarms = [r["step"] for r in deciding if r.get("alarm")]
    best = json.loads((run_dir / "best.json").read_text())["step"] if (run_dir / "best.json").is_file() else None
    return {
        "alarms": alarms,
        "truth_fell": truth_fell,
        "best_step": best,
        "rules": {name: replayed_alarms(deciding, watched, z) for name, watched in RULES.items()},
    }


def alarm_counts(runs: Sequence[dict[str, Any]], rule: str | None = None) -> dict[str, int]:
    """Hits, false alarms and misses over runs (module docstring), judged at each run's first alarm
    (its own alarms, or those replayed under ``rule``)."""
    hits = false = misses = quiet = 0
    for run in runs:
        alarms = run["alarms"] if rule is None else run["rules"][rule]
        if alarms:
            first = alarms[0]
            if any(step <= first for step in run["truth_fell"]):
                hits += 1
            else:
                false += 1
        elif run["truth_fell"]:
            misses += 1
        else:
            quiet += 1
    return {"hits": hits, "false_alarms": false, "misses": misses, "quiet": quiet}


def paired_difference(selected: Sequence[float], final: Sequence[float]) -> tuple[float, float]:
    """Mean and 95 % half-width of selected − final over training seeds."""
    return mean_ci95([s - f for s, f in zip(selected, final)])


def pareto_plot(points: dict[str, list[tuple[float, dict[str, tuple[float, float]]]]], path: Path) -> None:
    """True utility against alignment and against open-attribute diversity, one line per method over α."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, x_key, x_label in ((axes[0], "alignment", "alignment ↑"), (axes[1], "open_diversity", "open-attribute diversity ↑")):
        for i, (method, series) in enumerate(points.items()):
            series = sorted(series)
            xs = [s[x_key][0] for _, s in series]
            ys = [s["true_utility"][0] for _, s in series]
            ax.errorbar(
                xs, ys, xerr=[s[x_key][1] for _, s in series], yerr=[s["true_utility"][1] for _, s in series],
                marker="o", capsize=2, color=f"C{i}", label=method,
            )
            for (alpha, _), x, y in zip(series, xs, ys):
                ax.annotate(f"α={alpha:g}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(x_label)
        ax.set_ylabel("true utility ↑")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("final checkpoints over α: mean ± 95 % interval over training seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


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
    from distar.sweep import format_ci, markdown_table

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
            diff = paired_difference(chosen[k], final[k])
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
            points.setdefault(method, []).append((float(alpha.rstrip(")")), {k: entry[k]["final"] for k in COMPARED}))
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
        pareto_plot(points, out / "pareto.png")
        lines += ["![true utility against alignment and open-attribute diversity over α](pareto.png)", ""]
    return lines, {"settings": figures, "alarms": counts, "replayed": replayed}
