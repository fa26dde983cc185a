"""The command line: help lists commands; bad input gives one line, not a traceback."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Literal

from distar.cli import COMMANDS
from distar.config import field


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distar", *args], capture_output=True, text=True)


def test_help_lists_every_command():
    out = run("--help")
    assert out.returncode == 0
    for name, _, _ in COMMANDS:
        assert name in out.stdout


def test_unknown_command_is_one_line_error():
    out = run("frobnicate")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "invalid choice" in out.stderr


def test_rewards_and_eval_help_list_the_names_they_accept(capsys):
    import pytest

    from distar.cli import main
    from distar.eval.metrics import METRIC_NAMES
    from distar.rewards import REWARD_NAMES

    for command, names in (("rewards", REWARD_NAMES), ("eval", METRIC_NAMES)):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split()).replace(" ,", ",").replace(", ", ",")
        assert all(name in text for name in names), command


@dataclasses.dataclass
class Settings:
    """A config whose fields become flags."""

    out_dir: str = field("runs", help="where results go")
    batch_size: int = field(4, help="images per batch")
    dtype: Literal["float32", "bfloat16"] = field("float32", help="dtype of the models")
    offline: bool = field(False, help="never download")
    scale: float | None = field(None, help="a scale")
    seeds: list[int] = field([0], help="seeds")


def test_config_flags_take_type_choices_and_help_from_the_config_fields():
    import argparse

    import pytest

    from distar.commands import add_config_flags, config_flag_values
    from distar.config import from_dict

    names = ("out_dir", "batch_size", "dtype", "offline", "scale")
    parser = argparse.ArgumentParser()
    add_config_flags(parser, Settings, names, flags={"out_dir": "out"})
    assert "images per batch (default: 4)" in " ".join(parser.format_help().split())
    args = parser.parse_args(["--out", "x", "--batch-size", "8", "--offline", "--scale", "0.5"])
    assert config_flag_values(args, names) == {"out_dir": "x", "batch_size": 8, "offline": True, "scale": 0.5}
    assert from_dict(Settings, config_flag_values(parser.parse_args([]), names)) == Settings()
    with pytest.raises(SystemExit):
        parser.parse_args(["--dtype", "float16"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--batch-size", "many"])
    with pytest.raises(TypeError, match="no command-line flag"):
        add_config_flags(argparse.ArgumentParser(), Settings, ["seeds"])


def test_a_flag_for_a_boolean_on_by_default_turns_it_off():
    import argparse

    from distar.commands import add_config_flags, config_flag_values

    @dataclasses.dataclass
    class Sampling:
        ema: bool = field(True, help="use the EMA weights")

    parser = argparse.ArgumentParser()
    add_config_flags(parser, Sampling, ["ema"])
    assert "use the EMA weights (this flag turns it off)" in " ".join(parser.format_help().split())
    assert config_flag_values(parser.parse_args(["--no-ema"]), ["ema"]) == {"ema": False}
    assert config_flag_values(parser.parse_args([]), ["ema"]) == {}


def test_help_imports_no_torch():
    """``distar --help`` and every ``distar <cmd> --help`` build their parsers without torch or
    diffusers (heavy imports wait for ``run``), so help comes at once (bench/cli_help.py times it)."""
    import subprocess
    import sys

    from distar.cli import COMMANDS

    script = (
        "import sys\n"
        "from distar.cli import main\n"
        "for argv in sys.argv[1:]:\n"
        "    try:\n"
        "        main(argv.split())\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'numpy') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    argvs = ["--help", *(f"{name} --help" for name, _, _ in COMMANDS)]
    done = subprocess.run([sys.executable, "-c", script, *argvs], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == "HEAVY []"
    assert all(name in done.stdout for name, _, _ in COMMANDS)


def test_an_error_line_reaches_stderr_in_one_write(monkeypatch, tmp_path):
    """The processes of a launch share one stderr pipe: a line written in two parts could run into another's."""
    from distar.cli import main

    class Recorder:
        def __init__(self):
            self.writes = []

        def write(self, text):
            self.writes.append(text)
            return len(text)

        def flush(self):
            pass

    recorder = Recorder()
    monkeypatch.setattr(sys, "stderr", recorder)
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    errors = [w for w in recorder.writes if "error" in w]
    assert errors and all(w.endswith("\n") and w.count("\n") == 1 for w in errors), recorder.writes
