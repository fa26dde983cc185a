"""Crafted checkpoints whose manifest was recomputed (so they verify): wrong shapes, dtypes, keys, files
that are not safetensors, a config.yaml naming an impossible model, a trainer_state.json with wrong
types, a LoRA that does not fit. `distar generate`, `export`, `eval --model` and `serve --model` each
refuse every one in one line naming the file at fault (exit 2), without a traceback; `train --resume`
too for the weights it reads."""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from distar.cli import main
from distar.train.checkpoint import GENERATOR_EMA_FILE, GENERATOR_FILE, MANIFEST_FILE, write_manifest

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny_sd.yaml"
#: The tiny run: a LoRA generator (rank 2) with EMA weights, one step, one checkpoint.
RUN = [
    "model.generator_lora_rank=2", "loop.max_steps=1", "checkpointing.every=1", "sampling.every=0",
    "logging.progress_bar=false", "monitor.every=0",
]

Tensors = dict[str, torch.Tensor]


def _weights(change: Callable[[Tensors], Tensors | bytes]) -> Callable[[Path], str]:
    """A craft that rewrites both generator weight files (raw and EMA) with ``change``."""

    def craft(folder: Path) -> str:
        for name in (GENERATOR_FILE, GENERATOR_EMA_FILE):
            new = change(load_file(folder / name))
            if isinstance(new, bytes):
                (folder / name).write_bytes(new)
            else:
                save_file(new, folder / name)
        return "generator"

    return craft


def _first(tensors: Tensors, value: torch.Tensor) -> Tensors:
    return {**tensors, sorted(tensors)[0]: value}


def _model(**changes: Any) -> Callable[[Path], str]:
    """A craft that changes keys of config.yaml's `model` section."""

    def craft(folder: Path) -> str:
        data = yaml.safe_load((folder / "config.yaml").read_text())
        data["model"].update(changes)
        (folder / "config.yaml").write_text(yaml.safe_dump(data))
        return "config.yaml"

    return craft


def _file(name: str, content: bytes) -> Callable[[Path], str]:
    def craft(folder: Path) -> str:
        (folder / name).write_bytes(content)
        return name

    return craft


def _header(header: dict) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw


STATE = {"step": 1, "world_size": 1, "data": {"position": 0}}

#: label → craft(folder) -> the name the error must mention (a file, or "generator" for either weights file).
CRAFTS: dict[str, Callable[[Path], str]] = {
    "weights: another shape": _weights(lambda t: _first(t, torch.zeros(3, 5))),
    "weights: a scalar": _weights(lambda t: _first(t, torch.tensor(1.0))),
    "weights: transposed": _weights(lambda t: {k: v.t().contiguous() if v.ndim == 2 else v for k, v in t.items()}),
    "weights: int32": _weights(lambda t: {k: v.to(torch.int32) for k, v in t.items()}),
    "weights: bool": _weights(lambda t: {k: v.bool() for k, v in t.items()}),
    "weights: a key missing": _weights(lambda t: {k: v for k, v in t.items() if k != sorted(t)[0]}),
    "weights: an extra key": _weights(lambda t: {**t, "extra.weight": torch.zeros(2)}),
    "weights: no tensors": _weights(lambda t: {}),
    "weights: NaN": _weights(lambda t: _first(t, torch.full_like(t[sorted(t)[0]], float("nan")))),
    "weights: LoRA of rank 3": _weights(
        lambda t: {k: torch.zeros(3, *v.shape[1:]) if "lora_A" in k else v for k, v in t.items()}
    ),
    "weights: empty file": _weights(lambda t: b""),
    "weights: zeros": _weights(lambda t: b"\0" * 100),
    "weights: a 1 TB header": _weights(lambda t: struct.pack("<Q", 10**12) + b"{}"),
    "weights: offsets past the end": _weights(
        lambda t: _header({"a": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}) + b"\0" * 8
    ),
    "config: not YAML": _file("config.yaml", b"model: {family: [\n"),
    "config: a list": _file("config.yaml", b"- a\n"),
    "config: not UTF-8": _file("config.yaml", b"model:\n  family: \xff\n"),
    "config: no model": _file("config.yaml", b"seed: 0\n"),
    "config: model a list": _file("config.yaml", b"model: [1]\n"),
    "config: family gan": _model(family="gan"),
    "config: family sdxl on an SD UNet": _model(family="sdxl"),
    "config: no such pretrained": _model(pretrained="/no/such/model"),
    "config: pretrained not a model": _model(pretrained="/etc"),
    "config: LoRA rank 3 (the file's is 2)": _model(generator_lora_rank=3),
    "config: no LoRA (the file holds one)": _model(generator_lora_rank=0),
    "config: LoRA on no module": _model(lora_target_modules=["nope"]),
    "config: t_init past the schedule": _model(t_init=5000),
    "config: steps 0": _model(steps=0),
    "config: an unknown key": _model(nope=1),
    "state: a list": _file("trainer_state.json", b"[1]"),
    "state: step a string": _file("trainer_state.json", json.dumps({**STATE, "step": "ten"}).encode()),
    "state: step 1e400": _file("trainer_state.json", json.dumps(STATE).replace('"step": 1', '"step": 1e400').encode()),
    "state: empty object": _file("trainer_state.json", b"{}"),
    "state: not JSON": _file("trainer_state.json", b"{"),
    "state: not UTF-8": _file("trainer_state.json", b"\xff\xfe"),
    "state: 5,000 digits": _file("trainer_state.json", b'{"step": ' + b"9" * 5000 + b"}"),
    "state: nested 100,000 deep": _file("trainer_state.json", b"[" * 100_000 + b"]" * 100_000),
}


