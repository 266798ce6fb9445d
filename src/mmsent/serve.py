"""``mmsent serve``: a local web page and a JSON API over a trained run (Starlette + uvicorn).

GET  /         the page (one self-contained HTML file: web/index.html)
GET  /health   {"status", "run", "labels", "folds", "modalities", "max_upload_bytes", "temperature", "pid"}
POST /predict  multipart/form-data with a ``text`` field and/or an ``image`` file
               -> {"label", "probabilities", "modalities_used"}; errors -> {"error": message} with a 4xx status
POST /explain  the same form -> the prediction and why: {"label", "probabilities", "modalities_used", "words",
               "image", "modality_shares", "unavailable", "method"} (see mmsent.explain)
GET  /metrics  Prometheus text format: requests by endpoint and status, errors, latency and batch-size histograms

Concurrent /predict requests are gathered into batches (:class:`Batcher`): a request waits at most
``Batching.wait_ms`` for others, up to ``Batching.max_batch`` posts are predicted together, and each gets its own
answer back; a batch that fails is predicted post by post, so that one bad post fails only its own request.

With ``workers`` > 1, uvicorn starts that many server processes on one listening socket; each builds its app with
:func:`app_from_environment` (it loads the run once, batches its own requests and counts its own /metrics). The
options reach the workers in the environment variable :data:`OPTIONS_VARIABLE` (JSON), which ``serve`` sets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.routing import Route

from .config import ConfigError
from .data.images import MAX_IMAGE_PIXELS, ImageError, ImageTooLarge, open_image
from .prediction import Predictor

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# An oversize body is still read (and dropped) up to this much past the limit, so that the client, still sending,
# gets the 413 answer instead of a reset connection; beyond it the connection is cut.
DRAIN_BYTES = 64 * 1024 * 1024
OPTIONS_VARIABLE = "MMSENT_SERVE_OPTIONS"  # the JSON options of every worker process (serve with workers > 1)


class RequestError(Exception):
    """A request the API refuses; ``status`` is its 4xx code."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# Exceptions raised while reading or predicting a post -> HTTP status (first match along the exception's MRO).
ERROR_STATUS = {ImageTooLarge: 413, ImageError: 415, ValueError: 400, NotImplementedError: 501}
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)  # posts


class Histogram:
    """Counts of observations at or below each bucket's bound, their sum and number (Prometheus' layout)."""

    def __init__(self, bounds):
        self.bounds, self.counts, self.sum, self.count = tuple(bounds), [0] * len(bounds), 0.0, 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
        self.sum, self.count = self.sum + value, self.count + 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        rows = [f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {count}' for bound, count in zip(self.bounds, self.counts)]
        braces = f"{{{labels}}}" if labels else ""
        return rows + [f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}', f"{name}_sum{braces} {self.sum:.6f}",
                       f"{name}_count{braces} {self.count}"]


