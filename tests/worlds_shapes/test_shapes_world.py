"""Grammar, renderer, true utility and simulated choices of the shapes world."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from scipy import ndimage

from distar.worlds.shapes.data import consistency, contrast, describe, render_batch, render_prompts
from distar.worlds.shapes.grammar import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    Spec,
    parse_prompt,
    sample_prompts,
    sample_spec,
    vocabulary,
)
from distar.worlds.shapes.render import render
from distar.worlds.shapes.utility import (
    TrueUtility,
    UtilityWeights,
    choice_probability,
    degrade,
    simulate_choices,
    utility_terms,
)


def test_prompts_round_trip_and_use_only_grammar_words():
    rng = random.Random(0)
    words = set(vocabulary())
    for _ in range(500):
        spec = sample_spec(rng)
        assert parse_prompt(spec.prompt()) == spec
        assert set(spec.prompt().split()) <= words


def test_prompts_leave_attributes_open():
    specs = [parse_prompt(p) for p in sample_prompts(400, seed=1)]
    for name in ("colour", "size", "background"):
        named = sum(getattr(s, name) is not None for s in specs)
        assert 0.2 * len(specs) < named < 0.9 * len(specs), name
    assert all(s.position is None for s in specs if s.count > 1)


@pytest.mark.parametrize(
    "bad",
    [
        dict(shape="hexagon"),
        dict(shape="circle", count=2, position="left"),
        dict(shape="circle", count=3, size="large"),
        dict(shape="circle", colour="black", background="black"),
    ],
)
def test_invalid_specs_are_rejected(bad):
    with pytest.raises(ValueError):
        Spec(**bad)


@pytest.mark.parametrize("text", ["a red", "four circles", "a circle on a purple background", "a huge circle"])
def test_text_outside_the_grammar_is_rejected(text):
    with pytest.raises(ValueError):
        parse_prompt(text)


def test_render_is_deterministic_in_the_seed_and_in_range():
    spec = parse_prompt("two small circles")
    a, scene_a = render(spec, np.random.default_rng(3))
    b, scene_b = render(spec, np.random.default_rng(3))
    c, _ = render(spec, np.random.default_rng(4))
    assert a.shape == (3, 32, 32) and a.dtype == np.float32
    assert np.array_equal(a, b) and scene_a == scene_b
    assert not np.array_equal(a, c)
    assert 0.0 <= a.min() and a.max() <= 1.0


def test_ground_truth_matches_the_pixels():
    rng = random.Random(5)
    np_rng = np.random.default_rng(5)
    for _ in range(60):
        spec = sample_spec(rng)
        image, scene = render(spec, np_rng)
        # named attributes are honoured
        assert scene.spec().attributes().items() >= spec.attributes().items()
        # each shape's centre pixel has the shape's colour, the corners the background's
        for x, y in scene.centres:
            assert np.abs(image[:, int(y), int(x)] - COLOURS[scene.colour]).max() < 0.1
        assert np.abs(image[:, 0, 0] - BACKGROUNDS[scene.background]).max() < 0.1
        # shapes don't overlap: one connected blob per shape
        mask = np.abs(image - image[:, :1, :1]).max(0) > 0.5 * np.abs(
            np.array(COLOURS[scene.colour]) - BACKGROUNDS[scene.background]
        ).max()
        assert ndimage.label(mask)[1] == scene.count, spec.prompt()
        if spec.position is not None:
            assert scene.position == spec.position
            # within the ±1.5 px jitter, unless pulled in to keep a large shape inside the image
            assert np.hypot(*np.subtract(scene.centres[0], POSITIONS[spec.position])) < 4.0


def test_renderer_samples_what_the_prompt_leaves_open():
    images, scenes = render_prompts(["a circle"] * 200, range(200))
    assert len({s.colour for s in scenes}) >= 8
    assert len({s.background for s in scenes}) == 4
    assert len({s.size for s in scenes}) == 3
    assert len({s.position for s in scenes}) == 5
    assert all(s.shape == "circle" and s.count == 1 for s in scenes)


def test_descriptions_are_consistent_with_their_scene():
    specs = [parse_prompt(p) for p in sample_prompts(32, seed=2)]
    _, scenes = render_batch(specs, np.random.default_rng(2))
    text_rng = random.Random(0)
    descriptions = [describe(s, text_rng) for s in scenes]
    table = consistency(descriptions, scenes)
    assert table.diagonal().all()
    assert consistency(specs, scenes).diagonal().all()
    red = Spec("circle", colour="red")
    assert consistency([red], scenes)[:, 0].tolist() == [s.shape == "circle" and s.count == 1 and s.colour == "red" for s in scenes]


def _image(prompt: str, seed: int = 0) -> torch.Tensor:
    return render_prompts([prompt], [seed])[0]


def test_utility_prefers_contrast_centring_cleanliness_and_faithful_colour():
    utility = TrueUtility()
    score = lambda prompt, image_prompt: float(utility.score(_image(image_prompt), [prompt]))  # noqa: E731
    assert score("a circle", "a white circle on a black background") > score("a circle", "a white circle on a gray background")
    assert score("a large circle", "a large circle in the center") > score("a large circle", "a large circle on the left")
    assert score("a circle on the left", "a circle on the left") > score("a circle on the left", "a circle on the right")
    assert score("a red circle", "a red circle") > score("a red circle", "a blue circle")
    prompts = sample_prompts(200, seed=3)
    images, _ = render_prompts(prompts, range(200))
    degraded = degrade(images, torch.Generator().manual_seed(0))
    changed = (degraded - images).abs().amax((1, 2, 3)) > 0.05
    assert bool(changed.any())
    better = utility.score(images, prompts) > utility.score(degraded, prompts)
    assert better[changed].float().mean() > 0.8


def test_utility_terms_are_differentiable():
    prompts = ["a red circle on a white background", "two small squares"]
    images = render_prompts(prompts, [0, 1])[0].requires_grad_(True)
    terms = utility_terms(images, prompts)
    assert set(terms) == {"contrast", "composition", "cleanliness", "colour", "background", "size"}
    TrueUtility().score(images, prompts).sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_simulated_choices_follow_bradley_terry():
    generator = torch.Generator().manual_seed(0)
    u_a = torch.tensor([0.0, 0.5, 1.0, -1.0]).repeat_interleave(20000)
    u_b = torch.zeros_like(u_a)
    temperature = UtilityWeights().temperature
    choices = simulate_choices(u_a, u_b, temperature, generator)
    assert set(choices.unique().tolist()) <= {0.0, 1.0}
    observed = choices.view(4, -1).mean(1)
    expected = choice_probability(u_a, u_b, temperature).view(4, -1)[:, 0]
    assert torch.allclose(observed, expected, atol=0.015)
    assert torch.allclose(expected, torch.sigmoid(torch.tensor([0.0, 0.5, 1.0, -1.0]) / temperature))


def test_contrasts_name_one_attribute_wrongly_and_stay_in_the_grammar():
    rng = random.Random(0)
    specs = [sample_spec(rng) for _ in range(500)]
    _, scenes = render_batch(specs, np.random.default_rng(0))
    for spec, scene in zip(specs, scenes):
        other = contrast(spec, rng)
        assert parse_prompt(other.prompt()) == other and other != spec
        assert contrast(spec, rng, "shape").shape != spec.shape
        # a scene that fits its prompt never fits the prompt's contrast (a large shape named "on the left"
        # that cannot reach its target is nearer another position: such scenes fit neither)
        if bool(consistency([spec], [scene])[0, 0]):
            assert not bool(consistency([other], [scene])[0, 0])
    with pytest.raises(ValueError, match="does not name"):
        contrast(Spec("circle"), rng, "colour")
