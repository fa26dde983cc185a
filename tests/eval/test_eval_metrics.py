"""Set metrics against independent computations: FID (scipy), diversity (closed forms)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from distar.config import ConfigError
from distar.eval.diversity import Diversity, pairwise_cosine_distance
from distar.eval.fid import FID, InceptionV3Features, clean_resize, prepare_uint8
from distar.eval.metrics import metric_loaders, parse_metric_names
from distar.testing.inception import save_tiny_inception


def test_pairwise_cosine_distance_closed_forms():
    assert float(pairwise_cosine_distance(torch.ones(3, 4))) == pytest.approx(0.0, abs=1e-6)
    assert float(pairwise_cosine_distance(torch.eye(4))) == pytest.approx(1.0)
    assert float(pairwise_cosine_distance(torch.tensor([[1.0, 0.0], [-2.0, 0.0]]))) == pytest.approx(2.0)


def test_diversity_groups_by_prompt_and_skips_single_images():
    features = {0: [[1.0, 0.0], [0.0, 1.0]], 1: [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]], 2: [[5.0, 0.0]]}
    records = [{"index": i} for i, f in features.items() for _ in f]
    images = torch.tensor([v for f in features.values() for v in f])
    diversity = Diversity(lambda x: x)  # the "images" are their own features here
    result = diversity.compute([(images[:3], records[:3]), (images[3:], records[3:])])
    assert result == {"diversity": pytest.approx((1.0 + 0.0) / 2), "diversity_prompts": 2}
    with pytest.raises(ValueError, match="two seeds"):
        diversity.compute([(images[-1:], records[-1:])])


def test_prompt_diversity_groups_by_seed_and_is_zero_for_a_prompt_blind_model():
    records = [{"index": i, "seed": s} for s in (0, 1) for i in range(3)]
    blind = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3)  # each seed: one image whatever the prompt
    spread = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]] * 2)
    metric = Diversity(lambda x: x, across="prompts")
    assert metric.name == "prompt_diversity"
    assert metric.compute([(blind, records)]) == {"prompt_diversity": pytest.approx(0.0), "prompt_diversity_seeds": 2}
    # pairs (1 − 0), (1 − 0), (1 − (−1)) in each seed: mean 4/3
    assert metric.compute([(spread, records)])["prompt_diversity"] == pytest.approx(4 / 3)
    with pytest.raises(ValueError, match="two prompts"):
        metric.compute([(blind[:1], records[:1])])


def _save_images(folder, seed, count, size=(20, 28)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


class CountingFeatures(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0
        self.cache_key, self.num_features = inner.cache_key, inner.num_features

    def forward(self, x):
        self.calls += x.shape[0]
        return self.inner(x)


def test_fid_matches_scipy_and_caches_reference(tmp_path):
    extractor = InceptionV3Features(save_tiny_inception(tmp_path / "tiny.pt", num_features=8))
    assert extractor.num_features == 8 and extractor.cache_key.startswith("tiny-")
    _save_images(tmp_path / "ref", seed=0, count=24)
    generated = torch.rand(20, 3, 16, 16, generator=torch.Generator().manual_seed(1))

    fid = FID(CountingFeatures(extractor), tmp_path / "ref", resolution=16, batch_size=7)
    value = fid.compute([(generated[:9], [{}] * 9), (generated[9:], [{}] * 11)])
    assert value["fid_images"] == 20 and value["fid_reference_images"] == 24

    # Independent truth: the same features through numpy/scipy.
    with torch.no_grad():
        ref = torch.stack([torch.from_numpy(np.array(Image.open(tmp_path / "ref" / f"{i}.png"))) for i in range(24)])
        ref_features = extractor(prepare_uint8(ref.permute(0, 3, 1, 2).float() / 255, 16)).double().numpy()
        gen_features = extractor(prepare_uint8(generated, 16)).double().numpy()
    assert value["fid"] == pytest.approx(_scipy_fid(ref_features, gen_features), rel=1e-4)

    # Second use: reference statistics come from the cache, only generated images are featurised.
    again = FID(CountingFeatures(extractor), tmp_path / "ref", resolution=16)
    assert again.reference_stats_path().is_file()
    assert again.compute([(generated, [{}] * 20)])["fid"] == pytest.approx(value["fid"], rel=1e-6)
    assert again.metric.inception.calls == 20
    # A cached statistics file is a reference by itself; a different resolution is a different key.
    from_stats = FID(extractor, again.reference_stats_path(), resolution=16)
    assert from_stats.compute([(generated, [{}] * 20)])["fid"] == pytest.approx(value["fid"], rel=1e-6)
    assert FID(extractor, tmp_path / "ref", resolution=12).reference_stats_path() != again.reference_stats_path()


def test_fid_of_a_set_with_itself_is_zero(tmp_path):
    extractor = InceptionV3Features(save_tiny_inception(tmp_path / "tiny.pt"))
    _save_images(tmp_path / "ref", seed=3, count=12, size=(16, 16))
    images = torch.stack([torch.from_numpy(np.array(Image.open(tmp_path / "ref" / f"{i}.png"))) for i in range(12)])
    fid = FID(extractor, tmp_path / "ref", resolution=None)
    assert fid.compute([(images.permute(0, 3, 1, 2).float() / 255, [{}] * 12)])["fid"] == pytest.approx(0.0, abs=1e-3)


def test_fid_preprocessing():
    wide = torch.zeros(1, 3, 4, 8)
    wide[..., 2:6] = 1.0  # the centre square is white, the sides black
    assert prepare_uint8(wide, None).tolist() == torch.full((1, 3, 4, 4), 255, dtype=torch.uint8).tolist()
    assert prepare_uint8(wide, 6).shape == (1, 3, 6, 6)
    x = torch.randint(0, 256, (2, 3, 10, 10), dtype=torch.uint8)
    out = clean_resize(x, 299)
    assert out.shape == (2, 3, 299, 299) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 255
    assert torch.equal(clean_resize(x, 10), x.float())


def test_metric_names_and_loader_errors():
    assert parse_metric_names("PickScore, clip,clip") == ["pickscore", "clip"]
    with pytest.raises(ConfigError, match="unknown metric 'is'"):
        parse_metric_names("clip,is")
    with pytest.raises(ConfigError, match="needs a reference"):
        metric_loaders(["fid"])
    with pytest.raises(ConfigError, match="unknown metric 'foo'"):
        metric_loaders(["clip"], paths={"foo": "x"})
    with pytest.raises(FileNotFoundError, match="FID reference not found"):
        metric_loaders(["fid"], fid_reference="no/such/folder")
    loaders = metric_loaders(["clip", "fid", "diversity"], fid_reference=".")
    assert [(m.name, m.kind) for m in loaders] == [("clip", "image"), ("fid", "set"), ("diversity", "set")]


def test_evaluation_inputs_follow_the_pil_reference_path():
    from distar.eval.metrics import evaluation_inputs
    from distar.rewards import load_reward

    clip = load_reward("clip", path="tiny")
    size = clip.transform.size
    images = torch.rand(2, 3, 3 * size, 2 * size, generator=torch.Generator().manual_seed(0))
    inputs = evaluation_inputs(images, clip)
    assert inputs.shape == (2, 3, size, size)
    # By hand: uint8, PIL bicubic of the short side to `size`, centre crop.
    pixels = (images[1] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    height = int(size * 3 / 2)  # (3 size, 2 size) images: the width is the short side
    resized = Image.fromarray(pixels).resize((size, height), Image.Resampling.BICUBIC)
    top = (height - size) // 2
    expected = np.asarray(resized.crop((0, top, size, top + size)))
    assert torch.equal((inputs[1] * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(expected.copy()))
    # Already at the input size (uint8 values): unchanged, and the reward then only normalises.
    torch.testing.assert_close(evaluation_inputs(inputs, clip), inputs)
    with torch.no_grad():
        close = clip.score(inputs, ["a", "b"]), clip.score(images, ["a", "b"])
    assert torch.allclose(*close, atol=5.0)  # same model, slightly different resampling (100·cos scale)
    hps = load_reward("hpsv2.1", path="tiny")
    assert evaluation_inputs(images, hps) is images  # HPS: tensor resize + pad is its reference path