class Metrics:
    """What the server counts, rendered in the Prometheus text format by ``render`` (thread-safe)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.batches = Histogram(BATCH_BUCKETS)

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[endpoint, status] = self.requests.get((endpoint, status), 0) + 1
            self.latency.setdefault(endpoint, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, size: int) -> None:
        with self.lock:
            self.batches.observe(size)

    def render(self) -> str:
        with self.lock:
            lines = ["# HELP mmsent_requests_total Requests answered, by endpoint and HTTP status.",
                     "# TYPE mmsent_requests_total counter"]
            lines += [f'mmsent_requests_total{{endpoint="{e}",status="{s}"}} {n}'
                      for (e, s), n in sorted(self.requests.items())]
            lines += ["# HELP mmsent_errors_total Requests answered with an error status (4xx, 5xx).",
                      "# TYPE mmsent_errors_total counter"]
            errors: dict[str, int] = {}
            for (endpoint, status), n in self.requests.items():
                errors[endpoint] = errors.get(endpoint, 0) + (n if status >= 400 else 0)
            lines += [f'mmsent_errors_total{{endpoint="{e}"}} {n}' for e, n in sorted(errors.items())]
            lines += ["# HELP mmsent_request_seconds Time from a request's arrival to its answer.",
                      "# TYPE mmsent_request_seconds histogram"]
            for endpoint, histogram in sorted(self.latency.items()):
                lines += histogram.lines("mmsent_request_seconds", f'endpoint="{endpoint}"')
            lines += ["# HELP mmsent_batch_size Posts predicted together per batch of /predict requests.",
                      "# TYPE mmsent_batch_size histogram", *self.batches.lines("mmsent_batch_size")]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Batching:
    """How /predict requests are gathered: at most ``max_batch`` posts, waiting at most ``wait_ms`` for them."""

    max_batch: int = 32
    wait_ms: float = 5.0

    def __post_init__(self):
        if self.max_batch < 1:
            raise ConfigError(f"--max-batch must be at least 1, got {self.max_batch}")
        if not 0 <= self.wait_ms <= 1000:
            raise ConfigError(f"--batch-wait-ms must be between 0 and 1000, got {self.wait_ms}")


class Batcher:
    """One thread that predicts queued posts in batches (``run.predict_batch``) and hands each its result."""

    def __init__(self, run: Predictor, batching: Batching, metrics: Metrics):
        self.run, self.batching, self.metrics = run, batching, metrics
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="mmsent-batcher", daemon=True)
        self.thread.start()

    def submit(self, text: str | None, image) -> Future:
        future: Future = Future()
        self.queue.put((text, image, future))
        return future

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()

    def _gather(self, first) -> list:
        """``first`` and what else arrives within the wait, up to the largest batch."""
        batch, deadline = [first], time.monotonic() + self.batching.wait_ms / 1000
        while len(batch) < self.batching.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self.queue.put(None)  # stop after this batch
                break
            batch.append(item)
        return batch

    def _loop(self) -> None:
        while (item := self.queue.get()) is not None:
            batch = self._gather(item)
            self.metrics.batch(len(batch))
            texts, images, futures = (list(column) for column in zip(*batch))
            try:
                for future, result in zip(futures, self.run.predict_batch(texts, images)):
                    future.set_result(result)
            except Exception:  # one post spoils the batch: each alone, so that only it fails
                for text, image, future in batch:
                    try:
                        future.set_result(self.run.predict(text=text, image=image))
                    except Exception as error:
                        future.set_exception(error)


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


def timed(metrics: Metrics, endpoint: str, handler):
    """``handler`` with its answers counted and timed in ``metrics``."""
    async def wrapped(request):
        start = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status_code
            return response
        except HTTPException as error:
            status = error.status_code
            raise
        finally:
            metrics.request(endpoint, status, time.perf_counter() - start)

    return wrapped


# long: the routes share the app's state (the run, the batcher, the limits) as closures
def create_app(run: Predictor, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_image_pixels: int | None = None, batching: Batching | None = None,
               close_run: bool = False) -> Starlette:
    """The ASGI app serving ``run`` (already loaded: one model for every request).

    ``max_image_pixels`` can lower, not raise, the image loader's own limit (``data.images.MAX_IMAGE_PIXELS``).
    ``batching``: how /predict requests are gathered into batches (default :class:`Batching`).
    ``close_run``: the app owns ``run``: its batcher and the run are closed when the server shuts down (its
    lifespan); otherwise the caller closes both (``app.state.batcher.close()``, then the run).
    """
    max_pixels = min(max_image_pixels or MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS)
    metrics = Metrics()
    batcher = Batcher(run, batching or Batching(), metrics)
    html = page_html()
    health_body = {"status": "ok", "run": str(run.run_dir) if run.run_dir else None, "labels": list(run.classes),
                   "folds": run.fold_count, "modalities": run.modalities, "max_upload_bytes": max_upload_bytes,
                   "temperature": getattr(run, "temperature", None), "pid": os.getpid()}

    async def index(request):
        return HTMLResponse(html)

    async def health(request):
        return JSONResponse(health_body)

    async def answer(request, method):
        try:
            text, image = await _read_post(request, max_upload_bytes, max_pixels)
            result = await method(text, image)
        except Exception as error:
            status = error.status if isinstance(error, RequestError) else _status_of(error)
            if status is None:
                raise
            return JSONResponse({"error": str(error)}, status_code=status)
        return JSONResponse(result.to_dict())

    async def predict(request):
        return await answer(request, lambda text, image: asyncio.wrap_future(batcher.submit(text, image)))

    async def explain(request):
        return await answer(request, lambda text, image: run_in_threadpool(run.explain, text=text, image=image))

    async def metrics_text(request):
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    async def http_error(request, error: HTTPException):
        return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)

    routes = [Route("/", timed(metrics, "/", index)), Route("/health", timed(metrics, "/health", health)),
              Route("/predict", timed(metrics, "/predict", predict), methods=["POST"]),
              Route("/explain", timed(metrics, "/explain", explain), methods=["POST"]),
              Route("/metrics", metrics_text)]
    lifespan = None
    if close_run:
        @contextlib.asynccontextmanager
        async def lifespan(app):
            try:
                yield
            finally:
                batcher.close()
                run.close()

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.state.batcher, app.state.metrics = batcher, metrics
    return app


def check_port(host: str, port: int) -> None:
    """ConfigError now, rather than a uvicorn traceback later, if ``host:port`` cannot be listened on."""
    try:
        with socket.create_server((host, port)):
            pass
    except (OSError, OverflowError) as error:
        raise ConfigError(f"cannot listen on {host}:{port}: {getattr(error, 'strerror', None) or error}") from None


@dataclass(frozen=True)
class ServeOptions:
    """What a server process needs to build its app: the run, where it runs and the request limits."""

    run_dir: str
    device: str = "auto"
    backend: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_image_pixels: int | None = None
    max_batch: int = Batching.max_batch
    wait_ms: float = Batching.wait_ms

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> "ServeOptions":
        return cls(**json.loads(text))


def app_from_options(options: ServeOptions) -> Starlette:
    """Load the run of ``options``, warm it up and build the app that owns it (closed at shutdown)."""
    from . import load_run

    run = load_run(options.run_dir, device=options.device, backend=options.backend)
    try:
        run.warm_up()
        return create_app(run, max_upload_bytes=options.max_upload_bytes, max_image_pixels=options.max_image_pixels,
                          batching=Batching(options.max_batch, options.wait_ms), close_run=True)
    except BaseException:
        run.close()
        raise


def app_from_environment() -> Starlette:
    """The app factory of a worker process (``uvicorn mmsent.serve:app_from_environment --factory``): its options
    are the JSON in the environment variable :data:`OPTIONS_VARIABLE`."""
    text = os.environ.get(OPTIONS_VARIABLE)
    if not text:
        raise ConfigError(f"{OPTIONS_VARIABLE} is not set: start the server with 'mmsent serve' (or set it to the "
                          "JSON of mmsent.serve.ServeOptions)")
    return app_from_options(ServeOptions.from_json(text))


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          backend: str | None = None, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
          max_image_pixels: int | None = None, batching: Batching | None = None, workers: int = 1) -> None:
    """Load the run once, then serve it until interrupted.

    ``workers`` > 1: that many processes share the port (uvicorn's supervisor starts them); each loads the run
    itself, batches its own requests and answers /metrics for itself alone. The run is loaded here once first, so
    that a run that cannot be loaded is reported before any worker starts."""
    import uvicorn

    from . import load_run

    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    check_port(host, port)
    batching = batching or Batching()
    if workers > 1:
        with load_run(run_dir, device=device, backend=backend) as run:  # its errors now, in this process
            what = f"{run.description}, {' + '.join(run.modalities)}"
        options = ServeOptions(str(run_dir), device, backend, max_upload_bytes, max_image_pixels, batching.max_batch,
                               batching.wait_ms)
        print(f"serving {run_dir} ({what}) on http://{host}:{port}/ with {workers} worker processes  (Ctrl+C stops)",
              flush=True)
        previous = os.environ.get(OPTIONS_VARIABLE)
        os.environ[OPTIONS_VARIABLE] = options.to_json()  # the spawned workers inherit the environment
        try:
            uvicorn.run(f"{__name__}:app_from_environment", factory=True, host=host, port=port, workers=workers,
                        log_level="warning")
        finally:
            if previous is None:
                os.environ.pop(OPTIONS_VARIABLE, None)
            else:
                os.environ[OPTIONS_VARIABLE] = previous
        return
    with load_run(run_dir, device=device, backend=backend) as run:
        run.warm_up()
        app = create_app(run, max_upload_bytes=max_upload_bytes, max_image_pixels=max_image_pixels,
                         batching=batching)
        print(f"serving {run_dir} ({run.description}, {' + '.join(run.modalities)}) on "
              f"http://{host}:{port}/  (Ctrl+C stops)", flush=True)
        try:
            uvicorn.run(app, host=host, port=port, log_level="warning")
        finally:
            app.state.batcher.close()
