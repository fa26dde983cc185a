"""Preference pairs and the Bradley–Terry loss on which PickScore-style reward models are trained.

A pair is a prompt, two images and a label: which image was preferred (0 or 1), or 0.5 for a tie.
Files hold them in one of three layouts (:func:`read_pairs`):

- a JSONL of ``{"prompt", "image_0", "image_1", "label"}`` with image paths relative to the file;
- a folder written by ``distar serve --collect`` (``pairs.jsonl`` beside its images), read as above;
- Pick-a-Pic's parquet layout (``caption``, ``jpg_0``, ``jpg_1``, ``label_0``, ``label_1``; a file or a
  folder of ``*.parquet``), read with pyarrow when it is installed.

The model's log-odds that image 0 is preferred is s (cos_0 − cos_1) with s = exp(logit_scale) and
cos_i the image–text cosine (:func:`preference_logits`); the loss is the cross-entropy of σ of that
against the label, a tie counting as half a win for each image (:func:`bradley_terry_loss`).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from distar.errors import UserError
from distar.io import load_image

#: File of the pairs inside a folder written by the collection page.
PAIRS_FILE = "pairs.jsonl"
#: Labels a pair may carry: the preferred image's index, or a tie.
LABELS = (0.0, 0.5, 1.0)


@dataclass(frozen=True)
class PreferencePair:
    """Two images of one prompt; ``label`` is the preferred image's index (0 or 1) or 0.5 for a tie.
    Images are file paths or encoded image bytes."""

    prompt: str
    image_0: Path | bytes
    image_1: Path | bytes
    label: float

    @property
    def wins_0(self) -> float:
        """P(image 0 is preferred) as the label says: 1, 0 or ½."""
        return 1.0 - self.label


def decode(image: Path | bytes) -> Tensor:
    """A pair's image as (3, H, W) float32 in [0, 1]."""
    return load_image(io.BytesIO(image) if isinstance(image, bytes) else image)  # type: ignore[arg-type]


def preference_logits(logit_scale: Tensor, cos_0: Tensor, cos_1: Tensor) -> Tensor:
    """s (cos_0 − cos_1), s = exp(logit_scale): the model's log-odds that image 0 is preferred."""
    return logit_scale.exp() * (cos_0 - cos_1)


def bradley_terry_loss(logits: Tensor, wins_0: Tensor) -> Tensor:
    """Mean −[p log σ(ℓ) + (1 − p) log σ(−ℓ)] with p = P(image 0 preferred) (½ for a tie)."""
    return F.binary_cross_entropy_with_logits(logits, wins_0)


def read_pairs(source: str | Path) -> list[PreferencePair]:
    """The pairs of a JSONL file, a collection folder, or Pick-a-Pic parquet (a file or a folder of them)."""
    path = Path(source)
    if path.is_dir():
        if (path / PAIRS_FILE).is_file():
            return _read_jsonl(path / PAIRS_FILE)
        shards = sorted(path.glob("*.parquet"))
        if not shards:
            raise UserError(f"--data {path}: a folder needs a {PAIRS_FILE} or *.parquet files")
        return [pair for shard in shards for pair in _read_parquet(shard)]
    if not path.is_file():
        raise UserError(f"--data: no such file or folder: {path}")
    if path.suffix == ".parquet":
        return _read_parquet(path)
    return _read_jsonl(path)


def _label(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) not in LABELS:
        raise UserError(f"{where}: label must be 0, 1 or 0.5 (the preferred image, or a tie), got {value!r}")
    return float(value)


def _read_jsonl(path: Path) -> list[PreferencePair]:
    pairs = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot be read ({type(err).__name__})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{where}: not JSON ({err.msg})") from None
        fields = ("prompt", "image_0", "image_1", "label")
        missing = [k for k in fields if not isinstance(record, dict) or k not in record]
        if missing:
            raise UserError(f"{where}: missing {', '.join(missing)} (a pair has prompt, image_0, image_1, label)")
        images = []
        for key in ("image_0", "image_1"):
            image = path.parent / str(record[key])
            if not image.is_file():
                raise UserError(f"{where}: {key} not found: {image}")
            images.append(image)
        pairs.append(PreferencePair(str(record["prompt"]), images[0], images[1], _label(record["label"], where)))
    if not pairs:
        raise UserError(f"{path}: no preference pairs")
    return pairs


def _read_parquet(path: Path) -> list[PreferencePair]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    columns = ["caption", "jpg_0", "jpg_1", "label_0", "label_1"]
    try:
        table = pq.read_table(path, columns=columns).to_pydict()
    except Exception as err:  # pyarrow's errors: a missing column, a corrupt file
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: not Pick-a-Pic parquet with columns {', '.join(columns)} ({message})") from None
    pairs = []
    for caption, jpg_0, jpg_1, label_0, label_1 in zip(*(table[c] for c in columns)):
        if label_0 is None or label_1 is None or not math.isclose(label_0 + label_1, 1.0):
            continue  # Pick-a-Pic rows without a choice
        pairs.append(PreferencePair(str(caption), bytes(jpg_0), bytes(jpg_1), _label(float(label_1), str(path))))
    if not pairs:
        raise UserError(f"{path}: no labelled pairs")
    return pairs


def agreement_stats(logits: Tensor, labels: Tensor, *, bins: int = 10) -> dict[str, Any]:
    """How well log-odds ``logits`` (image 0 preferred) match ``labels`` (0, 1 or ½ per pair).

    - ``agreement``: on the pairs with a choice, the fraction where the model prefers the chosen image;
    - ``tie_aware_accuracy``: over all pairs, a tie counting ½ whatever the model says (it predicts none);
    - ``log_loss``: the Bradley–Terry loss; ``brier``: mean (P − p)²;
    - ``calibration``: per bin of the model's P(image 0 preferred), the pairs, mean P and the observed
      rate (ties ½); ``ece``: their pair-weighted mean |observed − P|.
    """
    wins_0 = 1.0 - labels.float()
    probability = torch.sigmoid(logits.float())
    decided = labels != 0.5
    agree = ((logits > 0) == (labels == 0))[decided].float()
    calibration, ece = [], 0.0
    index = (probability * bins).long().clamp(max=bins - 1)
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        if count:
            mean_p, observed = float(probability[members].mean()), float(wins_0[members].mean())
            calibration.append(
                {"bin": [b / bins, (b + 1) / bins], "pairs": count, "mean_p": mean_p, "observed": observed}
            )
            ece += count * abs(observed - mean_p)
    n = len(labels)
    return {
        "pairs": n,
        "ties": int((~decided).sum()),
        "agreement": float(agree.mean()) if len(agree) else math.nan,
        "tie_aware_accuracy": (float(agree.sum()) + 0.5 * int((~decided).sum())) / n,
        "log_loss": float(bradley_terry_loss(logits.float(), wins_0)),
        "brier": float(((probability - wins_0) ** 2).mean()),
        "ece": ece / n,
        "calibration": calibration,
    }
