"""Seeded fuzzing of the command line: every bad `distar train` config file, override, prompt file,
output folder or resume argument, and every bad argument of `eval`, `generate`, `export` and
`rewards`, gives exit code 2 and one line on stderr, without a traceback and before any model is
loaded. The case generators live here so they can grow."""

from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from distar.cli import main

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny_sd.yaml"
SEED = 12

#: Values each key can never take (wrong type, out of range, non-finite, absurd size).
INVALID: dict[str, list] = {
    "loop.max_steps": ["ten", 1.5, 0, 10**12, True, [], {}, None, 1e40],
    "loop.assistant_steps": [0, 10**9, "x", -1],
    "loop.max_bad_steps": [0, "many"],
    "loop.mixed_precision": ["fp8", 16, "fp16"],  # fp16: this suite runs on the CPU, where it is refused
    "loop.threads": [0, 1_000_000, -4],
    "data.batch_size": [0, 10**12, "2", 2.5, -3],
    "data.prompts": ["a cat", [1, 2], {"a": 1}, ["a" * 100_000]],
    "optim.generator.lr": [math.nan, math.inf, -math.inf, 0, -1, "fast", [1]],
    "optim.assistant.betas": [[0.9], [1.0, 0.9], "0.9", [math.nan, 0.9]],
    "optim.assistant.max_grad_norm": [0, math.inf, "big"],
    "optim.generator.eps": [-1, 0, 1.5, math.nan],
    "optim.generator.weight_decay": [-1, math.inf, math.nan],
    "optim.assistant.lr_schedule": ["exponential", 1],
    "objective.reward_scale": [math.inf, math.nan, "big"],
    "objective.guidance_scale": [math.inf, math.nan],
    "objective.preset": ["nope", {"a": 1}, [1], 3],
    "seed": [-1, 2**32, "zero", 1.5, 10**30],
    "ema.decay": [1.0, -0.1, math.nan],
    "ema.power": [-1, 0, math.inf],
    "ema.update_after_step": [-1, "later"],
    "ema.inv_gamma": [0, -2, math.nan],
    "sampling.seeds": [[10**20], [-1], ["a"], [2**63]],
    "sampling.every": [-1],
    "checkpointing.total_limit": [0, "two"],
    "checkpointing.every": [-1, "often"],
    "logging.every": [0, "x"],
    "logging.project": ["../../escape", "/abs", "..", ".", "", "a/b", "a\\b"],
    "loop.stop_signals": [["SIGKILL"], ["NOPE"], "SIGTERM", [9]],
    "rewards": ["pickscore", [1], {"name": "x"}, [{"name": "pickscore", "weight": math.nan}]],
    "output_dir": [["a"], 3, "x" * 300, "/proc/distar-no-such/x", str(CONFIG / "inside-a-file"), "/", "~", str(Path.home())],
    "model": ["sd", [1]],
    "model.family": ["gan"],
    "model.resolution": [100_000, 0, -1, 10**30],
    "model.generator_lora_rank": [100_000, -1],
    "model.assistant_lora_rank": [100_000],
    "model.lora_alpha": [-1, 0, math.inf, math.nan],
    "model.lora_target_modules": [[], [""], "to_q"],
    "model.generator_init": ["/dev/zero", "/dev/null", "/no/such/unet.safetensors", "./missing.bin", "/proc"],
    "unknown_key": [1],
    "loop.unknown": [1],
}

#: Whole config files that are not configs.
TEXTS: list[bytes] = [
    b"- a\n- b\n",  # top level a list
    b"42\n",
    b"just a string\n",
    b"1: a\n",  # integer key
    b"? [1, 2]\n: a\n",  # unhashable key
    b"loop: {max_steps: 2}\nloop: {max_steps: 3}\n",  # duplicate keys
    b"loop:\n  max_steps: 2\n  max_steps: 3\n",
    b"seed: 1\nseed: 2\n",
    b"a: &a [*a]\n",  # self-referential alias
    b"loop: {max_steps: [1\n",  # syntax error
    b"loop:\n\tmax_steps: 2\n",  # tab indentation
    b"\xff\xfe\x00b\x00a\x00d\x00",  # UTF-16, not UTF-8
    bytes(range(256)),  # binary
    b"[" * 5000 + b"]" * 5000,  # deep nesting
    b"a:" + b" {a:" * 40 + b" 1" + b"}" * 40 + b"\n",
    # alias bombs: 9 levels of 9 references expand to 9**9 values
    b'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
    + b"".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n".encode() for i in range(8)
    )
    + b"loop: {max_steps: *i}\n",
    b"x: &x {a: 1}\nobjective: {preset: *x}\n",
    b"seed: " + b"9" * 5000 + b"\n",  # past Python's 4300-digit integer limit
    b"data: {prompts: [" + b"a," * 600_000 + b"]}\n",  # past the size limit: fast, with the reason
    b"".join(b"k%d: 1\n" % i for i in range(200_000)),
    b"data:\n  prompts:\n" + b"    - a cat\n" * 120_000,  # under 1.5 MiB of a list
]

