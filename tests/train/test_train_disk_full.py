"""A full disk at each file `distar train` writes outside its checkpoints (config.yaml, log.jsonl, a
sample grid): one line naming the file, exit 1, nothing half-written left under a real name, and an
exact resume once space is freed. The disk is filled by injection at the write itself."""

from __future__ import annotations

import errno
import tempfile
from pathlib import Path

import pytest
from test_train_kill import assert_checkpoints_verify, losses
from test_train_preemption import train

from distar.train import checkpoint as ckpt

FULL = "No space left on device"


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("straight")
    assert train(out) == 0
    return losses(out)


def fill_atomic_writes_of(monkeypatch, name: str) -> None:
    """Writes through distar.io.write_atomic to a file called ``name`` write 3 bytes, then find the disk full."""
    real = tempfile.NamedTemporaryFile

    def named_temporary_file(*args, prefix: str = "", **kwargs):
        f = real(*args, prefix=prefix, **kwargs)
        if prefix == f".{name}.":

            def write(data: bytes) -> int:
                f.file.write(data[:3])
                raise OSError(errno.ENOSPC, FULL)

            f.write = write
        return f

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", named_temporary_file)


class TornLog:
    """An append-mode log.jsonl that takes half a write, then finds the disk full."""

    def __init__(self, f) -> None:
        self.f = f

    def __enter__(self) -> TornLog:
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()

    def write(self, text: str) -> int:
        self.f.write(text[: len(text) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, FULL)


def fill_log_appends(monkeypatch, after: int) -> None:
    """Every append to log.jsonl after the first ``after`` tears its line and fails."""
    real, appends = Path.open, []

    def open_(self, mode="r", *args, **kwargs):
        f = real(self, mode, *args, **kwargs)
        if self.name == ckpt.LOG_FILE and mode == "a":
            appends.append(self)
            if len(appends) > after:
                return TornLog(f)
        return f

    monkeypatch.setattr(Path, "open", open_)


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("distar train: error:")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def test_a_full_disk_at_config_yaml_keeps_the_old_file_and_resumes_exactly(straight, tmp_path, monkeypatch, capfd):
    out = tmp_path / "run"
    assert train(out, "loop.max_steps=4") == 0
    old = (out / ckpt.CONFIG_FILE).read_bytes()
    capfd.readouterr()
    fill_atomic_writes_of(monkeypatch, ckpt.CONFIG_FILE)
    assert train(out, "--resume", "latest") == 1
    line = one_error_line(capfd.readouterr().err)
    assert line == f"distar train: error: could not write {out / ckpt.CONFIG_FILE} ({FULL}); last checkpoint: {out / 'checkpoint-4'}"
    assert (out / ckpt.CONFIG_FILE).read_bytes() == old and not list(out.glob(".config.yaml*"))
    monkeypatch.undo()
    assert train(out, "--resume", "latest") == 0
    assert losses(out) == straight


def test_a_full_disk_at_log_jsonl_is_one_line_and_the_torn_log_is_repaired_on_resume(straight, tmp_path, monkeypatch, capfd):
    out = tmp_path / "run"
    fill_log_appends(monkeypatch, after=2)  # steps 1-2 and 3 are logged; the append at step 4 tears
    assert train(out) == 1
    line = one_error_line(capfd.readouterr().err)
    assert line == f"distar train: error: could not write {out / ckpt.LOG_FILE} ({FULL}); last checkpoint: {out / 'checkpoint-2'}"
    assert not (out / ckpt.LOG_FILE).read_text().endswith("\n")  # the torn line is there
    assert_checkpoints_verify(out)
    monkeypatch.undo()
    assert train(out, "--resume", "latest") == 0
    assert losses(out) == straight


def test_a_full_disk_at_a_sample_grid_leaves_no_partial_image(tmp_path, monkeypatch, capfd):
    out = tmp_path / "run"
    fill_atomic_writes_of(monkeypatch, "step-000004.png")
    assert train(out, "sampling.every=4") == 1
    line = one_error_line(capfd.readouterr().err)
    grid = out / "samples" / "step-000004.png"
    assert line == f"distar train: error: could not write {grid} ({FULL}); last checkpoint: {out / 'checkpoint-2'}"
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-000000-ema.png", "step-000000.png"]  # nothing partial
    monkeypatch.undo()
    assert train(out, "sampling.every=4", "--resume", "latest") == 0
    assert [r["step"] for r in losses(out)] == list(range(1, 9))
