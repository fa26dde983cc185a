"""``POST /generate`` on a real server: images, errors, concurrent clients, superseded requests."""

from __future__ import annotations

import base64
import io
import json
import sys
import threading
import time
import urllib.request

import pytest
from PIL import Image

from serve_helpers import post


def generate(server: str, **body) -> dict:
    status, _, raw = post(server + "generate", body)
    assert status == 200, raw
    return json.loads(raw)


def pixels(image: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(image["png"])))


def test_page_and_info(server):
    page = urllib.request.urlopen(server, timeout=10).read().decode()
    assert '<input id="prompt"' in page and "generate" in page
    info = json.loads(urllib.request.urlopen(server + "info", timeout=10).read())
    assert info["reference"] and info["max_images"] == 8 and info["example_prompt"]


def test_json_images_are_deterministic_per_prompt_and_seed(server):
    out = generate(server, prompt="three red circles on a white background", seed=5, n=3)
    assert out["seeds"] == [5, 6, 7] and len(out["one_step"]) == 3 and out["reference"] is None
    assert out["one_step_ms"] > 0 and out["reference_ms"] is None
    assert all(pixels(image).size == (32, 32) for image in out["one_step"])
    assert len({image["png"] for image in out["one_step"]}) == 3  # one image per seed
    again = generate(server, prompt="three red circles on a white background", seed=6, n=1)
    assert again["one_step"][0]["png"] == out["one_step"][1]["png"]
    other = generate(server, prompt="a large green square on a black background", seed=6, n=1)
    assert other["one_step"][0]["png"] != out["one_step"][1]["png"]


def test_reference_at_requested_steps_and_png_format(server):
    out = generate(server, prompt="two blue diamonds", n=2, reference=True, steps=4, guidance=2.0)
    assert len(out["reference"]) == 2 and out["steps"] == 4 and out["guidance"] == 2.0
    assert out["reference_ms"] > 0
    only = generate(server, prompt="two blue diamonds", n=1, one_step=False, reference=True, steps=4, guidance=2.0)
    assert only["one_step"] is None and only["reference"][0]["png"] == out["reference"][0]["png"]
    status, headers, raw = post(server + "generate", dict(prompt="two blue diamonds", n=3, reference=True, steps=2, format="png"))
    assert status == 200 and headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(raw)).size == (96, 64)  # one-step row above the reference row
    assert float(headers["x-one-step-ms"]) > 0 and float(headers["x-reference-ms"]) > 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * 10_000}, "prompt"),
        ({"prompt": "a circle", "seed": "7"}, "seed"),
        ({"prompt": "a circle", "seed": 1.5}, "seed"),
        ({"prompt": "a circle", "seed": -1}, "seed"),
        ({"prompt": "a circle", "n": 0}, "n"),
        ({"prompt": "a circle", "n": 9}, "n"),
        ({"prompt": "a circle", "n": True}, "n"),
        ({"prompt": "a circle", "reference": True, "steps": 0}, "steps"),
        ({"prompt": "a circle", "reference": True, "guidance": -1}, "guidance"),
        ({"prompt": "a circle", "format": "gif"}, "format"),
        ({"prompt": "a circle", "one_step": False}, "one_step"),
        ({"prompt": "a circle", "model": "/etc/passwd"}, "model"),
        ({"prompt": "a circle", "path": "stabilityai/sdxl-turbo"}, "path"),
    ],
)
def test_bad_input_is_a_422_json_error_naming_the_field(server, body, field):
    status, headers, raw = post(server + "generate", body)
    assert status == 422 and headers["content-type"] == "application/json"
    assert field in json.loads(raw)["error"]


@pytest.mark.parametrize(
    ("raw", "status"), [(b"{not json", 400), (b"[1, 2]", 400), (b'{"prompt": "' + b"x" * 20_000 + b'"}', 413)]
)
def test_unreadable_body_is_a_json_error(server, raw, status):
    got, _, body = post(server + "generate", raw)
    assert got == status and json.loads(body)["error"]


def test_two_concurrent_clients_each_get_their_own_images(server):
    prompts = {"tab-a": "two small yellow circles", "tab-b": "one large pink triangle on a gray background"}
    answers: dict[str, list[dict]] = {c: [] for c in prompts}

    def client(name: str) -> None:
        for seed in range(4):
            answers[name].append(generate(server, prompt=prompts[name], seed=seed, n=2, client=name))

    threads = [threading.Thread(target=client, args=(name,)) for name in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, outs in answers.items():
        assert [o["prompt"] for o in outs] == [prompts[name]] * 4
        alone = generate(server, prompt=prompts[name], seed=3, n=2)  # same request, no concurrency
        assert [i["png"] for i in outs[-1]["one_step"]] == [i["png"] for i in alone["one_step"]]


def test_queued_request_is_dropped_when_the_same_client_sends_a_newer_one(server):
    results: dict[str, tuple[int, bytes]] = {}

    def send(key: str, body: dict) -> None:
        status, _, raw = post(server + "generate", body)
        results[key] = (status, raw)

    # a slow reference request from another page keeps the worker busy while "typist" sends three
    slow = threading.Thread(target=send, args=("slow", dict(prompt="a circle", n=2, reference=True, steps=100, client="other")))
    slow.start()
    time.sleep(0.3)
    typed = []
    for i, prompt in enumerate(["t", "tw", "two"]):
        typed.append(threading.Thread(target=send, args=(f"t{i}", dict(prompt=prompt, client="typist"))))
        typed[-1].start()
        time.sleep(0.1)
    for t in [slow, *typed]:
        t.join()
    assert results["slow"][0] == 200
    status, raw = results["t2"]
    assert status == 200 and json.loads(raw)["prompt"] == "two"
    dropped = [results[f"t{i}"] for i in range(2) if results[f"t{i}"][0] == 409]
    assert dropped, "no request was superseded"
    assert all(json.loads(raw)["superseded"] for _, raw in dropped)
    assert {results[f"t{i}"][0] for i in range(2)} <= {200, 409}


def test_remote_host_needs_a_flag_and_a_missing_extra_says_what_to_install(monkeypatch, capsys):
    from distar.cli import main

    assert main(["serve", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--allow-remote" in err and len(err.splitlines()) == 1
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the serve extra were not installed
    assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'distar[serve]'" in err and len(err.splitlines()) == 1
