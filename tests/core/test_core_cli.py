"""The command line: help lists commands; bad input gives one line, not a traceback."""

from __future__ import annotations

import subprocess
import sys

from distar.cli import COMMANDS


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
