"""Prompt readers: every format, quoting off for TSV, skipped rows reported with line numbers."""

from __future__ import annotations

import json

import pytest

from distar.config import ConfigError
from distar.io import PromptSourceError, PromptWarning, read_prompts, read_records


def test_txt_reports_blank_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a red cube\n\n  \na blue ball\n")
    with pytest.warns(PromptWarning, match=r"skipped 2 row\(s\) \(line 2: blank line; line 3: blank line\)"):
        assert read_prompts(path) == ["a red cube", "a blue ball"]


def test_tsv_keeps_leading_quote_and_reports_bad_rows(tmp_path):
    path = tmp_path / "parti.tsv"
    path.write_text(
        "Prompt\tCategory\tChallenge\tNote\n"
        '"G I G G L E" painted on a wall\tIllustrations\tWriting & Symbols\t\n'
        "a cat\tAnimals\tBasic\n"
        "a dog\tAnimals\tBasic\tx\n"
    )
    with pytest.warns(PromptWarning, match="line 3: 3 fields, header has 4"):
        records = read_records(path)
    assert records == [
        {"Prompt": '"G I G G L E" painted on a wall', "Category": "Illustrations",
         "Challenge": "Writing & Symbols", "Note": ""},
        {"Prompt": "a dog", "Category": "Animals", "Challenge": "Basic", "Note": "x"},
    ]
    with pytest.warns(PromptWarning):
        assert read_prompts(path) == ['"G I G G L E" painted on a wall', "a dog"]


def test_csv_quoting_and_column_detection(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('id,caption\n1,"a cat, sitting"\n2,\n3,a dog\n')
    assert read_records(path)[0] == {"id": "1", "caption": "a cat, sitting"}
    with pytest.warns(PromptWarning, match="line 3: empty 'caption'"):
        assert read_prompts(path) == ["a cat, sitting", "a dog"]
    assert read_prompts(path, column="id") == ["1", "2", "3"]
    with pytest.raises(PromptSourceError, match="no column 'nope'"):
        read_prompts(path, column="nope")


def test_jsonl_and_json(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "one", "n": 1}\nnot json\n"two"\n[1]\n')
    with pytest.warns(PromptWarning, match=r"line 2: invalid JSON.*line 4: expected a string or an object"):
        records = read_records(path)
    assert records == [{"text": "one", "n": "1"}, {"prompt": "two"}]
    listing = tmp_path / "anime.json"
    listing.write_text(json.dumps(["first", "second", ""]))
    with pytest.warns(PromptWarning, match="item 3: empty prompt"):
        assert read_prompts(listing) == ["first", "second"]


def test_errors_are_one_line_user_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_prompts(tmp_path / "missing.txt")
    odd = tmp_path / "p.xml"
    odd.write_text("<a/>")
    with pytest.raises(ConfigError, match="unknown prompt file type"):
        read_prompts(odd)
    nocol = tmp_path / "n.csv"
    nocol.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="no prompt column"):
        read_prompts(nocol)


def test_hub_id_needs_datasets(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(PromptSourceError, match="optional 'datasets' package"):
        read_prompts("someone/some-prompts")
