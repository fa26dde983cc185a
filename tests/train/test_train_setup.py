"""The accelerator, optimisers and EMA of a run on their own (make_accelerator's refusals: test_train_loop.py)."""

from __future__ import annotations

import pytest
import torch
from train_helpers import make_config

from distar.config import ConfigError
from distar.train.setup import check_precision, make_ema, make_optimizer, uses_cpu


def test_fp16_is_refused_on_the_cpu_in_one_line(tmp_path, monkeypatch):
    config = make_config(tmp_path, loop={"cpu": True, "mixed_precision": "fp16"})
    assert uses_cpu(config)
    with pytest.raises(ConfigError, match="^loop.mixed_precision: fp16 needs a CUDA GPU; on the CPU use bf16 or no$"):
        check_precision(config)
    check_precision(make_config(tmp_path, loop={"cpu": True, "mixed_precision": "bf16"}))
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")  # accelerate launch's choice counts when the config has none
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        check_precision(make_config(tmp_path, loop={"cpu": True}))


def test_adamw_takes_the_network_s_settings(tmp_path):
    config = make_config(tmp_path, optim={"generator": {"lr": 3e-4, "betas": [0.5, 0.9], "weight_decay": 0.5, "eps": 1e-6}})
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = make_optimizer(params, config.optim.generator, use_8bit=False)
    group = optimizer.param_groups[0]
    assert type(optimizer) is torch.optim.AdamW and group["params"] == params
    assert (group["lr"], group["betas"], group["weight_decay"], group["eps"]) == (3e-4, (0.5, 0.9), 0.5, 1e-6)


def test_the_ema_follows_its_config(tmp_path):
    params = [torch.nn.Parameter(torch.ones(2))]
    assert make_ema(params, make_config(tmp_path).ema) is None
    ema = make_ema(params, make_config(tmp_path, ema={"decay": 0.5}).ema)
    assert ema.decay == 0.5 and torch.equal(ema.shadow_params[0], params[0].detach())
    for value in (3.0, 5.0):  # diffusers' EMA copies at its first step and averages from the second
        with torch.no_grad():
            params[0].fill_(value)
        ema.step(params)
    assert bool(((ema.shadow_params[0] > 3.0) & (ema.shadow_params[0] < 5.0)).all())
