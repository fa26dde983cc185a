"""The Algorithm 1 loop on a tiny Gaussian backend: updates, gradient hygiene, EMA, resume, outputs."""

from __future__ import annotations

import json
import math
import re
import sys

import pytest
import torch
from torch import Tensor
from accelerate.utils import set_seed
from train_helpers import PROMPTS, GaussianBackend, MeanReward, make_config
from safetensors.torch import load_file

from distar.config import ConfigError
from distar.errors import RunError
from distar.objectives import DIStarLoss
from distar.train import Trainer
from distar.train.algorithm import assistant_losses, generator_losses
from distar.train.data import PromptStream
from distar.train.setup import make_accelerator
from distar.train.tracking import TIMING_KEYS


def losses(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def clone_params(module):
    return [p.detach().clone() for p in module.parameters()]


def test_updates_trainable_models_only_and_writes_a_run_folder(tmp_path):
    backend = GaussianBackend()
    generator0, assistant0 = clone_params(backend.generator), clone_params(backend.assistant)
    reference0 = clone_params(backend.mean_map)
    records = Trainer(make_config(tmp_path), backend, MeanReward(), PROMPTS).train()

    assert all(not torch.equal(a, b) for a, b in zip(generator0, backend.generator.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(assistant0, backend.assistant.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(reference0, backend.mean_map.parameters()))
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    for key in ("assistant/loss", "generator/loss", "generator/divergence", "generator/reward", "lr/generator"):
        assert all(torch.isfinite(torch.tensor(r[key])) for r in records), key
    assert all("mem/peak_mib" in r and r["time/step_s"] > 0 for r in records[1::2])  # every logging.every = 2
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert logged == records
    files = {p.name for p in (tmp_path / "checkpoint-6").iterdir()}
    expected = {"config.yaml", "generator.safetensors", "assistant.safetensors", "trainer_state.json"}
    assert expected <= files
    assert "generator_ema.safetensors" not in files  # EMA off
    assert set(load_file(tmp_path / "checkpoint-6" / "generator.safetensors")) == {"a", "b", "w"}
    assert (tmp_path / "config.yaml").is_file()


def test_matches_a_plain_reimplementation_of_algorithm_1(tmp_path):
    """Two steps with k = 2 against a direct loop using autograd.grad per model: the trainer's
    assistant sees only ∇ψ DSM and its generator only ∇θ of Eq. (3.4) (no leaked gradients)."""
    config = make_config(
        tmp_path,
        loop={"max_steps": 2, "assistant_steps": 2},
        optim={"generator": {"lr": 1e-2, "max_grad_norm": None}, "assistant": {"lr": 1e-2, "max_grad_norm": None}},
        checkpointing={"save_final": False},
    )
    trained = GaussianBackend()
    Trainer(config, trained, MeanReward(), PROMPTS).train()

    backend, reward = GaussianBackend(), MeanReward()
    set_seed(config.seed)
    stream = PromptStream(PROMPTS, config.data.batch_size, seed=config.seed)
    models = {"assistant": backend.assistant, "generator": backend.generator}
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.01) for name, m in models.items()}

    def update(name, loss):
        params = list(models[name].parameters())
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            p.grad = g
        opts[name].step()

    for _ in range(2):
        for _ in range(2):
            prompts = stream.next_batch()
            cond, z = backend.encode_prompts(prompts), backend.sample_latents(len(prompts))
            update("assistant", assistant_losses(backend, cond, z, objective=config.objective)["loss"].mean())
        prompts = stream.next_batch()
        cond, z = backend.encode_prompts(prompts), backend.sample_latents(len(prompts))
        terms = generator_losses(backend, cond, z, prompts=prompts, reward=reward, loss=DIStarLoss(config.objective))
        update("generator", terms["loss"].mean())

    for name, module in models.items():
        for expected, got in zip(module.parameters(), getattr(trained, name).parameters()):
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7, msg=name)


def test_gradients_left_on_the_parameters_do_not_reach_the_first_update(tmp_path):
    """A backend fitted by the caller before training (its .grad still set) trains as a fresh one."""
    config = make_config(tmp_path / "clean")
    clean = GaussianBackend()
    expected = losses(Trainer(config, clean, MeanReward(), PROMPTS).train())
    dirty = GaussianBackend()
    for p in [*dirty.generator.parameters(), *dirty.assistant.parameters()]:
        p.grad = torch.full_like(p, 1e3)
    config = make_config(tmp_path / "dirty")
    assert losses(Trainer(config, dirty, MeanReward(), PROMPTS).train()) == expected
    assert all(torch.equal(a, b) for a, b in zip(clean.generator.parameters(), dirty.generator.parameters()))


