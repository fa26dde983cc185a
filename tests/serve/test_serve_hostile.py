"""Hostile and careless clients: no input gives a 500, requests of clients that went away are
cancelled and logged in one line, and only this machine's names and the server's own page are served."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from urllib.parse import urlparse

import pytest
import torch

from distar.serve.app import create_app
from distar.serve.models import ServedModels
from serve_helpers import post

HEAVY = {"prompt": "three red circles", "n": 8, "reference": True, "steps": 100}


@pytest.mark.parametrize(
    "raw, status",
    [
        (b'{"prompt": "\\ud800"}', 422),  # a lone surrogate
        (b'{"prompt": "a cat \\udfff\\ud800"}', 422),
        (b'{"prompt": "a cat", "client": "\\ud800"}', 422),
        (b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400),  # nested past Python's recursion limit
        (b"[" * 8000 + b"]" * 8000, 400),
        (b'{"prompt": "a", "x": ' + b'{"a": ' * 20 + b"1" + b"}" * 20 + b"}", 400),
        (b'{"prompt": "a cat", "seed": ' + b"9" * 5000 + b"}", 400),  # past the 4300-digit integer limit
        (b'{"prompt": "a cat", "seed": NaN}', 422),
        (b'{"prompt": "a cat", "seed": 1e400}', 422),
        (b'{"prompt": "a cat", "guidance": Infinity, "reference": true}', 422),
        (b"\xff\xfe{}", 400),
        (b"", 400),
    ],
)
def test_no_input_gives_a_500(server, raw, status):
    code, _, body = post(server + "generate", raw)
    assert code == status, body
    assert json.loads(body)["error"]


def request(server: str, headers: dict[str, str], body: dict | None = None) -> tuple[int, bytes]:
    """A POST /generate (GET /info without ``body``) with the given headers, as a browser would send them."""
    url = urlparse(server)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        if body is None:
            conn.request("GET", "/info", headers=headers)
        else:
            conn.request("POST", "/generate", body=json.dumps(body).encode(), headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_other_hosts_and_cross_origin_posts_are_refused(server):
    here = urlparse(server).netloc
    body = {"prompt": "two blue diamonds"}
    for host in ("evil.example.com", "evil.example.com:" + here.split(":")[1], "10.0.0.1"):
        assert request(server, {"Host": host}, body)[0] == 400  # DNS rebinding
        assert request(server, {"Host": host})[0] == 400
    cross = {"Host": here, "Origin": "http://evil.example.com", "Content-Type": "text/plain"}
    status, raw = request(server, cross, body)
    assert status == 403 and b"--allow-origin" in raw
    for host in (here, f"localhost:{here.split(':')[1]}"):
        assert request(server, {"Host": host, "Origin": f"http://{host}", "Content-Type": "application/json"}, body)[0] == 200
        assert request(server, {"Host": host}, body)[0] == 200  # scripts send no Origin


def test_abandoned_heavy_requests_do_not_delay_the_next_one(server):
    """10 heavy requests whose clients hang up at once, then a light one: the queued ones are skipped and
    the running one stops at its next reference step."""
    url = urlparse(server)
    light = {"prompt": "a large green square", "n": 1}
    start = time.perf_counter()
    assert post(server + "generate", light)[0] == 200
    alone = time.perf_counter() - start
    body = json.dumps(HEAVY).encode()
    for _ in range(10):
        with socket.create_connection((url.hostname, url.port)) as sock:
            sock.sendall(
                b"POST /generate HTTP/1.1\r\nHost: " + url.netloc.encode() + b"\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            time.sleep(0.05)  # received and queued, then the client goes away
    start = time.perf_counter()
    code, _, raw = post(server + "generate", light)
    print(f"a light request: {alone:.3f} s alone, {time.perf_counter() - start:.3f} s after 10 abandoned heavy ones")
    assert code == 200, raw
    info = json.loads(request(server, {"Host": url.netloc})[1])
    assert info["waiting"] == 0


class HeldModel:
    """One-step model whose first call waits until released; counts its calls."""

    def __init__(self) -> None:
        self.calls, self.started, self.release = 0, threading.Event(), threading.Event()

    def generate_images(self, prompts, seeds):
        self.calls += 1
        self.started.set()
        assert self.release.wait(20)
        return torch.zeros(len(prompts), 3, 4, 4)


def asgi_post(app, body: dict, gone: asyncio.Event, port: int):
    """POST /generate straight into the ASGI app; the client hangs up when ``gone`` is set."""
    messages = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]
    sent: list[dict] = []

    async def receive():
        if messages:
            return messages.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/generate", "raw_path": b"/generate", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"127.0.0.1:7860"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", port), "server": ("127.0.0.1", 7860),
    }
    return app(scope, receive, send), sent


def test_a_client_that_goes_away_is_cancelled_and_logged_in_one_line(caplog):
    model = HeldModel()
    app = create_app(ServedModels(one_step=model, one_step_name="held"))

    async def scenario():
        first_gone, second_gone, third_gone = asyncio.Event(), asyncio.Event(), asyncio.Event()
        first, _ = asgi_post(app, {"prompt": "a"}, first_gone, 1001)
        second, _ = asgi_post(app, {"prompt": "b"}, second_gone, 1002)
        third, third_sent = asgi_post(app, {"prompt": "c"}, third_gone, 1003)
        tasks = [asyncio.ensure_future(c) for c in (first, second, third)]
        await asyncio.get_running_loop().run_in_executor(None, model.started.wait, 20)
        await asyncio.sleep(0.1)  # the second and third are queued behind the running first
        first_gone.set()
        second_gone.set()
        await asyncio.sleep(0.1)
        model.release.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        return third_sent

    with caplog.at_level("INFO", logger="distar.serve"):
        third_sent = asyncio.run(scenario())
    assert model.calls == 2  # the first (already running) and the third; the second was skipped
    assert third_sent[0]["status"] == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "distar.serve.app"]
    assert lines == [
        "client 127.0.0.1:1001 went away: its running request is stopped",
        "client 127.0.0.1:1002 went away: its queued request is cancelled",
    ]
