"""Sample grids and the images of monitor passes on their own: fixed seeds, EMA weights, untouched random state."""

from __future__ import annotations

import torch
from train_helpers import PROMPTS, GaussianBackend, MeanReward, make_config

from distar.train import Trainer
from distar.train.samples import generator_images, write_sample_grids


def trainer(tmp_path, *, image: bool = True, **sampling) -> Trainer:
    config = make_config(
        tmp_path, ema={"decay": 0.5}, monitor={"every": 0, "batch_size": 5}, sampling={"prompts": PROMPTS[:3], **sampling}
    )
    return Trainer(config, GaussianBackend(image=image), MeanReward(), PROMPTS)


def test_images_come_from_their_seeds_and_leave_the_random_state_alone(tmp_path):
    run = trainer(tmp_path)
    run.train_step()
    state = torch.get_rng_state()
    images = generator_images(run, PROMPTS[:2], [5, 6])
    assert torch.equal(torch.get_rng_state(), state)
    assert images.shape == (2, 3, 4, 4)
    assert torch.equal(generator_images(run, PROMPTS[:2], [5, 6]), images)
    assert not torch.equal(generator_images(run, PROMPTS[:2], [5, 7])[1], images[1])


def test_ema_images_use_the_ema_weights_and_restore_the_live_ones(tmp_path):
    run = trainer(tmp_path)
    for _ in range(2):
        run.train_step()
    live = [p.detach().clone() for p in run.generator_params]
    ema = generator_images(run, PROMPTS[:2], [0, 1], ema=True)
    assert all(torch.equal(p, q) for p, q in zip(run.generator_params, live))
    assert not torch.equal(ema, generator_images(run, PROMPTS[:2], [0, 1]))
    for p, shadow in zip(run.generator_params, run.ema.shadow_params):
        p.data.copy_(shadow)
    assert torch.equal(generator_images(run, PROMPTS[:2], [0, 1]), ema)


def test_a_grid_per_model_in_prompt_rows_and_seed_columns_and_none_for_points(tmp_path):
    from PIL import Image

    run = trainer(tmp_path / "images")
    assert write_sample_grids(run)
    names = sorted(p.name for p in (tmp_path / "images" / "samples").iterdir())
    assert names == ["step-000000-ema.png", "step-000000.png"]
    grid = Image.open(tmp_path / "images" / "samples" / "step-000000.png")
    assert grid.size == (2 * 4, 3 * 4)  # the default two seeds across, three prompts down, 4×4 images

    points = trainer(tmp_path / "points", image=False)
    assert not write_sample_grids(points)
    points.sample()
    assert not points._sampling and not (tmp_path / "points" / "samples").exists()


def test_grids_batch_by_sampling_batch_size_and_draw_the_same_images(tmp_path, monkeypatch):
    from PIL import Image

    grids = {}
    for batch_size in (4, 1):
        run = trainer(tmp_path / str(batch_size), batch_size=batch_size)
        sizes: list[int] = []

        def decode(x0, sizes=sizes, decode=run.backend.decode):
            return sizes.append(len(x0)) or decode(x0)

        monkeypatch.setattr(run.backend, "decode", decode)
        assert write_sample_grids(run)
        pairs = 3 * 2  # three prompts × the default two seeds; the monitor's batch_size (5) plays no part
        full, rest = divmod(pairs, batch_size)
        assert sizes == 2 * ([batch_size] * full + [rest] * (rest > 0))  # the live grid, then the EMA one
        grids[batch_size] = list(Image.open(tmp_path / str(batch_size) / "samples" / "step-000000.png").getdata())
    assert grids[4] == grids[1]