def test_ema_follows_the_generator(tmp_path):
    decay = 0.8
    config = make_config(tmp_path, ema={"decay": decay}, loop={"max_steps": 5})
    backend = GaussianBackend()
    trainer = Trainer(config, backend, MeanReward(), PROMPTS)
    shadow = clone_params(backend.generator)
    for n in range(1, 6):
        trainer.train_step()
        d = 0.0 if n <= 1 else min(decay, n / (9 + n))  # diffusers EMAModel: (1 + s)/(10 + s), s = n − 1
        shadow = [d * s + (1 - d) * p.detach() for s, p in zip(shadow, backend.generator.parameters())]
    trainer.save_checkpoint()
    saved = load_file(tmp_path / "checkpoint-5" / "generator_ema.safetensors")
    for name, expected in zip(["a", "b", "w"], shadow):
        torch.testing.assert_close(saved[name], expected)
    assert not torch.equal(saved["a"], backend.generator.a.detach())


def run(tmp_path, max_steps, resume=None, **sections):
    config = make_config(
        tmp_path,
        ema={"decay": 0.9},
        loop={"max_steps": max_steps, "assistant_steps": 2},
        optim={
            "generator": {"lr": 1e-2, "warmup_steps": 4, "max_grad_norm": 0.5},
            "assistant": {"lr": 2e-2, "warmup_steps": 4},
        },
        **sections,
    )
    trainer = Trainer(config, GaussianBackend(), MeanReward(), PROMPTS)
    return trainer, trainer.train(resume=resume)


def test_resume_continues_the_exact_loss_sequence(tmp_path):
    straight, records = run(tmp_path / "straight", 6)
    # A run that dies after step 5 with its last checkpoint at step 3 ...
    run(tmp_path / "split", 5, checkpointing={"every": 3, "save_final": False})
    # ... resumed from `latest`: steps 4-6 again, and the log keeps each step once.
    resumed, tail = run(tmp_path / "split", 6, resume="latest")
    assert [r["step"] for r in tail] == [4, 5, 6]
    assert losses(tail) == losses(records[3:])
    logged = [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert losses(logged) == losses(records)
    for name in ("generator.safetensors", "generator_ema.safetensors", "assistant.safetensors"):
        a = load_file(tmp_path / "straight" / "checkpoint-6" / name)
        b = load_file(tmp_path / "split" / "checkpoint-6" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    # An explicit checkpoint path works the same, into another run folder.
    _, again = run(tmp_path / "other", 6, resume=str(tmp_path / "split" / "checkpoint-3"))
    assert losses(again) == losses(records[3:])


def test_resume_latest_without_checkpoints_starts_fresh(tmp_path):
    _, records = run(tmp_path, 2, resume="latest")
    assert [r["step"] for r in records] == [1, 2]


def test_checkpoint_total_limit(tmp_path):
    run(tmp_path, 5, checkpointing={"every": 1, "total_limit": 2})
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-5"]
    assert not list(tmp_path.glob(".checkpoint-*"))


def test_sample_grids_for_image_backends(tmp_path):
    from PIL import Image

    config = make_config(tmp_path, sampling={"every": 2, "prompts": PROMPTS[:3], "seeds": [0, 1]}, ema={"decay": 0.5})
    Trainer(config, GaussianBackend(image=True), MeanReward(), PROMPTS).train()
    names = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert names == [f"step-{s:06d}{e}.png" for s in (0, 2, 4, 6) for e in ("-ema", "")]
    grid = Image.open(tmp_path / "samples" / "step-000000.png")
    assert grid.size == (2 * 4, 3 * 4)  # columns = seeds, rows = prompts, 4×4 images
    # Fixed prompts and seeds: a second run draws the same step-0 grid.
    other = make_config(tmp_path / "again", sampling={"every": 100, "prompts": PROMPTS[:3], "seeds": [0, 1]})
    Trainer(other, GaussianBackend(image=True), MeanReward(), PROMPTS).train()
    again = Image.open(tmp_path / "again" / "samples" / "step-000000.png")
    assert list(grid.getdata()) == list(again.getdata())


def test_sampling_is_off_for_non_image_backends(tmp_path):
    config = make_config(tmp_path, sampling={"every": 2})
    records = Trainer(config, GaussianBackend(), MeanReward(), PROMPTS).train()
    assert len(records) == 6 and not (tmp_path / "samples").exists()


def test_reward_required_when_reward_scale_is_set(tmp_path):
    with pytest.raises(ConfigError, match="reward_scale is 1 but no reward"):
        Trainer(make_config(tmp_path), GaussianBackend(), None, PROMPTS)
    config = make_config(tmp_path, objective={"preset": "sim", "reward_scale": 0.0})
    assert Trainer(config, GaussianBackend(), None, PROMPTS).train()[-1]["step"] == 6


def test_8bit_adam_needs_bitsandbytes(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # importing it now fails, as when not installed
    config = make_config(tmp_path, optim={"use_8bit_adam": True})
    with pytest.raises(ConfigError, match="optim.use_8bit_adam: needs bitsandbytes"):
        Trainer(config, GaussianBackend(), MeanReward(), PROMPTS)


def test_tensorboard_events_are_written(tmp_path):
    config = make_config(tmp_path, logging={"report_to": "tensorboard"}, sampling={"every": 3})
    Trainer(config, GaussianBackend(image=True), MeanReward(), PROMPTS).train()
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))


def test_tensorboard_holds_learning_rates_throughput_and_the_config(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = make_config(tmp_path, logging={"report_to": "tensorboard", "every": 2})
    Trainer(config, GaussianBackend(image=True), MeanReward(), PROMPTS).train()
    tags: set[str] = set()
    for events in (tmp_path / "tensorboard").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events.parent))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    for tag in ("lr/generator", "lr/assistant", "time/samples_per_s", "time/images_per_s", "generator/loss"):
        assert tag in tags, (tag, sorted(tags))
    hparams = [p.read_text() for p in (tmp_path / "tensorboard").rglob("hparams.yml")]
    assert hparams and "objective.reward_scale" in hparams[0] and "optim.generator.lr" in hparams[0]


