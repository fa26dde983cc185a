"""Collecting human choices: ``distar serve --collect DIR``.

``GET /collect`` is a page that shows two images for the typed prompt and records which one the user
prefers. ``POST /collect/pair`` (``{"prompt", "versus", "client"}``) makes a pair: two seeds of the
one-step model (``versus: "seed"``), or the one-step model against the reference at one seed
(``versus: "reference"``, sides drawn at random), run on the server's generation queue; it answers the
two images as base64 PNGs and a token. ``POST /collect/choice`` (``{"token", "choice"}``, choice
``left``, ``right``, ``tie`` or ``skip``) records the pair with that token, once.

The folder is the layout :func:`distar.rewards.preference.read_pairs` reads, and
``distar rewards train --data DIR`` trains on: ``images/<sha256>.png`` (each written whole through a
rename) and ``pairs.jsonl``, to which each choice appends one line in one write; a torn last line left by
a crash is cut off when the next server starts there. Nothing the page sends names a file: images are
named by their hash, pairs are known by a random token, and a server keeps at most
:data:`MAX_PENDING` pairs waiting for a choice (the oldest are forgotten).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import os
import secrets
import threading
import time
from collections import OrderedDict
from importlib import resources
from pathlib import Path
from typing import Literal

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from distar.config import ConfigError, field
from distar.io import png_bytes, write_atomic
from distar.rewards.preference import PAIRS_FILE
from distar.serve.app import MAX_PROMPT_CHARS, MAX_SEED, Generated, GenerateRequest, error_response, read_request
from distar.serve.models import ServedModels
from distar.serve.queue import LatestPerClient, QueueFull, Superseded

#: Pairs shown and not yet chosen on, per server.
MAX_PENDING = 64
#: Largest request body of the collection routes.
MAX_BODY_BYTES = 4096
#: The label each choice records (the preferred image's index, or a tie); ``skip`` records nothing.
LABELS = {"left": 0.0, "right": 1.0, "tie": 0.5}


@dataclasses.dataclass
class PairRequest:
    """Two images to choose between."""

    prompt: str = field("", help=f"text prompt, 1 to {MAX_PROMPT_CHARS} characters")
    versus: Literal["seed", "reference"] = field(
        "seed", help="two seeds of the one-step model, or the one-step model against the reference"
    )
    client: str | None = field(None, help="page id: its newer pair request replaces its queued one")


@dataclasses.dataclass
class ChoiceRequest:
    """The user's choice on a pair shown."""

    token: str = field(help="the pair's token")
    choice: Literal["left", "right", "tie", "skip"] = field(help="the preferred side, a tie, or skip")


@dataclasses.dataclass
class Pending:
    prompt: str
    pngs: tuple[bytes, bytes]
    sources: tuple[str, str]


class PairLog:
    """The append-only record of choices in ``folder`` (module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.images = folder / "images"
        self.images.mkdir(parents=True, exist_ok=True)
        self.path = folder / PAIRS_FILE
        self.lock = threading.Lock()
        data = self.path.read_bytes() if self.path.is_file() else b""
        if data and not data.endswith(b"\n"):  # a write torn by a crash: keep the complete lines
            data = data[: data.rfind(b"\n") + 1]
            write_atomic(self.path, data)
        self.count = data.count(b"\n")

    def _image(self, png: bytes) -> str:
        name = f"images/{hashlib.sha256(png).hexdigest()[:32]}.png"
        if not (self.folder / name).is_file():
            write_atomic(self.folder / name, png)
        return name

    def append(self, pending: Pending, label: float) -> int:
        """Save the pair's images and append its line; returns the number of pairs recorded."""
        names = [self._image(png) for png in pending.pngs]
        record = {
            "prompt": pending.prompt, "image_0": names[0], "image_1": names[1], "label": label,
            "sources": list(pending.sources), "time": round(time.time(), 3),
        }
        line = (json.dumps(record) + "\n").encode()
        with self.lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.count += 1
            return self.count


def collection_routes(
    models: ServedModels, queue: LatestPerClient[tuple[GenerateRequest, threading.Event], Generated], folder: Path
) -> list[Route]:
    """The collection page and its two routes, recording into ``folder``; pairs are generated on ``queue``."""
    log = PairLog(folder)
    pending: OrderedDict[str, Pending] = OrderedDict()
    lock = threading.Lock()
    page = resources.files("distar.serve").joinpath("collect.html").read_text(encoding="utf-8")

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(page)

    async def post_pair(request: Request) -> Response:
        ask = await read_request(request, PairRequest, MAX_BODY_BYTES)
        if isinstance(ask, Response):
            return ask
        try:
            seed = secrets.randbelow(MAX_SEED)
            versus_reference = ask.versus == "reference"
            req = GenerateRequest(
                prompt=ask.prompt, seed=seed, n=1 if versus_reference else 2, reference=versus_reference,
                client=None if ask.client is None else f"collect:{ask.client}",
            )
        except ConfigError as err:
            return error_response(422, str(err))
        if versus_reference and models.reference is None:
            return error_response(422, "versus: this server has no reference model (start it with --reference)")
        try:
            out = await asyncio.wrap_future(queue.submit((req, threading.Event()), req.client))
        except Superseded as err:
            return JSONResponse({"error": str(err), "superseded": True}, status_code=409)
        except QueueFull as err:
            return error_response(503, str(err))
        assert out.one_step is not None
        if versus_reference:
            assert out.reference is not None
            images = [(png_bytes(out.one_step[0]), f"one-step seed {seed}"),
                      (png_bytes(out.reference[0]), f"reference seed {seed} ({req.steps} steps, ω {out.guidance:g})")]
            if secrets.randbelow(2):
                images.reverse()
        else:
            images = [(png_bytes(x), f"one-step seed {s}") for x, s in zip(out.one_step, req.seeds)]
        token = secrets.token_urlsafe(16)
        with lock:
            pending[token] = Pending(req.prompt, (images[0][0], images[1][0]), (images[0][1], images[1][1]))
            while len(pending) > MAX_PENDING:
                pending.popitem(last=False)
        pngs = [base64.b64encode(png).decode("ascii") for png, _ in images]
        return JSONResponse({"token": token, "prompt": req.prompt, "images": pngs})

    async def post_choice(request: Request) -> Response:
        choice = await read_request(request, ChoiceRequest, MAX_BODY_BYTES)
        if isinstance(choice, Response):
            return choice
        with lock:
            pair = pending.pop(choice.token, None)
        if pair is None:
            return error_response(404, "token: no pair waiting under this token (already chosen, or forgotten)")
        if choice.choice == "skip":
            return JSONResponse({"recorded": log.count, "skipped": True})
        count = await asyncio.to_thread(log.append, pair, LABELS[choice.choice])
        return JSONResponse({"recorded": count, "skipped": False})

    async def get_status(request: Request) -> JSONResponse:
        return JSONResponse({"recorded": log.count, "reference": models.reference is not None,
                             "example_prompt": models.example_prompt, "max_prompt_chars": MAX_PROMPT_CHARS})

    return [
        Route("/collect", index),
        Route("/collect/status", get_status),
        Route("/collect/pair", post_pair, methods=["POST"]),
        Route("/collect/choice", post_choice, methods=["POST"]),
    ]
