"""PNG figures of the gmm world (matplotlib's Agg canvas; no pyplot state, no display needed).

Only the first two coordinates are drawn; the world's modes lie in that plane, so the reference
contours are the exact 2-D marginal for any dimension.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle
from torch import Tensor

from distar.worlds.gmm.mixture import Components, log_prob
from distar.worlds.gmm.world import GMMWorld

#: prompts drawn at most (columns of the sample grid)
MAX_PROMPT_COLUMNS = 4


def _save(fig: Figure, path: str | Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def _reference_log_density(world: GMMWorld, c: int, extent: float, n: int = 160) -> tuple[Tensor, Tensor, Tensor]:
    """A grid and the exact 2-D marginal log-density of p(x | c) on it (each (n, n))."""
    axis = torch.linspace(-extent, extent, n)
    gx, gy = torch.meshgrid(axis, axis, indexing="xy")
    points = torch.stack([gx.flatten(), gy.flatten()], dim=-1).to(world.device)
    comps = world.prompt_components(c)
    plane = Components(comps.means[..., :2], comps.log_weights, comps.variances)
    ones = torch.ones(len(points), device=world.device)
    return gx, gy, log_prob(points, ones, 0 * ones, plane).reshape(n, n).cpu()


def plot_samples(
    world: GMMWorld, rows: Mapping[str, Sequence[Tensor]], path: str | Path, max_points: int = 600
) -> None:
    """One row per model, one column per prompt: its samples over the reference density contours.

    ``rows[name][c]`` holds samples (n, d) for prompt c; the star marks the reward's centre and the
    dashed circle its length scale ℓ.
    """
    cols = min(world.num_prompts, MAX_PROMPT_COLUMNS)
    extent = world.config.radius + 1.2
    fig = Figure(figsize=(2.6 * cols, 2.6 * len(rows)))
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for c in range(cols):
        gx, gy, log_density = _reference_log_density(world, c, extent)
        # Log-spaced levels, so a light mode gets rings as well as the heavy ones.
        levels = (float(log_density.max()) - torch.tensor([6.0, 4.0, 2.5, 1.0])).tolist()
        centre = world.reward_centres[c, :2].tolist()
        for r, (name, samples) in enumerate(rows.items()):
            ax = axes[r, c]
            ax.contour(gx, gy, log_density, levels=levels, colors="0.55", linewidths=0.6)
            x = samples[c][:max_points, :2].detach().cpu()
            ax.scatter(x[:, 0], x[:, 1], s=3, alpha=0.5, color="C0", linewidths=0)
            ax.plot(*centre, marker="*", color="C3", markersize=9)
            ax.add_patch(Circle(centre, world.config.reward_width, fill=False, ls="--", color="C3", lw=0.8))
            ax.set(xlim=(-extent, extent), ylim=(-extent, extent), aspect="equal", xticks=[], yticks=[])
            if r == 0:
                ax.set_title(world.prompts[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    _save(fig, path)


def plot_training(curves: Mapping[str, Sequence[float]], path: str | Path, window: int = 25) -> None:
    """Batch-mean reward per training step for each method (moving average over ``window`` steps)."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for i, (name, values) in enumerate(curves.items()):
        v = torch.tensor(values, dtype=torch.float64)
        if len(v) >= window:
            v = v.unfold(0, window, 1).mean(-1)
        ax.plot(torch.arange(len(v)) + min(window, len(values)), v, color=f"C{i}", label=name, lw=1)
    ax.set(xlabel="training step", ylabel="mean reward of the batch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
