"""Prompt data: the global-batch stream (shards, seed + epoch shuffling, exact restore) and lazy
prompt tables from every source kind, checked against the list reader of distar.io."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from distar.io import PromptSourceError, PromptWarning, read_prompts
from distar.train import data as data_module
from distar.train.build import load_prompts
from distar.train.config import DataConfig
from distar.train.data import PromptStream, PromptTable, index_text_file, open_prompts

PROMPTS = [f"p{i}" for i in range(11)]


def take(stream: PromptStream, batches: int) -> list[str]:
    return [p for _ in range(batches) for p in stream.next_batch()]


def test_shards_are_disjoint_within_an_epoch():
    world = 3
    batches = len(PROMPTS) // world
    streams = [PromptStream(PROMPTS, 1, seed=5, rank=r, world_size=world) for r in range(world)]
    shards = [take(s, batches) for s in streams]
    seen = [p for shard in shards for p in shard]
    assert len(seen) == len(set(seen)) == world * batches  # no prompt served twice in an epoch


@pytest.mark.parametrize("world, batch", [(2, 3), (3, 2), (4, 1)])
def test_processes_together_draw_what_one_process_draws_at_the_global_batch(world, batch):
    single = PromptStream(PROMPTS, world * batch, seed=3)
    streams = [PromptStream(PROMPTS, batch, seed=3, rank=r, world_size=world) for r in range(world)]
    for _ in range(7):  # several epochs, global batches crossing epoch ends
        assert [p for s in streams for p in s.next_batch()] == single.next_batch()
    assert {s.state_dict()["position"] for s in streams} == {single.state_dict()["position"]}


def test_same_seed_same_order_and_epochs_reshuffle():
    a = take(PromptStream(PROMPTS, 2, seed=1), 11)  # 22 prompts: two epochs
    b = take(PromptStream(PROMPTS, 2, seed=1), 11)
    assert a == b
    assert sorted(a[:11]) == sorted(a[11:]) == sorted(PROMPTS)  # each epoch is a permutation
    assert a[:11] != a[11:]  # reshuffled with seed + epoch
    assert take(PromptStream(PROMPTS, 2, seed=2), 11) != a


def test_no_shuffle_keeps_file_order():
    assert take(PromptStream(PROMPTS, 3, shuffle=False), 4) == PROMPTS + PROMPTS[:1]


def test_resume_from_position():
    full = PromptStream(PROMPTS, 3, seed=7, rank=1, world_size=2)
    expected = take(full, 6)
    first = PromptStream(PROMPTS, 3, seed=7, rank=1, world_size=2)
    head = take(first, 2)
    resumed = PromptStream(PROMPTS, 3, seed=7, rank=1, world_size=2)
    resumed.load_state_dict(first.state_dict())
    assert head + take(resumed, 4) == expected


def test_the_position_is_global_so_a_resume_may_change_the_process_count():
    two = [PromptStream(PROMPTS, 2, seed=4, rank=r, world_size=2) for r in range(2)]
    for s in two:
        take(s, 3)
    one = PromptStream(PROMPTS, 4, seed=4)
    one.load_state_dict(two[0].state_dict())
    reference = PromptStream(PROMPTS, 4, seed=4)
    take(reference, 3)
    assert take(one, 3) == take(reference, 3)


def test_batches_longer_than_the_data_wrap_into_the_next_epoch():
    stream = PromptStream(["a", "b"], 5, seed=0)
    batch = stream.next_batch()
    assert len(batch) == 5 and set(batch) == {"a", "b"} and stream.epoch == 2


def test_fewer_prompts_than_processes_are_shared_and_none_is_refused():
    assert PromptStream(["only"], 1, rank=1, world_size=2).next_batch() == ["only"]
    with pytest.raises(ValueError, match="no prompts"):
        PromptStream([], 1)


# ---------------------------------------------------------------- prompt tables


def write(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


MESSY = "\ufeffa cat\n\n  \t\r\nb dog\r\nc ñandú 🦜\n" + "x" * 10_001 + "\n" + "é" * 6_000 + "\nlast line"


def read_both(path):
    with warnings.catch_warnings(record=True) as lazy_warnings:
        warnings.simplefilter("always")
        lazy = list(index_text_file(path))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        eager = read_prompts(path)
    return lazy, eager, [str(w.message) for w in lazy_warnings]


def test_a_text_file_is_indexed_as_the_list_reader_reads_it(tmp_path):
    lazy, eager, messages = read_both(write(tmp_path / "p.txt", MESSY))
    assert lazy == eager == ["a cat", "b dog", "c ñandú 🦜", "é" * 6_000, "last line"]
    assert len(messages) == 1 and "skipped 3 row(s)" in messages[0]
    assert "line 2: blank line; line 3: blank line; line 6: longer than 10000 characters" in messages[0]


def test_the_index_is_the_same_whatever_the_chunk_size(tmp_path, monkeypatch):
    path = write(tmp_path / "p.txt", MESSY + "\n" + "\n".join(f"prompt {i} ü" for i in range(50)) + "\n\n")
    whole = list(index_text_file(path))
    for size in (1, 3, 7, 64):
        monkeypatch.setattr(data_module, "CHUNK_BYTES", size)
        assert list(index_text_file(path)) == whole
    assert whole == read_prompts(path)


@pytest.mark.parametrize(
    "content, message",
    [(b"ok\n\xff\xfe bad\n", "not UTF-8 text \\(byte 3 "), (b"ok\nnul\x00here\n", "NUL bytes")],
)
def test_text_that_is_not_utf8_is_refused(tmp_path, content, message):
    with pytest.raises(PromptSourceError, match=message):
        index_text_file(write(tmp_path / "p.txt", content))


def test_a_table_is_a_lazy_sequence(tmp_path):
    table = index_text_file(write(tmp_path / "p.txt", "one\ntwo\nthree\n"))
    assert isinstance(table, PromptTable)
    assert len(table) == 3 and table[-1] == "three" and table[:2] == ["one", "two"]
    assert table.starts.nbytes + table.ends.nbytes == 16 * len(table)  # the index is all that is held
    with pytest.raises(IndexError):
        table[3]


def test_millions_of_prompts_are_indexed_and_each_process_reads_its_slice(tmp_path):
    count = 3_000_000
    path = write(tmp_path / "big.txt", "".join(f"p{i}\n" for i in range(count)))
    table = index_text_file(path)
    assert len(table) == count and table[0] == "p0" and table[count - 1] == f"p{count - 1}"
    single = PromptStream(table, 8, seed=9)
    ranks = [PromptStream(table, 4, seed=9, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        assert ranks[0].next_batch() + ranks[1].next_batch() == single.next_batch()


@pytest.mark.parametrize(
    "name, text",
    [
        ("p.csv", 'id,caption\n1,"a, quoted, cat"\n2,\n3,a dog\n'),
        ("p.tsv", "TEXT\tscore\na cat\t6.5\na dog\t7\n"),
        ("p.jsonl", '{"text": "a cat"}\n{"text": ""}\n{"text": "a dog"}\n'),
        ("p.json", json.dumps(["a cat", "a dog"])),
    ],
)
def test_table_files_are_converted_once_into_the_cache(tmp_path, name, text):
    path = write(tmp_path / name, text)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        expected = read_prompts(path)
        table = open_prompts(str(path))
    assert list(table) == expected and len(expected) == 2
    assert table.path.name == "prompts.bin" and table.path.parent.parent.name == "prompts"
    assert open_prompts(str(path)).path == table.path  # cached
    write(path, text.replace("dog", "fox"))  # a changed file is converted again
    assert list(open_prompts(str(path)))[-1] in ("a fox", '"a fox"')


def test_laion_style_text_column_is_found_in_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "laion.parquet"
    pq.write_table(pa.table({"URL": ["u1", "u2", "u3"], "TEXT": ["a cat", None, "a dog"], "aesthetic": [6.3, 6.4, 7.0]}), path)
    with pytest.warns(PromptWarning, match="skipped 1 row\\(s\\) \\(row 2: empty prompt\\)"):
        assert list(open_prompts(str(path))) == ["a cat", "a dog"]
    with pytest.raises(PromptSourceError, match="no column 'caption'"):
        open_prompts(str(path), "caption")


def test_save_to_disk_folders_by_absolute_path_and_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    one = tmp_path / "one"
    datasets.Dataset.from_dict({"prompt": ["a", "b", "c"]}).save_to_disk(str(one))
    assert list(open_prompts(str(one.resolve()))) == ["a", "b", "c"]
    both = tmp_path / "both"
    datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"caption": ["t1", "t2"]}),
        test=datasets.Dataset.from_dict({"caption": ["v1"]}),
    ).save_to_disk(str(both))
    assert list(open_prompts(str(both), split="test")) == ["v1"]
    with pytest.raises(PromptSourceError, match="no split 'valid' \\(splits: train, test\\)"):
        open_prompts(str(both), split="valid")
    with pytest.raises(PromptSourceError, match="not one written by datasets' save_to_disk"):
        open_prompts(str(tmp_path))


@pytest.mark.parametrize("streaming", [False, True])
def test_hub_datasets_with_a_configuration_name_and_streaming(monkeypatch, streaming):
    datasets = pytest.importorskip("datasets")
    calls = []

    def load_dataset(path, name=None, *, split, streaming=False):
        calls.append((path, name, split, streaming))
        found = datasets.Dataset.from_dict({"TEXT": ["x", "y", f"streamed {streaming}"], "n": [1, 2, 3]})
        return found.to_iterable_dataset() if streaming else found

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    config = DataConfig(source="someone/prompts", name="en", split="train", streaming=streaming)
    assert list(load_prompts(config)) == ["x", "y", f"streamed {streaming}"]
    assert calls == [("someone/prompts", "en", "train", streaming)]


def test_load_prompts_refuses_an_empty_source_and_missing_files(tmp_path):
    with pytest.raises(PromptSourceError, match="no prompts in data.source .*skipped 2 row"):
        load_prompts(DataConfig(source=str(write(tmp_path / "blank.txt", "\n \n"))))
    with pytest.raises(FileNotFoundError, match="prompt file not found"):
        open_prompts(str(tmp_path / "missing.parquet"))
    with pytest.raises(PromptSourceError, match="unknown prompt file type"):
        open_prompts(str(write(tmp_path / "p.xml", "<a/>")))


def test_the_stream_reads_a_table_without_copying_it(tmp_path):
    table = index_text_file(write(tmp_path / "p.txt", "\n".join(PROMPTS)))
    stream = PromptStream(table, 2, seed=1)
    assert stream.prompts is table
    assert take(stream, 5) == take(PromptStream(PROMPTS, 2, seed=1), 5)
    assert np.array_equal(table.starts, index_text_file(tmp_path / "p.txt").starts)