@pytest.fixture(scope="module")
def crafted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """label → (crafted checkpoint folder with a recomputed manifest, what the error must name)."""
    from accelerate.state import AcceleratorState

    run = tmp_path_factory.mktemp("tiny-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTAR_CACHE", str(tmp_path_factory.getbasetemp() / "distar-cache"))
        assert main(["train", "--config", str(CONFIG), f"output_dir={run}", *RUN]) == 0
    AcceleratorState._reset_state(reset_partial_state=True)
    root = tmp_path_factory.mktemp("crafted")
    folders = {}
    for i, (label, craft) in enumerate(CRAFTS.items()):
        folder = root / f"run-{i}" / "checkpoint-1"
        shutil.copytree(run / "checkpoint-1", folder)
        (folder / MANIFEST_FILE).unlink()
        named = craft(folder)
        write_manifest(folder)
        folders[label] = (folder, named)
    return folders


def _argv(command: str, folder: Path, out: Path) -> list[str]:
    prompts = out.parent / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    return {
        "generate": ["generate", "--model", str(folder), "--prompt", "a cat", "--out", f"{out}.png"],
        "export": ["export", str(folder), "--out", str(out)],
        "export --lora": ["export", str(folder), "--lora", "--out", str(out)],
        "eval": [
            "eval", "--model", str(folder), "--benchmark", str(prompts), "--metrics", "clip", "--metric-path",
            "clip=tiny", "--timing-images", "2", "--device", "cpu", "--out", str(out),
        ],
        "serve": ["serve", "--model", str(folder), "--device", "cpu"],
    }[command]


@pytest.mark.parametrize("command", ["generate", "export", "export --lora", "eval", "serve"])
def test_every_crafted_checkpoint_is_one_line_naming_the_file(command, crafted, tmp_path, monkeypatch, capsys):
    import uvicorn

    def served(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a crafted checkpoint was served")

    monkeypatch.setattr(uvicorn, "run", served)
    failed = []
    for i, (label, (folder, named)) in enumerate(crafted.items()):
        code = main(_argv(command, folder, tmp_path / f"out-{i}"))
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if not re.match(r"distar( \w+: \d+ torch thread|: )", line)]
        word = command.split()[0]
        fits = code == 2 and len(lines) == 1 and lines[0].startswith(f"distar {word}: error: {folder}")
        if not (fits and named in lines[0]):
            failed.append((label, code, err[-400:]))
    print(f"{command}: {len(crafted) - len(failed)}/{len(crafted)} crafted checkpoints refused in one line")
    assert not failed, f"{len(failed)} of {len(crafted)}: {failed[:3]}"


@pytest.mark.parametrize("label", ["weights: a scalar", "weights: int32", "state: 5,000 digits"])
def test_train_resume_refuses_crafted_weights_in_one_line(label, crafted, tmp_path, capsys):
    folder, named = crafted[label]
    run = tmp_path / "run"
    shutil.copytree(folder.parent, run)
    code = main(["train", "--config", str(CONFIG), f"output_dir={run}", "--resume", "latest", *RUN, "loop.max_steps=2"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("distar train: error:")]
    assert code == 2 and len(lines) == 1 and named in lines[0], lines
