"""distar.runtime: the thread count commands choose (request, then OMP_NUM_THREADS, then model size)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from distar import runtime
from distar.cli import build_parser, main
from distar.errors import UserError
from distar.runtime import configure_threads, count_parameters, stored_parameters

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
THREADED_COMMANDS = (["train", "--config", "c.yaml"], ["demo", "--out", "o"], ["eval"],
                     ["generate", "--model", "m", "--prompt", "p"], ["serve"], ["world", "build", "shapes"])


@pytest.fixture
def two_free_cores(monkeypatch):
    """No OMP_NUM_THREADS, and a machine with two idle cores."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "available_cores", lambda: 2)
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (0.0, 0.0, 0.0))


def test_request_beats_environment_which_beats_model_size(monkeypatch, two_free_cores):
    big = runtime.MULTI_THREAD_PARAMETERS
    assert configure_threads(parameters=big) == 2 == torch.get_num_threads()
    assert configure_threads(parameters=big - 1) == 1 == torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert configure_threads(parameters=10) == 2
    assert configure_threads(1, parameters=big) == 1 == torch.get_num_threads()


def test_size_unknown_uses_the_free_cores_and_an_accelerator_one(monkeypatch, two_free_cores):
    assert configure_threads() == 2
    assert configure_threads(parameters=runtime.MULTI_THREAD_PARAMETERS, device="cuda") == 1
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (1.2, 0.0, 0.0))  # one core busy
    assert configure_threads() == 1


@pytest.mark.parametrize("requested, env", [(0, None), (None, "0"), (None, "two")])
def test_bad_counts_are_user_errors(monkeypatch, requested, env):
    if env is not None:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    with pytest.raises(UserError):
        configure_threads(requested)


def test_parameter_counts_from_modules_and_from_safetensors_headers(tmp_path):
    shared = torch.nn.Linear(3, 2)
    assert count_parameters(shared, torch.nn.Sequential(shared), None) == 8
    (tmp_path / "unet").mkdir()
    save_file({"w": torch.zeros(4, 5), "b": torch.zeros(5)}, tmp_path / "unet" / "model.safetensors")
    save_file({"x": torch.zeros(2, 3, 2)}, tmp_path / "other.safetensors")
    assert stored_parameters(tmp_path) == 37
    assert stored_parameters(tmp_path / "other.safetensors") == 12
    assert stored_parameters("some-org/a-hub-id") is None
    (tmp_path / "lies.safetensors").write_bytes((10**12).to_bytes(8, "little") + b"{}")  # a header "1 TB" long
    assert stored_parameters(tmp_path) is None and stored_parameters(tmp_path / "lies.safetensors") is None


@pytest.mark.parametrize("argv", THREADED_COMMANDS, ids=lambda argv: " ".join(argv[:2]))
def test_every_compute_command_takes_threads(argv):
    args = build_parser().parse_args([*argv, "--threads", "3"])
    assert isinstance(args, argparse.Namespace) and args.threads == 3


def test_train_prints_the_count_once_and_takes_it_from_the_flag(tmp_path, capsys):
    quick = ["logging.progress_bar=false", "sampling.every=0", "logging.report_to=none", "checkpointing.save_final=false"]
    argv = ["train", "--config", str(CONFIGS / "tiny_sd.yaml"), f"output_dir={tmp_path}", *quick, "loop.max_steps=1"]
    assert main([*argv, "--threads", "1"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "torch thread" in line]
    assert lines == ["distar train: 1 torch thread(s)"]
    assert "threads: 1" in (tmp_path / "config.yaml").read_text()
