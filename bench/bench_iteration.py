"""distar's Algorithm 1 iteration against a minimal one doing only the mandatory passes, in one process.

    OMP_NUM_THREADS=1 python bench/bench_iteration.py [--reps 7] [--scaling]

Both iterations train the same tiny SDXL-shaped UNet (text-time conditioning, about 1 M parameters;
generator, assistant copy and frozen reference), batch 4, 16² latents, DI* with inner CFG ω = 7.5,
one assistant step, no reward. The minimal iteration, written below, is what any DI* step must do:
a no-grad generator pass and an assistant DSM forward/backward/AdamW step, then the generator pass,
the assistant and one batched (conditional + unconditional) reference pass through x_t, a backward to
the generator's weights only and its AdamW step; text embeddings are computed once per prompt.
distar's iteration is ``Trainer.train_step()`` with its defaults (gradient-norm clipping and finiteness
checks included). The two alternate, one repetition each in turn, after warm-up; times are the
process's CPU time (see :func:`seconds`); the table gives medians, [min–max] and the ratio of medians. Also printed: the minimal iteration by segment (with
text encoding and VAE decode of one batch, which this iteration does not need), one-step generation
against 50-step CFG sampling with the same UNet, and (``--scaling``) the ratio across batch sizes and
resolutions. Figures are CPU ratios on a tiny model: relative costs, not GPU timings.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import diffusers
import torch
import transformers
from diffusers import StableDiffusionXLPipeline
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_threads import sdxl_shaped_unet  # noqa: E402

from distar.config import load_config  # noqa: E402
from distar.runtime import environment  # noqa: E402
from distar.testing.pipelines import save_tiny_pipeline  # noqa: E402
from distar.train import TrainConfig, build_trainer  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny_sdxl.yaml"
WIDTHS = (32, 64)  # 1.01 M parameters


def write_pipeline(folder: Path) -> Path:
    """The tiny SDXL pipeline with its UNet widened to WIDTHS."""
    save_tiny_pipeline(folder, "sdxl")
    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    torch.manual_seed(0)
    pipe.register_modules(unet=sdxl_shaped_unet(WIDTHS))
    pipe.save_pretrained(folder)
    return folder


def make_trainer(folder: Path, out: str, batch: int, side: int, *overrides: str):
    config = load_config(TrainConfig, CONFIG, [
        f"model.pretrained={folder}", f"model.resolution={2 * side}", "model.assistant_lora_rank=0",
        "model.gradient_checkpointing=false", "rewards=[]", "objective.reward_scale=0", "ema.decay=0",
        f"data.batch_size={batch}", "loop.assistant_steps=1", "loop.max_steps=100000", "sampling.every=0",
        "checkpointing.every=0", "checkpointing.save_final=false", "logging.report_to=none",
        "logging.progress_bar=false", f"output_dir={out}", *overrides,
    ])
    return build_trainer(config)


class MinimalIteration:
    """The mandatory passes of one DI* iteration (di-star-math.md §7), on copies of a trainer's UNets."""

    def __init__(self, trainer, prompts: list[str]) -> None:
        backend, cfg = trainer.backend, trainer.config
        self.generator = copy.deepcopy(backend.generator)
        self.assistant = copy.deepcopy(backend.assistant)
        self.reference = backend.reference
        self.g_opt = torch.optim.AdamW(self.generator.parameters(), lr=cfg.optim.generator.lr)
        self.a_opt = torch.optim.AdamW(self.assistant.parameters(), lr=cfg.optim.assistant.lr)
        self.g_params = list(self.generator.parameters())
        self.alphas_cumprod = backend.schedule.alphas_cumprod.float()
        self.t_init, self.omega, self.huber_c = backend.t_init, cfg.objective.guidance_scale, cfg.objective.huber_c
        self.batch, self.shape, self.resolution = cfg.data.batch_size, backend.latent_shape, backend.resolution
        self.prompts = prompts
        self.embeds = {p: backend._encode([p]) for p in prompts}  # once per prompt
        self.uncond = backend.uncond
        self.position = 0

    def conditioning(self) -> tuple[Tensor, Tensor]:
        rows = [self.embeds[self.prompts[(self.position + i) % len(self.prompts)]] for i in range(self.batch)]
        self.position += self.batch
        return torch.cat([r.embeds for r in rows]), torch.cat([r.pooled for r in rows])

    def x0(self, unet, x_t: Tensor, t: Tensor, embeds: Tensor, pooled: Tensor) -> Tensor:
        size = [self.resolution, self.resolution]
        time_ids = torch.tensor([size + [0, 0] + size], dtype=x_t.dtype).expand(len(x_t), -1)
        eps = unet(x_t, t, embeds, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        a = self.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
        return (x_t - (1 - a**2).sqrt() * eps) / a

    def noised(self, x0: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        t = torch.randint(20, 980, (len(x0),))
        a = self.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
        s = (1 - a**2).sqrt()
        noise = torch.randn_like(x0)
        return t, noise, a, s, a * x0 + s * noise

    def step(self, segment: Callable[[str], contextmanager]) -> None:
        z = torch.randn(self.batch, *self.shape)
        t_init = torch.full((self.batch,), self.t_init)
        embeds, pooled = self.conditioning()
        with segment("assistant: generator pass (no grad)"), torch.no_grad():
            x0 = self.x0(self.generator, z, t_init, embeds, pooled)
        with segment("assistant: DSM forward + backward"):
            t, _, _, _, x_t = self.noised(x0)
            loss = (self.x0(self.assistant, x_t, t, embeds, pooled) - x0).square().mean()
            loss.backward()
        with segment("assistant: AdamW"):
            self.a_opt.step()
            self.a_opt.zero_grad(set_to_none=True)
        embeds, pooled = self.conditioning()
        z = torch.randn(self.batch, *self.shape)
        with segment("generator: generator pass"):
            x0 = self.x0(self.generator, z, t_init, embeds, pooled)
            t, noise, a, s, x_t = self.noised(x0)
        with segment("generator: assistant pass (graph to x_t)"):
            fake = self.x0(self.assistant, x_t, t, embeds, pooled)
        with segment("generator: reference pass, cond + uncond batched"):
            both = self.x0(
                self.reference, torch.cat([x_t, x_t]), torch.cat([t, t]),
                torch.cat([embeds, self.uncond.embeds.expand_as(embeds)]),
                torch.cat([pooled, self.uncond.pooled.expand_as(pooled)]),
            )
            cond, uncond = both.chunk(2)
            real = uncond + self.omega * (cond - uncond)
        with segment("generator: loss (3.4) + backward to θ"):
            s_fake, s_real = (a * fake - x_t) / s**2, (a * real - x_t) / s**2
            y = (s_fake - s_real).flatten(1)
            c = self.huber_c * y.shape[1] ** 0.5 * (a / s**2).flatten()
            d_prime = y / (y.square().sum(1, keepdim=True) + c[:, None] ** 2).sqrt()
            loss = -(d_prime * (s_fake + noise / s).flatten(1)).sum(1).mean()
            loss.backward(inputs=self.g_params)
        with segment("generator: AdamW"):
            self.g_opt.step()
            self.g_opt.zero_grad(set_to_none=True)


@contextmanager
def untimed(name: str) -> Iterator[None]:
    yield


def seconds(fn: Callable[[], object]) -> float:
    """CPU seconds of this process running ``fn``: on a shared machine less disturbed by other jobs
    than wall-clock time (with one torch thread all work runs in this process)."""
    tick = time.process_time()
    fn()
    return time.process_time() - tick


def spread(values: list[float]) -> str:
    return f"{statistics.median(values) * 1e3:8.1f} ms [{min(values) * 1e3:.1f}–{max(values) * 1e3:.1f}]"


def compare(folder: Path, batch: int, side: int, reps: int, *overrides: str) -> tuple[list[float], list[float], object]:
    """(distar seconds, minimal seconds) per repetition, interleaved after two warm-ups each."""
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(folder, out, batch, side, *overrides)
        minimal = MinimalIteration(trainer, list(trainer.config.data.prompts))
        for _ in range(2):
            trainer.train_step()
            minimal.step(untimed)
        ours, theirs = [], []
        for _ in range(reps):
            ours.append(seconds(trainer.train_step))
            theirs.append(seconds(lambda: minimal.step(untimed)))
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
        return ours, theirs, (trainer, minimal)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7, help="interleaved repetitions (>= 5)")
    parser.add_argument("--steps", type=int, default=50, help="steps of the CFG sampler compared with one step")
    parser.add_argument("--scaling", action="store_true", help="also batch 1/8 and 32² latents")
    args = parser.parse_args()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    env = environment()
    print(f"{env['device']}, torch {env['torch']}, {env['torch_threads_per_process']} thread(s), "
          f"load average {env['load_average']}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_pipeline(Path(tmp) / "pipe")
        params = sum(p.numel() for p in StableDiffusionXLPipeline.from_pretrained(folder).unet.parameters())
        print(f"UNet {params:,} parameters; batch 4, 16² latents; {args.reps} interleaved repetitions\n")

        print(f"{'iteration':<34} {'median [min–max]':>28} {'/ minimal':>10}")
        runs = {
            "distar (defaults)": (),
            "distar, no clipping": ("optim.generator.max_grad_norm=null", "optim.assistant.max_grad_norm=null"),
        }
        kept = []
        for name, overrides in runs.items():
            ours, theirs, models = compare(folder, 4, 16, args.reps, *overrides)
            kept.append(models)
            print(f"{name:<34} {spread(ours):>28} {statistics.median(ours) / statistics.median(theirs):10.3f}")
            print(f"{'  minimal, interleaved with it':<34} {spread(theirs):>28}")

        trainer, minimal = kept[0]
        backend = trainer.backend
        totals: dict[str, list[float]] = {}

        @contextmanager
        def timed(name: str) -> Iterator[None]:
            tick = time.process_time()
            yield
            totals.setdefault(name, []).append(time.process_time() - tick)

        for _ in range(args.reps):
            minimal.step(timed)
        prompts = list(trainer.config.data.prompts[:4])
        with torch.no_grad():
            for _ in range(args.reps):
                with timed("(not needed here) text encoding, 4 prompts"):
                    [backend._encode([p]) for p in prompts]
                with timed("(not needed here) VAE decode, batch 4"):
                    backend.decode(backend.sample_latents(4))
        whole = sum(statistics.median(v) for k, v in totals.items() if not k.startswith("("))
        print(f"\nminimal iteration by segment (medians){'':<14} {'share':>7}")
        for name, values in totals.items():
            share = "" if name.startswith("(") else f"{statistics.median(values) / whole:7.1%}"
            print(f"{name:<52} {spread(values):>26} {share}")

        pipe = StableDiffusionXLPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        one, many = [], []
        for _ in range(args.reps):
            one.append(seconds(lambda: pipe(prompts, num_inference_steps=1, guidance_scale=0.0, output_type="latent")))
            many.append(seconds(lambda: pipe(prompts, num_inference_steps=args.steps, guidance_scale=7.5, output_type="latent")))
        print("\nsampling 4 latents with the same UNet (diffusers pipeline, text encoding included, no VAE)")
        print(f"{'one step, no CFG':<34} {spread(one):>28}")
        print(f"{f'{args.steps} steps, CFG 7.5':<34} {spread(many):>28}   one-step / {args.steps}-step "
              f"{statistics.median(one) / statistics.median(many):.4f}")

        if args.scaling:
            print(f"\n{'batch':>5} {'latents':>8} {'distar':>28} {'minimal':>28} {'ratio':>7}")
            for batch, side in ((1, 16), (4, 16), (8, 16), (4, 32)):
                ours, theirs, _ = compare(folder, batch, side, args.reps)
                ratio = statistics.median(ours) / statistics.median(theirs)
                print(f"{batch:5d} {f'{side}²':>8} {spread(ours):>28} {spread(theirs):>28} {ratio:7.3f}")
    print(f"\nload average at end {[round(v, 2) for v in environment()['load_average']]}")


if __name__ == "__main__":
    main()
