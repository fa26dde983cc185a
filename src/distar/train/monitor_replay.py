"""Alarm replay: the training monitor's records read back and scored against the truth.

A monitored run's ``monitor.jsonl`` holds, per monitored step, each figure's change since step 0 as
(mean, standard error) over the held-out prompts. From the records of the model that decides this
module reads the **alarms** (the steps where the monitor fired), the **selected** step (``best.json``),
the steps where the **truth** (figures nothing trains or selects on, e.g. the monitor's ``metric/``
figures) fell below step 0 by more than :data:`TRUTH_Z` standard errors, and the alarms other watch
rules (:data:`RULES`) would have raised on the same records.

An alarm is a **hit** when the truth had fallen at its step and a **false alarm** when it had not; a
run whose truth fell at some monitored step with no alarm up to then is a **miss**.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from distar.runstate import JsonlLog

#: One-sided significance of a real fall of the truth (95 %).
TRUTH_Z = 1.645


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


def read_run(run_dir: Path, *, z: float, truth: Sequence[str] | None = None) -> dict[str, Any]:
    """Alarms (its own, and replayed under :data:`RULES`), selection and truth of one run's
    ``monitor.jsonl`` (the records of the model that decides); ``truth``: the figures whose fall
    counts as real (default: every ``metric/`` figure)."""
    records = JsonlLog(run_dir / "monitor.jsonl").read()
    deciding = [r for r in records if r.get("decides")]
    is_truth = (lambda k: k.startswith("metric/")) if truth is None else (lambda k: k in truth)
    truth_fell = [r["step"] for r in deciding if any(_z(v) < -TRUTH_Z for k, v in r["change"].items() if is_truth(k))]
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
