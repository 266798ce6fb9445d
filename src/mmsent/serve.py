"""``mmsent serve``: a local web page and a JSON API over a trained run (Starlette + uvicorn).

GET  /         the page (one self-contained HTML file: web/index.html)
GET  /health   {"status", "run", "labels", "folds", "modalities", "max_upload_bytes", "temperature"}
POST /predict  multipart/form-data with a ``text`` field and/or an ``image`` file
               -> {"label", "probabilities", "modalities_used"}; errors -> {"error": message} with a 4xx status
POST /explain  the same form -> the prediction and why: {"label", "probabilities", "modalities_used", "words",
               "image", "modality_shares", "unavailable", "method"} (see mmsent.explain)
"""

from __future__ import annotations

import socket
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from .config import ConfigError
from .data.images import MAX_IMAGE_PIXELS, ImageError, ImageTooLarge, open_image
from .predict import Predictor

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# An oversize body is still read (and dropped) up to this much past the limit, so that the client, still sending,
# gets the 413 answer instead of a reset connection; beyond it the connection is cut.
DRAIN_BYTES = 64 * 1024 * 1024


class RequestError(Exception):
    """A request the API refuses; ``status`` is its 4xx code."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# Exceptions raised while reading or predicting a post -> HTTP status (first match along the exception's MRO).
ERROR_STATUS = {ImageTooLarge: 413, ImageError: 415, ValueError: 400}


def _status_of(error: Exception) -> int | None:
    return next((ERROR_STATUS[cls] for cls in type(error).__mro__ if cls in ERROR_STATUS), None)


def page_html() -> str:
    """The web page (inline CSS and JS, nothing fetched from elsewhere)."""
    return resources.files("mmsent").joinpath("web/index.html").read_text(encoding="utf-8")


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, or RequestError 413 when it is over ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    too_large = RequestError(413, f"request too large: the limit is {limit:,} bytes ({limit / 2**20:.0f} MB)")
    if declared.isdigit() and int(declared) > limit + DRAIN_BYTES:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > limit + DRAIN_BYTES:
            break
    if size > limit:
        raise too_large
    return b"".join(chunks)


def _replay(body: bytes):
    """An ASGI ``receive`` that hands out ``body`` once (to parse a form from a body already read)."""
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _read_post(request: Request, limit: int, max_pixels: int) -> tuple[str | None, bytes | None]:
    """(text or None, image bytes or None) of a /predict request; RequestError if it cannot be used."""
    body = await _read_body(request, limit)
    async with Request(request.scope, _replay(body)).form(max_files=4, max_fields=16, max_part_size=limit) as form:
        text, image = form.get("text"), form.get("image")
        if isinstance(text, UploadFile):
            text = (await text.read()).decode("utf-8", errors="replace")
        if isinstance(image, str):
            raise RequestError(400, "'image' must be a file upload (multipart/form-data), not a text field")
        raw = await image.read() if image is not None else b""
    if not raw and not (text and text.strip()):
        raise RequestError(400, "empty request: send multipart/form-data with a 'text' field and/or an 'image' "
                                "file")
    if raw:
        open_image(raw, max_pixels)  # header only: refuses non-images and oversize images before decoding
    return text, raw or None


def create_app(run: Predictor, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_image_pixels: int | None = None) -> Starlette:
    """The ASGI app serving ``run`` (already loaded: one model for every request).

    ``max_image_pixels`` can lower, not raise, the image loader's own limit (``data.images.MAX_IMAGE_PIXELS``).
    """
    max_pixels = min(max_image_pixels or MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS)
    html = page_html()
    health_body = {"status": "ok", "run": str(run.run_dir) if run.run_dir else None, "labels": list(run.classes),
                   "folds": len(run.models), "modalities": run.modalities, "max_upload_bytes": max_upload_bytes,
                   "temperature": getattr(run, "temperature", None)}

    async def index(request):
        return HTMLResponse(html)

    async def health(request):
        return JSONResponse(health_body)

    async def answer(request, method):
        try:
            text, image = await _read_post(request, max_upload_bytes, max_pixels)
            result = await run_in_threadpool(method, text=text, image=image)
        except Exception as error:
            status = error.status if isinstance(error, RequestError) else _status_of(error)
            if status is None:
                raise
            return JSONResponse({"error": str(error)}, status_code=status)
        return JSONResponse(result.to_dict())

    async def predict(request):
        return await answer(request, run.predict)

    async def explain(request):
        return await answer(request, run.explain)

    async def http_error(request, error: HTTPException):
        return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)

    routes = [Route("/", index), Route("/health", health), Route("/predict", predict, methods=["POST"]),
              Route("/explain", explain, methods=["POST"])]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


def check_port(host: str, port: int) -> None:
    """ConfigError now, rather than a uvicorn traceback later, if ``host:port`` cannot be listened on."""
    try:
        with socket.create_server((host, port)):
            pass
    except (OSError, OverflowError) as error:
        raise ConfigError(f"cannot listen on {host}:{port}: {getattr(error, 'strerror', None) or error}") from None


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          backend: str | None = None, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
          max_image_pixels: int | None = None) -> None:
    """Load the run once, then serve it until interrupted."""
    import uvicorn

    from . import load_run

    check_port(host, port)
    with load_run(run_dir, device=device, backend=backend) as run:
        run.warm_up()
        app = create_app(run, max_upload_bytes=max_upload_bytes, max_image_pixels=max_image_pixels)
        print(f"serving {run_dir} ({run.description}, {' + '.join(run.modalities)}) on "
              f"http://{host}:{port}/  (Ctrl+C stops)", flush=True)
        uvicorn.run(app, host=host, port=port, log_level="warning")
