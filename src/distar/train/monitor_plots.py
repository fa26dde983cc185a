"""The monitor's pictures: every curve over steps with its spread, and held-out images at chosen steps."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from distar.runstate import write_with


def draw_curves(
    records: Sequence[dict[str, Any]],
    path: Path,
    *,
    alarms: Sequence[int],
    best: int | None,
    watched: Callable[[str], bool],
) -> None:
    """One panel per figure: the mean over held-out prompts ± 95 % interval (t ≈ 2 standard errors),
    generator solid, EMA dashed; alarms as red lines, the selected step as a green one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(k for r in records for k in r["mean"]))
    if sum(n.startswith("reward/") for n in names) == 1:
        names.remove("reward")  # the one term is the reward
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for model, style in (("generator", "-"), ("ema", "--")):
            series = [r for r in records if r["model"] == model and name in r["mean"]]
            if not series:
                continue
            steps = np.array([r["step"] for r in series])
            mean = np.array([r["mean"][name] for r in series], dtype=float)
            n = np.array([sum(math.isfinite(v) for v in r["per_prompt"][name]) for r in series], dtype=float)
            half = 2 * np.array([r["sd"][name] for r in series], dtype=float) / np.sqrt(np.maximum(n, 1))
            ax.plot(steps, mean, style, color="C0", marker=".", label=model)
            ax.fill_between(steps, mean - half, mean + half, color="C0", alpha=0.15)
        for step in alarms:
            ax.axvline(step, color="red", lw=1, ls=":")
        if best is not None:
            ax.axvline(best, color="green", lw=1.2)
        title = name + (" (watched)" if watched(name) else "")
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle("held-out monitor: mean ± 95 % interval over prompts; red = alarm, green = selected", fontsize=9)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def draw_grid(folder: Path, path: Path, *, best: int | None) -> None:
    """Rows of held-out images at step 0, the selected step and the last step, each labelled."""
    files = sorted(folder.glob("step-*.png"))
    if not files:
        return
    by_step = {int(f.stem.split("-")[1]): f for f in files}
    chosen = {0: "step 0", max(by_step): f"last (step {max(by_step)})"}
    if best is not None:
        chosen[best] = f"selected (step {best})" + (" = last" if best == max(by_step) else "")
    rows = [(label, Image.open(by_step[s]).convert("RGB")) for s, label in sorted(chosen.items()) if s in by_step]
    scale = max(1, 96 // rows[0][1].height)
    label_w = 150
    width = label_w + max(im.width for _, im in rows) * scale
    height = sum(im.height * scale for _, im in rows)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for label, im in rows:
        canvas.paste(im.resize((im.width * scale, im.height * scale), Image.NEAREST), (label_w, y))
        draw.text((4, y + im.height * scale // 2 - 6), label, fill="black")
        y += im.height * scale
    write_with(path, lambda tmp: canvas.save(tmp, format="PNG"))
