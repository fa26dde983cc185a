"""The web app: the page at ``/``, ``GET /info`` and ``POST /generate`` (Starlette).

``POST /generate`` takes a JSON object (fields of :class:`GenerateRequest`) and answers either JSON
(``format: "json"``, the default; images as base64 PNG) or one PNG (``format: "png"``: the one-step
images in a row, the reference's in a second row; timings in ``X-One-Step-Ms``/``X-Reference-Ms``).
Errors are JSON ``{"error": "..."}``: 400 unreadable body (or JSON nested deeper than
:data:`MAX_JSON_DEPTH`), 403 a cross-origin request, 413 body too large, 422 invalid field, 409
superseded by a newer request of the same ``client``, 503 queue full; a ``Host`` header that names
another machine gets 400 unless the server allows remote clients. The models are fixed when the server
starts; no request field names a file or a model.

A request whose client goes away is cancelled if it is still queued (the queue skips it); one already
running finishes and its answer is dropped. Each disconnect is logged in one line.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import math
import threading
import time
from importlib import resources
from typing import Any, AsyncIterator, Callable, Literal, Sequence, TypeVar

import torch
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from torch import Tensor

from distar.config import ConfigError, field, from_dict
from distar.errors import Cancelled
from distar.io import png_bytes
from distar.serve import LOCAL_HOSTS
from distar.serve.models import ServedModels
from distar.serve.queue import LatestPerClient, QueueFull, Superseded
from distar.train.logs import image_grid

MAX_IMAGES = 8
MAX_PROMPT_CHARS = 1000
MAX_STEPS = 100
MAX_GUIDANCE = 30.0
MAX_SEED = 2**53 - 1  # exact in JavaScript numbers
MAX_BODY_BYTES = 16_384
MAX_JSON_DEPTH = 8

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class GenerateRequest:
    """One request: ``n`` images of one prompt at seeds ``seed, seed + 1, …``."""

    prompt: str = field("", help=f"text prompt, 1 to {MAX_PROMPT_CHARS} characters")
    seed: int = field(0, help="seed of the first image, 0 to 2^53 - 1")
    n: int = field(1, help=f"number of images, 1 to {MAX_IMAGES}")
    one_step: bool = field(True, help="sample the one-step model")
    reference: bool = field(False, help="also sample the reference (when the server has one)")
    steps: int = field(20, help=f"reference sampling steps, 1 to {MAX_STEPS}")
    guidance: float | None = field(None, help="reference CFG ω (default: the server's)")
    format: Literal["json", "png"] = field("json", help="answer as JSON with base64 PNGs, or as one PNG")
    client: str | None = field(None, help="page or script id: its newer request replaces its queued one")

    def __post_init__(self) -> None:
        for name in ("prompt", "client"):
            text = getattr(self, name)
            if text is not None and not _is_unicode(text):
                raise ConfigError(f"{name}: not valid Unicode (a lone surrogate such as \\ud800)")
        if not self.prompt.strip():
            raise ConfigError("prompt: is empty")
        if len(self.prompt) > MAX_PROMPT_CHARS:
            raise ConfigError(f"prompt: {len(self.prompt)} characters, at most {MAX_PROMPT_CHARS} allowed")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed: must be between 0 and {MAX_SEED}, got {self.seed}")
        if not 1 <= self.n <= MAX_IMAGES:
            raise ConfigError(f"n: must be between 1 and {MAX_IMAGES}, got {self.n}")
        if not 1 <= self.steps <= MAX_STEPS:
            raise ConfigError(f"steps: must be between 1 and {MAX_STEPS}, got {self.steps}")
        if self.guidance is not None and not (math.isfinite(self.guidance) and 0 <= self.guidance <= MAX_GUIDANCE):
            raise ConfigError(f"guidance: must be between 0 and {MAX_GUIDANCE:g}, got {self.guidance}")
        if not (self.one_step or self.reference):
            raise ConfigError("one_step, reference: ask for at least one model")
        if self.client is not None and len(self.client) > 100:
            raise ConfigError("client: at most 100 characters")

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.n)]


@dataclasses.dataclass
class Generated:
    """Images (B, 3, H, W) in [0, 1] and milliseconds of each model's call (None: not asked for)."""

    one_step: Tensor | None
    one_step_ms: float | None
    reference: Tensor | None
    reference_ms: float | None
    guidance: float | None


