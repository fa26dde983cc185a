"""Every backend keeps the :class:`~distar.protocols.Backend` contract: each member the protocol declares is
there with its kind (attribute or method, same parameter names), and its few-step path runs (``generate``
per step, ``renoise``, ``sample`` over all k steps). The trainer reaches backends only through the
protocol: no ``getattr``/``hasattr`` on a backend in distar.train or distar.objectives."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any, get_args

import pytest
import torch
from torch import nn

from distar.backends import ModelConfig, build_backend
from distar.diffusion import PredictionType, Schedule
from distar.protocols import Backend, OneStepBackend
from distar.train.algorithm import BatchPart
from distar.worlds.gmm import GMMBackend, GMMWorld

SRC = Path(__file__).resolve().parents[2] / "src" / "distar"
PROMPTS = ["two small blue squares on a black background", "a red circle"]


def protocol_members() -> tuple[set[str], dict[str, inspect.Signature]]:
    """(attribute names, {method name: signature}) as :class:`Backend` declares them."""
    attributes = set(Backend.__annotations__)
    methods = {}
    for name, value in vars(Backend).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            attributes.add(name)
        elif inspect.isfunction(value):
            methods[name] = inspect.signature(value)
    return attributes, methods


def test_the_protocol_declares_what_the_trainer_calls():
    attributes, methods = protocol_members()
    assert {"schedule", "generator", "assistant", "reference", "prediction_type", "num_steps"} <= attributes
    assert {"generate", "renoise", "sample", "reference_x0", "reference_x0_cond_uncond", "assistant_x0"} <= set(methods)
    assert "step" in methods["generate"].parameters


def _shapes_backend() -> Any:
    from distar.worlds.shapes.assets import asset, build_record

    t_init = build_record()["config"]["one_step"]["t_init"]
    return build_backend(
        ModelConfig(family="sd", pretrained=str(asset("reference")), t_init=t_init, generator_init=str(asset("one_step")))
    )


#: name → (family and ModelConfig overrides on a tiny pipeline) or a builder.
CASES: dict[str, Any] = {
    "sd": ("sd", {}),
    "sd-2-steps": ("sd", {"steps": 2}),
    "sdxl": ("sdxl", {}),
    "sd3-3-steps": ("sd3", {"steps": 3}),
    "flux": ("flux", {"resolution": 16}),
    "sana": ("sana", {}),
    "gmm": lambda: GMMBackend(GMMWorld(), seed=0),  # prompts: the world's own
    "shapes": _shapes_backend,
}


@pytest.fixture(params=sorted(CASES))
def backend(request, tiny_dir) -> Any:
    case = CASES[request.param]
    if callable(case):
        return case()
    family, overrides = case
    return build_backend(ModelConfig(family=family, pretrained=str(tiny_dir(family)), **overrides))


def test_every_member_is_there_with_its_kind(backend):
    assert isinstance(backend, Backend)
    attributes, methods = protocol_members()
    for name in attributes:
        assert not inspect.isroutine(getattr(backend, name)), f"{name} must be an attribute"
    for name, signature in methods.items():
        member = getattr(backend, name)
        assert inspect.ismethod(member), f"{name} must be a method"
        expected = [p for p in signature.parameters if p != "self"]
        assert list(inspect.signature(member).parameters) == expected, name
    assert isinstance(backend.schedule, Schedule)
    assert isinstance(backend.generator, nn.Module) and isinstance(backend.assistant, nn.Module)
    assert backend.reference is None or isinstance(backend.reference, nn.Module)
    assert backend.prediction_type in get_args(PredictionType)
    assert isinstance(backend.num_steps, int) and backend.num_steps >= 1


def test_few_step_path_and_sample(backend):
    generators = BatchPart().generators(2)
    z = torch.cat([backend.sample_latents(1, torch.Generator().manual_seed(seed)) for seed in (0, 1)])
    cond = backend.encode_prompts(backend.world.prompts[:2] if isinstance(backend, GMMBackend) else PROMPTS)
    x0 = backend.sample(z, cond, generators)
    assert x0.shape == z.shape and not x0.requires_grad and torch.isfinite(x0).all()
    # sample is generate at each step, re-noised in between, from the same noise
    generators = [torch.Generator().manual_seed(g.initial_seed()) for g in generators]
    x = z
    with torch.no_grad():
        for step in range(backend.num_steps):
            by_hand = backend.generate(x, cond, step)
            if step + 1 < backend.num_steps:
                x = backend.renoise(by_hand, step + 1, generators)
    torch.testing.assert_close(x0, by_hand)
    assert backend.generate(z, cond, 0).requires_grad  # differentiable in θ
    if isinstance(backend, OneStepBackend):  # k = 1 and nothing to re-noise
        assert backend.num_steps == 1
        with pytest.raises(ValueError, match="one-step"):
            backend.renoise(x0, 1)
    assert torch.isfinite(backend.decode(x0)).all()


def _backend_lookups(path: Path) -> list[str]:
    """``getattr``/``hasattr`` calls whose object is a backend (``backend``, ``self.backend``, …)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr"):
            if node.args and "backend" in ast.unparse(node.args[0]):
                found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    return found


def test_the_trainer_reaches_backends_only_through_the_protocol():
    found = [hit for package in ("train", "objectives") for path in (SRC / package).rglob("*.py") for hit in _backend_lookups(path)]
    assert not found, f"getattr/hasattr on a backend: {found}"
