"""A fresh ``distar export`` and ``distar generate`` print only distar's own lines on stderr."""

from __future__ import annotations

import subprocess
import sys

from distar.backends import ModelConfig, build_backend
from export_helpers import write_checkpoint


def test_export_and_generate_stderr_holds_only_distar_lines(tiny_dir, tmp_path, perturb):
    cfg = ModelConfig(family="sdxl", pretrained=str(tiny_dir("sdxl")))
    checkpoint, _ = write_checkpoint(tmp_path / "run", cfg, build_backend(cfg), perturb)
    out, png = tmp_path / "export", tmp_path / "a.png"
    script = (
        "import sys\nfrom distar.cli import main\n"
        f"assert main(['export', {str(checkpoint)!r}, '--out', {str(out)!r}]) == 0\n"
        f"assert main(['generate', '--model', {str(out)!r}, '--prompt', 'a cat', '--out', {str(png)!r}]) == 0\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stderr.splitlines()
    assert lines and all(line.startswith("distar") for line in lines), lines