@pytest.mark.parametrize("tracker, package", [("tensorboard", "distar[tensorboard]"), ("wandb", "distar[wandb]"),
                                              ("comet_ml", "comet_ml")])
def test_a_tracker_needs_its_package(tracker, package, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == tracker else real(name, *a))
    config = make_config(tmp_path, logging={"report_to": f"none,{tracker}"})
    with pytest.raises(ConfigError, match=rf"logging.report_to: {tracker} needs .*pip install '{re.escape(package)}'"):
        Trainer(config, GaussianBackend(), MeanReward(), PROMPTS)


def test_report_to_takes_accelerate_tracker_names(tmp_path):
    assert make_config(tmp_path, logging={"report_to": "tensorboard, wandb"}).logging.trackers == ["tensorboard", "wandb"]
    assert make_config(tmp_path, logging={"report_to": "all"}).logging.trackers == ["all"]
    assert make_config(tmp_path, logging={"report_to": "none"}).logging.trackers == []
    with pytest.raises(ConfigError, match="report_to: unknown tracker 'tensorbord'"):
        make_config(tmp_path, logging={"report_to": "tensorbord"})


def test_deepspeed_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match=r"^DeepSpeed is not supported: .*DDP.*FSDP"):
        Trainer(make_config(tmp_path), GaussianBackend(), MeanReward(), PROMPTS)