def _timed(fn: Any, *args: Any) -> tuple[Tensor, float]:
    start = time.perf_counter()
    images = fn(*args)
    return images, round((time.perf_counter() - start) * 1000, 2)


def generate(models: ServedModels, req: GenerateRequest, stop: Callable[[], bool] = lambda: False) -> Generated:
    """Run the request on the models (called on the queue's worker thread only); raises
    :class:`~distar.errors.Cancelled` at the first reference step (or before it) at which ``stop()``."""
    prompts, seeds = [req.prompt] * req.n, req.seeds
    one, one_ms = _timed(models.one_step.generate_images, prompts, seeds) if req.one_step else (None, None)
    ref = ref_ms = guidance = None
    if req.reference and models.reference is not None:
        if stop():
            raise Cancelled("request dropped")
        guidance = models.reference.guidance if req.guidance is None else req.guidance
        ref, ref_ms = _timed(models.reference.generate_images, prompts, seeds, req.steps, guidance, stop)
    return Generated(one, one_ms, ref, ref_ms, guidance)


def _is_unicode(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (JSON's ``\\ud800`` escapes decode to lone surrogates that do not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _host_name(header: str) -> str:
    """The host of a ``Host`` header: ``localhost:7860`` → ``localhost``, ``[::1]:7860`` → ``::1``."""
    if header.startswith("["):
        return header[1 : header.find("]")]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _peer(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "a client"


async def _disconnected(request: Request) -> None:
    """Return once the client has gone away (the body must have been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


#: A request dataclass.
R = TypeVar("R")


def error_response(status: int, message: str, **extra: Any) -> JSONResponse:
    """A JSON error: ``{"error": message, ...extra}`` with ``status``."""
    return JSONResponse({"error": message, **extra}, status_code=status)


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any] | Response:
    """The request body as a JSON object of at most ``max_bytes`` bytes and ``MAX_JSON_DEPTH`` levels,
    or the error response to send (a client that went away while sending gets a logged 400)."""
    body = b""
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                return error_response(413, f"request body over {max_bytes} bytes")
    except ClientDisconnect:
        logger.info("client %s went away while sending its request", _peer(request))
        return Response(status_code=400)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return error_response(400, "request body is not JSON")
    if not isinstance(data, dict):
        return error_response(400, "request body must be a JSON object")
    if _depth(data) > MAX_JSON_DEPTH:
        return error_response(400, f"request body nested deeper than {MAX_JSON_DEPTH} levels")
    return data


async def read_request(request: Request, cls: type[R], max_bytes: int) -> R | Response:
    """The request body read by :func:`read_json_object` as a ``cls`` dataclass, or the error response to send
    (422 with the one-line reason when a field is missing, unknown or out of range)."""
    data = await read_json_object(request, max_bytes)
    if isinstance(data, Response):
        return data
    try:
        return from_dict(cls, data)
    except ConfigError as err:
        return error_response(422, str(err))


def _images_json(images: Tensor | None, seeds: list[int]) -> list[dict[str, Any]] | None:
    if images is None:
        return None
    return [{"seed": s, "png": base64.b64encode(png_bytes(x)).decode("ascii")} for s, x in zip(seeds, images)]


def _png_response(out: Generated) -> Response:
    rows = [x for x in (out.one_step, out.reference) if x is not None]
    headers = {}
    if out.one_step_ms is not None:
        headers["X-One-Step-Ms"] = str(out.one_step_ms)
    if out.reference_ms is not None:
        headers["X-Reference-Ms"] = str(out.reference_ms)
    return Response(png_bytes(image_grid(torch.cat(rows), rows=len(rows))), media_type="image/png", headers=headers)


def create_app(
    models: ServedModels,
    max_pending: int = 32,
    *,
    allow_remote: bool = False,
    allow_origins: Sequence[str] = (),
    more_routes: Callable[[LatestPerClient[tuple[GenerateRequest, threading.Event], Generated]], list[Route]] | None = None,
) -> Starlette:
    """The app serving ``models``; requests are run one at a time by a :class:`LatestPerClient` queue.

    Unless ``allow_remote``, a request whose ``Host`` header names another machine is refused (a web
    page cannot reach the server by DNS rebinding). A POST from a web page of another origin, to
    ``/generate`` or to a route ``more_routes`` adds, is refused unless its ``Origin`` is in
    ``allow_origins`` (``"*"``: any). ``more_routes(queue)``
    adds routes that generate on the same queue (the collection page)."""
    queue: LatestPerClient[tuple[GenerateRequest, threading.Event], Generated] = LatestPerClient(
        lambda job: generate(models, job[0], job[1].is_set), max_pending=max_pending
    )
    page = resources.files("distar.serve").joinpath("page.html").read_text(encoding="utf-8")
    info = {
        "one_step": models.one_step_name,
        "reference": models.reference.name if models.reference else None,
        "guidance": models.reference.guidance if models.reference else None,
        "steps": 20,
        "max_images": MAX_IMAGES,
        "max_prompt_chars": MAX_PROMPT_CHARS,
        "example_prompt": models.example_prompt,
    }

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(page)

    async def get_info(request: Request) -> JSONResponse:
        return JSONResponse(info | {"waiting": queue.waiting})

    async def post_generate(request: Request) -> Response:
        req = await read_request(request, GenerateRequest, MAX_BODY_BYTES)
        if isinstance(req, Response):
            return req
        if req.reference and models.reference is None:
            return error_response(422, "reference: this server has no reference model (start it with --reference)")
        stop = threading.Event()
        try:
            future = queue.submit((req, stop), req.client)
        except QueueFull as err:
            return error_response(503, str(err))
        result, gone = asyncio.wrap_future(future), asyncio.ensure_future(_disconnected(request))
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not result.done():
            queued = future.cancel()
            stop.set()
            result.cancel()
            what = "its queued request is cancelled" if queued else "its running request is stopped"
            logger.info("client %s went away: %s", _peer(request), what)
            return Response(status_code=400)
        gone.cancel()
        try:
            out = result.result()
        except Superseded as err:
            return error_response(409, str(err), superseded=True)
        if req.format == "png":
            return _png_response(out)
        return JSONResponse(
            {
                "prompt": req.prompt,
                "seeds": req.seeds,
                "one_step": _images_json(out.one_step, req.seeds),
                "one_step_ms": out.one_step_ms,
                "reference": _images_json(out.reference, req.seeds),
                "reference_ms": out.reference_ms,
                "steps": req.steps if out.reference is not None else None,
                "guidance": out.guidance,
            }
        )

    routes = [
        Route("/", index),
        Route("/info", get_info),
        Route("/generate", post_generate, methods=["POST"]),
        Mount("/static", StaticFiles(packages=[("distar.serve", "static")])),  # the pages' shared style.css
    ]
    if more_routes is not None:
        routes += more_routes(queue)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        queue.close()

    middleware = [Middleware(SameOriginPosts, allow_origins=tuple(allow_origins))]
    if not allow_remote:
        middleware.insert(0, Middleware(LocalHostOnly))
    return Starlette(routes=routes, lifespan=lifespan, middleware=middleware)


class LocalHostOnly:
    """ASGI middleware: 400 for an HTTP request whose ``Host`` header does not name this machine."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if _host_name(host) not in LOCAL_HOSTS:
                response = error_response(400, f"Host {host[:100]!r} is not this machine (start the server with --allow-remote)")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class SameOriginPosts:
    """ASGI middleware: 403 for a POST (to any route) from a web page of another origin, unless its
    ``Origin`` is in ``allow_origins`` (``"*"``: any). Requests without ``Origin`` (scripts) pass."""

    def __init__(self, app: Any, allow_origins: Sequence[str] = ()) -> None:
        self.app, self.allow_origins = app, allow_origins

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = dict(scope["headers"])
            origin = headers.get(b"origin", b"").decode("latin-1") or None
            same = origin is not None and origin.split("://", 1)[-1] == headers.get(b"host", b"").decode("latin-1")
            if origin is not None and not same and origin not in self.allow_origins and "*" not in self.allow_origins:
                refusal = f"cross-origin request from {origin[:100]} refused (start the server with --allow-origin to allow it)"
                await error_response(403, refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)