#: Overrides that are not overrides.
OVERRIDES: list[str] = [
    "noequals",
    "=1",
    "loop..max_steps=1",
    ".seed=1",
    "loop.max_steps=[1",
    "loop.max_steps={",
    "loop.max_steps=*alias",
    "seed.deeper=1",
    "loop.max_steps.x=1",
    "optim.generator.lr=.nan",
    "optim.generator.lr=-.inf",
    "loop.max_steps=1e40",
    "data.batch_size=1000000000000",
    "seed=" + "9" * 5000,
    "sampling.seeds=[" + "1" * 5000 + "]",
    "data.prompts=[" + "a," * 600_000 + "]",
    "model.resolution=100000",
    "loop.threads=1000000",
    "model.generator_init=/dev/zero",
]

#: Overrides that are each valid alone but not together.
COMBINED: list[list[str]] = [
    ["optim.generator.lr_schedule=polynomial", "optim.generator.warmup_steps=8"],
    ["optim.generator.lr_schedule=polynomial", "optim.generator.warmup_steps=100", "loop.max_steps=10"],
    ["optim.assistant.lr_schedule=polynomial", "optim.assistant.lr=1e-8"],
    ["loop.mixed_precision=fp16", "loop.cpu=true"],
    ["sampling.every=2", "sampling.seeds=[]"],
]

#: Prompt files that hold no usable prompt (name, bytes).
PROMPT_FILES: list[tuple[str, bytes]] = [
    ("empty.txt", b""),
    ("blank.txt", b"   \n\t\n  \n"),
    ("crlf-blank.txt", b"\r\n\r\n \r\n"),
    ("binary.txt", bytes(range(256)) * 4),
    ("latin1.txt", "caf\u00e9 au lait\n".encode("latin-1")),
    ("huge.txt", b"a" * 20_000 + b"\n"),
    ("nul.txt", b"a cat\x00\n"),
    ("missing-columns.tsv", b"id\tprompt\n1\n2\n"),
    ("no-prompt-column.tsv", b"id\tscore\n1\t2\n"),
    ("header-only.csv", b"prompt\n"),
    ("garbage.jsonl", b"{not json\n[1, 2]\n"),
    ("object.json", b'{"prompt": "a cat"}'),
    ("broken.json", b'["a cat",'),
    ("unknown.bin", b"a cat\n"),
    ("utf16.txt", "a cat\n".encode("utf-16")),
]


def _set(data: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[last] = value


def cases(tmp: Path) -> Iterator[tuple[str, list[str]]]:
    """(label, `distar train` arguments) for every generated bad input."""
    rng = random.Random(SEED)
    keys = sorted(INVALID)
    for i in range(200):  # 1-3 bad values at random keys, in the file or as overrides
        data = yaml.safe_load(CONFIG.read_text())
        overrides = []
        for key in rng.sample(keys, rng.randint(1, 3)):
            value = rng.choice(INVALID[key])
            if rng.random() < 0.5 and key != "output_dir":  # the harness adds output_dir when no override gives it
                _set(data, key, value)
            else:
                overrides.append(f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}")
        path = tmp / f"fuzz-{i}.yaml"
        path.write_text(yaml.safe_dump(data))
        yield f"mutated-{i}", ["--config", str(path), *overrides]
    for i, text in enumerate(TEXTS):
        path = tmp / f"text-{i}.yaml"
        path.write_bytes(text)
        yield f"text-{i}", ["--config", str(path)]
    for item in OVERRIDES:
        yield f"override {item[:60]}", ["--config", str(CONFIG), item]
    for items in COMBINED:
        yield f"overrides {' '.join(items)}", ["--config", str(CONFIG), *items]
    fifo = tmp / "fifo.yaml"
    os.mkfifo(fifo)
    for special in (fifo, Path("/dev/zero"), Path("/dev/null"), tmp, Path("/proc/self/mem")):
        yield f"config {special}", ["--config", str(special)]
    for i in range(15):  # random printable garbage as an integer value
        junk = rng.choice("ghijklmnpqrstuvwxyz[{") + "".join(rng.choice("abc[]{}:,&*!|>'\" 019") for _ in range(8))
        yield f"junk-{i}", ["--config", str(CONFIG), f"loop.max_steps={junk}"]
    for name, content in PROMPT_FILES:
        path = tmp / "prompts" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)
        yield f"prompts {name}", ["--config", str(CONFIG), f"data.source={path}"]
    yield "prompts missing", ["--config", str(CONFIG), f"data.source={tmp / 'nope.txt'}"]
    run = tmp / "old-run"
    run.mkdir()
    (run / "log.jsonl").write_text('{"step": 1}\n')
    yield "existing run", ["--config", str(CONFIG), f"output_dir={run}"]
    yield "overwrite a run distar did not list", ["--config", str(CONFIG), f"output_dir={run}", "--overwrite"]
    for name in ("samples/holiday.png", "checkpoint-7/thesis.tex", "notes.txt"):
        user = tmp / f"user-{len(name)}"
        (user / name).parent.mkdir(parents=True)
        (user / name).write_text("mine")
        yield f"overwrite {name}", ["--config", str(CONFIG), f"output_dir={user}", "--overwrite"]
    yield "resume nothing", ["--config", str(CONFIG), f"output_dir={tmp / 'r1'}", "--resume", str(tmp / "nope")]
    bad = tmp / "bad-run" / "checkpoint-2"
    bad.mkdir(parents=True)
    (bad / "manifest.json").write_bytes(b"\xff" * 10)
    yield "resume bad latest", ["--config", str(CONFIG), f"output_dir={bad.parent}", "--resume", "latest"]
    yield "resume bad path", ["--config", str(CONFIG), f"output_dir={tmp / 'r2'}", "--resume", str(bad)]