def test_mixed_precision_follows_accelerate_unless_set(tmp_path, monkeypatch):
    from accelerate.state import AcceleratorState

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch` sets from its config
    try:
        for loop, expected in (({}, "bf16"), ({"mixed_precision": "no"}, "no")):
            AcceleratorState._reset_state(reset_partial_state=True)
            assert make_accelerator(make_config(tmp_path, loop=loop)).mixed_precision == expected
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def strict_json_lines(path):
    """Every line of a log parsed as strict JSON (a bare NaN or Infinity token raises)."""

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def test_a_torn_log_line_and_a_corrupted_newest_checkpoint_do_not_stop_an_exact_resume(tmp_path, caplog):
    _, records = run(tmp_path / "straight", 6)
    run(tmp_path / "split", 5, checkpointing={"every": 2, "save_final": False})
    split = tmp_path / "split"
    with (split / "log.jsonl").open("a") as f:
        f.write('{"step": 6, "assistant/lo')  # killed while writing a line
    damaged = split / "checkpoint-4" / "generator.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-3] + b"\x00\x00\x00")
    with caplog.at_level("WARNING", logger="distar"):
        resumed, tail = run(split, 6, resume="latest")
    assert "checkpoint-4/generator.safetensors: SHA-256 does not match" in caplog.text
    assert [r["step"] for r in tail] == [3, 4, 5, 6]  # from checkpoint-2
    assert losses(strict_json_lines(split / "log.jsonl")) == losses(records)


def poisoned_reward(bad_calls):
    """MeanReward, but NaN on the given (0-based) calls."""
    calls = iter(range(10**6))

    class Poisoned(MeanReward):
        def score(self, images, prompts):
            value = super().score(images, prompts)
            return value * float("nan") if next(calls) in bad_calls else value

    return Poisoned()


def test_a_non_finite_step_is_skipped_logged_and_counted(tmp_path, caplog):
    config = make_config(tmp_path, ema={"decay": 0.5}, loop={"max_steps": 4, "assistant_steps": 1})
    trainer = Trainer(config, GaussianBackend(), poisoned_reward({1}), PROMPTS)
    trainer.train_step()
    generator, shadow = clone_params(trainer.backend.generator), [s.clone() for s in trainer.ema.shadow_params]
    with caplog.at_level("WARNING", logger="distar"):
        logs = trainer.train_step()
    assert "step 2: skipped 1 non-finite update(s) (generator)" in caplog.text
    assert not torch.isfinite(logs["generator/loss"])
    assert all(torch.equal(a, b) for a, b in zip(generator, trainer.backend.generator.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(shadow, trainer.ema.shadow_params))
    assert (trainer.bad_steps, trainer.consecutive_bad_steps) == (1, 1)
    trainer.train_step()
    assert (trainer.bad_steps, trainer.consecutive_bad_steps) == (1, 0)
    assert not all(torch.equal(a, b) for a, b in zip(generator, trainer.backend.generator.parameters()))


def test_a_run_that_ends_on_skipped_steps_is_an_error(tmp_path):
    config = make_config(tmp_path, loop={"max_steps": 4, "assistant_steps": 1, "max_bad_steps": 3})
    with pytest.raises(RunError, match=r"^finished at step 4, but its last 2 step\(s\) skipped non-finite updates: .*checkpoint-4$"):
        Trainer(config, GaussianBackend(), poisoned_reward({2, 3}), PROMPTS).train()
    (tmp_path / "ok").mkdir()
    config = make_config(tmp_path / "ok", loop={"max_steps": 4, "assistant_steps": 1, "max_bad_steps": 3})
    assert len(Trainer(config, GaussianBackend(), poisoned_reward({1}), PROMPTS).train()) == 4  # recovered: fine


@pytest.mark.parametrize(
    "every, message",
    [
        # lr 1e30 with weight decay sends the weights to ±inf at step 2 (whose assistant update already
        # overflows and is skipped); every loss is NaN after.
        (10, r"stopped at step 4: 3 steps in a row with a non-finite loss .*max_bad_steps = 3\); no checkpoint"),
        (1, r"step 2: non-finite weights in generator.safetensors: checkpoint-2 not written; last checkpoint: .*-1$"),
    ],
)
def test_lr_1e30_stops_the_run_without_a_non_finite_checkpoint(tmp_path, every, message):
    config = make_config(
        tmp_path,
        optim={"generator": {"lr": 1e30}},
        loop={"max_steps": 20, "assistant_steps": 1, "max_bad_steps": 3},
        checkpointing={"every": every},
        logging={"every": 4},
    )
    with pytest.raises(RunError, match=message):
        Trainer(config, GaussianBackend(), MeanReward(), PROMPTS).train()
    logged = strict_json_lines(tmp_path / "log.jsonl")
    assert [r["step"] for r in logged] == list(range(1, len(logged) + 1))
    if every == 10:
        assert [r.get("skipped_updates", 0) for r in logged] == [0, 1, 2, 2]
        assert logged[-1]["generator/loss"] is None
    for folder in tmp_path.glob("checkpoint-*"):
        for file in folder.glob("*.safetensors"):
            assert all(torch.isfinite(t).all() for t in load_file(file).values()), file


def test_non_finite_weights_are_never_written(tmp_path):
    trainer = Trainer(make_config(tmp_path), GaussianBackend(), MeanReward(), PROMPTS)
    trainer.train_step()
    with torch.no_grad():
        trainer.backend.generator.b[0] = float("inf")
    with pytest.raises(RunError, match="non-finite weights in generator.safetensors: checkpoint-1 not written"):
        trainer.save_checkpoint()
    assert not list(tmp_path.glob("*checkpoint-*"))


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    from distar.train import checkpoint as ckpt

    trainer = Trainer(make_config(tmp_path), GaussianBackend(), MeanReward(), PROMPTS)
    trainer.train_step()
    trainer.save_checkpoint()
    trainer.train_step()
    real = ckpt.save_tensors

    def full(tensors, path):
        real(tensors, path)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_tensors", full)
    with pytest.raises(RunError, match=r"could not write .*checkpoint-2 \(No space left on device\); last checkpoint: .*checkpoint-1$"):
        trainer.save_checkpoint()
    assert sorted(p.name for p in tmp_path.glob("*checkpoint-*")) == ["checkpoint-1"]
    assert ckpt.verify_checkpoint(tmp_path / "checkpoint-1") is None


def test_a_folder_holds_one_run(tmp_path):
    run(tmp_path, 2)
    with pytest.raises(ConfigError, match="already holds a run"):
        run(tmp_path, 2)
    config = make_config(tmp_path, loop={"max_steps": 3})
    records = Trainer(config, GaussianBackend(), MeanReward(), PROMPTS).train(overwrite=True)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-3"]


def test_a_malicious_optimizer_pickle_is_refused_in_one_line(tmp_path):
    import pickle

    from distar.train import checkpoint as ckpt

    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    run(tmp_path, 2)
    folder = tmp_path / "checkpoint-2"
    (folder / "optimizer.bin").write_bytes(pickle.dumps({"state": Payload()}))
    ckpt.write_manifest(folder)  # a crafted checkpoint, not a corrupted one: the manifest matches
    with pytest.raises(ckpt.CheckpointError, match="optimizer/scheduler state cannot be loaded") as err:
        run(tmp_path, 4, resume="latest")
    assert "\n" not in str(err.value) and not (tmp_path / "pwned").exists()


class _Stream:
    """Draws read in order from one fixed table, so they do not depend on how a batch is split."""

    def __init__(self, seed: int) -> None:
        self.table, self.position = torch.randn(4096, generator=torch.Generator().manual_seed(seed)), 0

    def take(self, shape) -> Tensor:
        n = math.prod(shape)
        values = self.table[self.position : self.position + n].reshape(shape)
        self.position += n
        return values


def test_gradient_accumulation_equals_a_larger_batch(tmp_path, monkeypatch):
    """4 micro-batches of 1 make the same updates as one batch of 4 (as TRL's invariant tests check)."""
    import distar.train.algorithm as algorithm

    def run(folder, batch_size, accumulation):
        latents, times, noises = _Stream(1), _Stream(2), _Stream(3)
        monkeypatch.setattr(
            algorithm, "_noise_and_time", lambda backend, x0, objective, part: (0.1 + 0.8 * times.take(x0.shape[:1]).sigmoid(),
                                                                         noises.take(x0.shape))
        )
        backend = GaussianBackend(seed=5)
        backend.sample_latents = lambda n, generator=None: latents.take((n, *backend.shape))
        config = make_config(folder, data={"batch_size": batch_size, "shuffle": False},
                             loop={"max_steps": 3, "gradient_accumulation_steps": accumulation},
                             checkpointing={"save_final": False}, logging={"every": 1})
        records = Trainer(config, backend, MeanReward(), PROMPTS).train()
        return records, [p.detach().clone() for p in (*backend.generator.parameters(), *backend.assistant.parameters())]

    big, big_params = run(tmp_path / "big", 4, 1)
    accumulated, accumulated_params = run(tmp_path / "accumulated", 1, 4)
    small, small_params = run(tmp_path / "small", 1, 1)
    for a, b in zip(big_params, accumulated_params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(losses(big), losses(accumulated)):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    assert any(not torch.allclose(a, b) for a, b in zip(big_params, small_params))  # the test can fail


def test_allow_tf32_switches_tf32_on(tmp_path):
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = matmul.allow_tf32, cudnn.allow_tf32
    try:
        matmul.allow_tf32 = cudnn.allow_tf32 = False
        make_accelerator(make_config(tmp_path))
        assert not matmul.allow_tf32
        make_accelerator(make_config(tmp_path, loop={"allow_tf32": True}))
        assert matmul.allow_tf32 and cudnn.allow_tf32
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before