#: Values no option of the other commands takes (label → (option, values)).
BAD_ARGUMENTS: dict[str, tuple[str, list[str]]] = {
    "seed": ("--seed", ["-1", str(2**64), str(2**63)]),
    "side": ("--height", ["0", "-8", "7", "100000"]),
    "width": ("--width", ["12", "16384"]),
    "device": ("--device", ["nonsense", "cuda:99", "cpu:x", "gpu"]),
}


def command_cases(tmp: Path) -> Iterator[tuple[str, list[str]]]:
    """(label, arguments) of `distar eval/generate/export/rewards` with one bad input each."""
    rng = random.Random(SEED)
    run = tmp / "some-run"  # exists; arguments are checked before it is read
    run.mkdir()
    images = tmp / "images"
    images.mkdir()
    for i in range(2):
        (images / f"{i}.png").write_bytes(b"not a png")  # only read once every argument passed
    good_prompts = tmp / "two.txt"
    good_prompts.write_text("a cat\na dog\n")
    prompt_files = []
    for name, content in PROMPT_FILES:
        path = tmp / "bench" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)
        prompt_files.append(path)
    blocked = tmp / "a-file"
    blocked.write_text("x")
    bad_outs = [str(blocked / "x"), "/proc/distar-no-such/x", "x" * 300]

    generate = ["generate", "--model", str(run), "--prompt", "a cat"]
    for option, values in BAD_ARGUMENTS.values():
        for value in values:
            yield f"generate {option} {value}", [*generate, f"{option}={value}"]
    for out in [*bad_outs, str(images), str(tmp / "image.jpeg")]:
        yield f"generate --out {out[:40]}", [*generate, "--out", f"{out}.png" if out in bad_outs else out]

    evaluate = ["eval", "--model", str(run), "--benchmark", str(good_prompts), "--out", str(tmp / "ev")]
    for path in [p for p in prompt_files if p.name != "huge.txt"]:  # eval takes long prompts (truncated)
        yield f"eval --benchmark {path.name}", ["eval", "--model", str(run), "--benchmark", str(path), "--out", str(tmp / "ev")]
    for option, values in (BAD_ARGUMENTS["device"], ("--seeds", ["-1", "0,0", str(2**64)]), ("--batch-size", ["0", "-2"])):
        for value in values:
            yield f"eval {option} {value}", [*evaluate, f"{option}={value}"]
    for spec in ["name=..", "name=.", "steps=0", "height=7", "width=-8", "guidance=.nan", "dtype=int8", "x=1", "steps=[1"]:
        yield f"eval --model ::{spec}", ["eval", "--model", f"{run}::{spec}", "--benchmark", str(good_prompts), "--out", str(tmp / "ev")]
    for out in bad_outs:
        yield f"eval --out {out[:40]}", [*evaluate[:-2], "--out", out]
    for metrics in ["nope", "pickscore,nope"]:
        yield f"eval --metrics {metrics}", [*evaluate, "--metrics", metrics]
    for i, text in enumerate(TEXTS):
        path = tmp / f"eval-{i}.yaml"
        path.write_bytes(text)
        yield f"eval --config text-{i}", [*evaluate, "--config", str(path)]
    for item in rng.sample(OVERRIDES[:9], 5):
        yield f"eval override {item}", [*evaluate, item]

    rewards = ["rewards", "--images", str(images), "--prompts", "a cat"]
    for path in prompt_files:
        yield f"rewards --prompts {path.name}", ["rewards", "--images", str(images), "--prompts", str(path)]
    for folder in [tmp / "no-such", blocked, run]:
        yield f"rewards --images {folder.name}", ["rewards", "--images", str(folder), "--prompts", "a cat"]
    for option, values in (
        BAD_ARGUMENTS["device"],
        ("--rewards", ["nope", "", "pickscore,nope"]),
        ("--model-path", ["noequals", "nope=tiny", "=tiny"]),
        ("--batch-size", ["0", "-1"]),
        ("--json", [f"{out}.json" for out in bad_outs]),
    ):
        for value in values:
            yield f"rewards {option} {value[:40]}", [*rewards, f"{option}={value}"]

    for out in [*bad_outs, str(blocked)]:
        yield f"export --out {out[:40]}", ["export", str(run), "--out", out]
    yield "export no checkpoint", ["export", str(run), "--out", str(tmp / "exported")]
    yield "export missing", ["export", str(tmp / "no-such"), "--out", str(tmp / "exported")]


class ModelLoaded(Exception):
    """A model was loaded for a bad input."""


def one_line_error(argv: list[str], capsys) -> tuple[bool, int | str, str]:
    """Run ``distar argv``: (exit code 2 with one `distar <command>: error:` line, code, stderr)."""
    try:
        code = main(argv)
    except ModelLoaded:
        return False, "a model was loaded", capsys.readouterr().err[-300:]
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    return code == 2 and len(lines) == 1 and lines[0].startswith(f"distar {argv[0]}: error: "), code, err[-300:]


def no_models(*args, **kwargs):
    raise ModelLoaded


def test_every_bad_argument_of_the_other_commands_is_one_line_before_any_model(tmp_path, monkeypatch, capsys):
    import distar.eval.suite
    import distar.export.pipeline
    import distar.rewards

    for module, name in [
        (distar.export.pipeline, "load_generator"),
        (distar.export.pipeline, "_generator_from_checkpoint"),
        (distar.rewards, "load_reward"),
        (distar.eval.suite, "evaluate"),
    ]:
        monkeypatch.setattr(module, name, no_models)
    import distar.backends.lora  # noqa: F401 - its one-time import warnings, before the cases

    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    results = [(label, *one_line_error(argv, capsys)) for label, argv in command_cases(tmp_path)]
    failed = [r for r in results if not r[1]]
    print(f"{len(results)} cases")
    assert len(results) >= 100
    assert not failed, f"{len(failed)} of {len(results)} not a one-line error: {failed}"


def test_every_bad_input_is_one_line_before_any_model(tmp_path, monkeypatch, capsys):
    import distar.train.build as build

    def no_models(*args, **kwargs):
        raise AssertionError("a model was built for a bad input")

    monkeypatch.setattr(build, "build_trainer", no_models)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", str(CONFIG), "--dry-run"]) == 0  # imports (and their one-time warnings)
    capsys.readouterr()
    results, seconds = [], {}
    for label, argv in cases(tmp_path):
        given = any(a.startswith("output_dir=") for a in argv)
        argv = ["train", *argv] if given else ["train", *argv, f"output_dir={tmp_path / 'out'}"]
        start = time.perf_counter()
        results.append((label, *one_line_error(argv, capsys)))
        seconds[label] = time.perf_counter() - start
    slowest = max(seconds, key=seconds.get)
    print(f"{len(results)} cases; slowest: {slowest[:60]!r} in {seconds[slowest]:.2f} s")
    failed = [r for r in results if not r[1]]
    assert len(results) >= 100
    assert not failed, f"{len(failed)} of {len(results)} not a one-line error: {failed[:5]}"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "--model", "runs/x::name=..", "--out", "o"], "name: '..' is not a usable name"),
        (["eval", "--model", "runs/x::steps=[1", "--out", "o"], "invalid YAML"),
        (["export", "/no/such/run", "--out", "o"], "/no/such/run"),
        (["generate", "--model", "/no/such/model", "--prompt", "a"], "no such folder"),
    ],
)
def test_other_commands_refuse_bad_arguments_in_one_line(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
