"""Using a trained run on one real post: warm single-post latency of ``model.predict``, ``mmsent serve`` throughput
under a bounded loopback load, and agreement of the Python API, the CLI, folder prediction and the server.

    python benchmarks/bench_serve.py --run RUN --data DIR [--guid G] [--screenshot /tmp/page.png]
    python benchmarks/bench_serve.py --run MODEL --data DIR --levels 1,4,16 [--before-run RUN --before-src SRC]
    python benchmarks/bench_serve.py --run MODEL --data DIR --levels 1,4,16 --serve-flags="--max-batch 1" \
        --serve-flags="" --serve-flags="--workers 2"
    python benchmarks/bench_serve.py --run MODEL --data DIR --floor

With ``--levels`` it measures only the server's scaling: requests/s and p50/p95 latency at each number of
concurrent clients, each request a different real test post (image + text), for ``--run`` served by this code and,
with ``--before-run``, for that run served by the mmsent whose ``src`` folder ``--before-src`` names (e.g. the
code before batching: ``git archive COMMIT src | tar -x -C /tmp/before``). Each ``--serve-flags`` (repeatable) is
one more server of ``--run`` measured in turn, started with those ``mmsent serve`` flags (e.g. ``--max-batch 1``,
``--workers 2``).

``--floor`` (an exported MODEL) measures the compute of one post in this process, each graph on one thread:
CPU milliseconds per post to decode its image, to run the text encoder, the image encoder and the fold graphs, one
post at a time and in batches of 8; the cores divided by that is the most requests/s the machine can answer.

The server runs as its own process (``python -m mmsent serve``) on 127.0.0.1; the load comes from --clients threads
sending --requests multipart POSTs (image + text) in all. Prints the numbers and a JSON line with all of them, and
writes them as a JSON record (``record.py``) to ``--json`` (default: bench_serve.json).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from record import Recorder, add_json_option


def pick_post(data: Path, guid: str | None) -> str:
    """``guid``, else the first post of the test file that has a non-empty text and a readable image."""
    from mmsent.data.images import ImageError, load_square_rgb

    if guid:
        return guid
    for line in (data / "test_without_label.txt").read_text().splitlines()[1:]:
        guid = line.split(",")[0].strip()
        text, image = data / "data" / f"{guid}.txt", data / "data" / f"{guid}.jpg"
        try:
            if text.read_text(errors="replace").strip() and load_square_rgb(image.read_bytes(), 32) is not None:
                return guid
        except (OSError, ImageError):
            continue
    raise SystemExit(f"no test post of {data} has both a text and an image")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def multipart(text: str, image: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\n{text}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="post.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def post(url: str, body: bytes, content_type: str) -> tuple[float, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        data = json.loads(response.read())
    return time.perf_counter() - start, data


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return sock.getsockname()[1]


def start_server(run: Path, port: int, src: Path | None = None, flags: tuple[str, ...] = ()) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(src)) if src else None
    process = subprocess.Popen([sys.executable, "-m", "mmsent", "serve", "--run", str(run), "--port", str(port),
                                *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {process.stdout.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return process
        except OSError:
            time.sleep(0.25)
    process.kill()
    raise SystemExit("the server did not answer /health within 300 s")


def screenshot(url: str, image: Path, text: str, out: Path) -> None:
    """Load the page in headless Chromium, submit the post, save a PNG once the label is shown."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    with tempfile.TemporaryDirectory(prefix="mmsent-chromium-") as profile:
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     f"--user-data-dir={profile}", "--window-size=900,1000", "--hide-scrollbars"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
        try:
            driver.get(url)
            driver.find_element(By.ID, "image").send_keys(str(image))
            driver.find_element(By.ID, "text").send_keys(text)
            driver.find_element(By.ID, "submit").click()
            WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "label").text.strip())
            time.sleep(0.6)  # let the bars finish their transition
            driver.save_screenshot(str(out))
        finally:
            driver.quit()


def real_guids(data: Path, count: int) -> list[str]:
    """The first ``count`` test posts with a non-empty text and an image file."""
    from mmsent.data.text import decode_text

    guids = []
    for line in (data / "test_without_label.txt").read_text().splitlines()[1:]:
        guid = line.split(",")[0].strip()
        text, image = data / "data" / f"{guid}.txt", data / "data" / f"{guid}.jpg"
        if image.is_file() and text.is_file() and decode_text(text.read_bytes()).text.strip():
            guids.append(guid)
        if len(guids) == count:
            break
    return guids


def real_posts(data: Path, count: int) -> list[tuple[bytes, str]]:
    """Multipart bodies of the first ``count`` test posts with a non-empty text and an image file."""
    from mmsent.data.text import decode_text

    return [multipart(decode_text((data / "data" / f"{guid}.txt").read_bytes()).text,
                      (data / "data" / f"{guid}.jpg").read_bytes()) for guid in real_guids(data, count)]


def scaling(run: Path, data: Path, levels: list[int], requests: int, src: Path | None = None,
            flags: tuple[str, ...] = ()) -> dict:
    """{clients: {requests_per_s, p50_ms, p95_ms}} of one server, each level after a warm-up."""
    posts = real_posts(data, 64)
    port = free_port()
    server = start_server(run, port, src, flags)
    figures = {}
    try:
        url = f"http://127.0.0.1:{port}/predict"
        for body, content_type in posts[:8]:
            post(url, body, content_type)
        for clients in levels:
            total = max(requests, 8 * clients)
            started = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                times = [seconds for seconds, _ in pool.map(lambda i: post(url, *posts[i % len(posts)]),
                                                            range(total))]
            wall = time.perf_counter() - started
            figures[clients] = {"requests": total, "requests_per_s": total / wall,
                                "p50_ms": 1000 * percentile(times, 50), "p95_ms": 1000 * percentile(times, 95)}
            print(f"  {clients:3d} clients: {total / wall:6.1f} req/s, p50 {figures[clients]['p50_ms']:6.0f} ms, "
                  f"p95 {figures[clients]['p95_ms']:6.0f} ms ({total} requests)", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return figures


def main_scaling(args, recorder: Recorder) -> None:
    levels = [int(level) for level in args.levels.split(",")]
    results = {}
    if args.before_run:
        print(f"before: {args.before_run} served by {args.before_src or 'this mmsent'}")
        results["before"] = scaling(args.before_run, args.data, levels, args.requests, args.before_src)
    for flags in args.serve_flags or [""]:
        name = f"after {flags}".strip()
        print(f"{name}: {args.run} served by this mmsent", flush=True)
        results[name] = scaling(args.run, args.data, levels, args.requests, flags=tuple(flags.split()))
    print(json.dumps(results))
    recorder.write(args.json, {"scaling": results})


def compute_floor(model: Path, data: Path, count: int = 64) -> dict:
    """CPU milliseconds per post of each stage of an exported model, every graph on one thread of this process."""
    from mmsent import load_run
    from mmsent.data.images import load_image
    from mmsent.data.text import decode_text
    from mmsent.portable import ImageEncoder, TextEncoder, ort_graph

    guids = real_guids(data, count)
    texts = [decode_text((data / "data" / f"{g}.txt").read_bytes()).text for g in guids]
    raws = [(data / "data" / f"{g}.jpg").read_bytes() for g in guids]
    run = load_run(model)
    text_name, text = next((n, e) for n, e in run.encoders.items() if isinstance(e, TextEncoder))
    image_name, image = next((n, e) for n, e in run.encoders.items() if isinstance(e, ImageEncoder))
    text.graph = ort_graph(model / run.manifest["encoders"][text_name]["graph"], threads=1)
    image.graph = ort_graph(model / run.manifest["encoders"][image_name]["graph"], threads=1)
    for member, spec in zip(run.members, run.manifest["members"]):
        member.graph = ort_graph(model / spec["graph"], threads=1)
    cleaned = text.clean(texts)
    figures = {}
    for batch in (1, 8):
        chunks = [range(i, min(i + batch, len(texts))) for i in range(0, len(texts), batch)]
        stages = {"decode": lambda c: [load_image(raws[i], image.size) for i in c],
                  "text encoder": lambda c: text.encode([cleaned[i] for i in c]),
                  "image encoder": lambda c: image.encode(decoded[c.start:c.stop])}
        decoded = [load_image(raw, image.size) for raw in raws]
        for chunk in chunks[:2]:  # warm-up
            for stage in stages.values():
                stage(chunk)
        row = {}
        for name, stage in stages.items():
            start = time.process_time()
            for chunk in chunks:
                stage(chunk)
            row[name] = 1000 * (time.process_time() - start) / len(texts)
        features = [{text_name: text.encode([cleaned[i] for i in c]), image_name: image.encode(decoded[c.start:c.stop])}
                    for c in chunks]
        start = time.process_time()
        for feature in features:
            for member in run.members:
                member.probabilities(feature)
        row["fold graphs"] = 1000 * (time.process_time() - start) / len(texts)
        row["total"] = sum(row.values())
        figures[batch] = row
    run.close()
    return figures


def main_floor(args, recorder: Recorder) -> None:
    from mmsent.portable import is_export, usable_cores

    if not is_export(args.run):
        raise SystemExit("--floor measures an exported model: mmsent export --run RUN --out MODEL")
    cores = usable_cores()
    figures = compute_floor(args.run, args.data)
    for batch, row in figures.items():
        print(f"batch {batch}: " + ", ".join(f"{name} {value:.1f}" for name, value in row.items())
              + f" CPU ms per post; {cores} cores: at most {1000 * cores / row['total']:.0f} posts/s")
    print(json.dumps({"cores": cores, "cpu_ms_per_post": figures}))
    recorder.write(args.json, {"floor": {"cores": cores, "cpu_ms_per_post": figures}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="run folder written by 'mmsent train'")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MMSENT_DATA", "../shared/data/mvsa")))
    parser.add_argument("--guid", help="the post to use (default: the first test post with a text and an image)")
    parser.add_argument("--calls", type=int, default=50, help="warm model.predict calls timed")
    parser.add_argument("--requests", type=int, default=200, help="POST /predict requests in the load test")
    parser.add_argument("--clients", type=int, default=4, help="client threads sending them")
    parser.add_argument("--screenshot", type=Path, help="also save a PNG of the page showing the prediction")
    parser.add_argument("--levels", help="only the server's scaling, at these numbers of clients (e.g. 1,4,16)")
    parser.add_argument("--before-run", type=Path, help="with --levels: a run to serve first, for comparison")
    parser.add_argument("--before-src", type=Path, help="with --before-run: the src folder of the mmsent serving it")
    parser.add_argument("--serve-flags", action="append", metavar="FLAGS",
                        help="with --levels: serve --run with these mmsent serve flags (repeatable: one server each)")
    parser.add_argument("--floor", action="store_true", help="only the CPU time per post of an exported model")
    add_json_option(parser, "bench_serve.json")
    args = parser.parse_args()
    recorder = Recorder("serve")
    if args.floor:
        return main_floor(args, recorder)
    if args.levels:
        return main_scaling(args, recorder)

    import torch

    from mmsent import load_run
    from mmsent.config import LABELS
    from mmsent.data.text import decode_text

    guid = pick_post(args.data, args.guid)
    image_path = args.data / "data" / f"{guid}.jpg"
    image = image_path.read_bytes()
    text = decode_text((args.data / "data" / f"{guid}.txt").read_bytes()).text
    print(f"post {guid}: {len(image) / 1024:.0f} KB image, text {text.strip()!r}")

    start = time.perf_counter()
    model = load_run(args.run, device="cpu")
    print(f"run loaded in {time.perf_counter() - start:.1f} s ({len(model.models)} folds); "
          f"torch threads {torch.get_num_threads()}")
    start = time.perf_counter()
    api = model.predict(text=text, image=image_path)
    first = time.perf_counter() - start
    times = []
    for _ in range(args.calls):
        start = time.perf_counter()
        model.predict(text=text, image=image_path)
        times.append(time.perf_counter() - start)
    latency = {"first_ms": 1000 * first, "median_ms": 1000 * statistics.median(times),
               "p95_ms": 1000 * percentile(times, 95), "calls": args.calls}
    print(f"model.predict: first {latency['first_ms']:.0f} ms, warm median {latency['median_ms']:.1f} ms, "
          f"p95 {latency['p95_ms']:.1f} ms over {args.calls} calls")

    cli_out = subprocess.run([sys.executable, "-m", "mmsent", "predict", "--run", str(args.run), "--text", text,
                              "--image", str(image_path), "--json"], capture_output=True, text=True, check=True)
    cli = json.loads(cli_out.stdout.strip().splitlines()[-1])
    with tempfile.TemporaryDirectory() as folder:
        label_file = Path(folder) / "one.txt"
        label_file.write_text(f"guid,tag\n{guid},null\n")
        folder_pred = model.predict_folder(args.data, label_file, log=lambda *_: None)[guid].to_dict()

    port = free_port()
    server = start_server(args.run, port)
    try:
        url = f"http://127.0.0.1:{port}"
        body, content_type = multipart(text, image)
        _, served = post(url + "/predict", body, content_type)
        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(lambda _: post(url + "/predict", body, content_type), range(args.requests)))
        wall = time.perf_counter() - started
        request_times = [seconds for seconds, _ in results]
        load = {"requests": args.requests, "clients": args.clients, "wall_s": wall,
                "requests_per_s": args.requests / wall, "median_ms": 1000 * statistics.median(request_times),
                "p95_ms": 1000 * percentile(request_times, 95),
                "all_same_label": all(r["label"] == served["label"] for _, r in results)}
        print(f"server: {args.requests} requests from {args.clients} threads in {wall:.1f} s = "
              f"{load['requests_per_s']:.1f} req/s; latency median {load['median_ms']:.0f} ms, "
              f"p95 {load['p95_ms']:.0f} ms")
        if args.screenshot:
            screenshot(url + "/", image_path, text, args.screenshot)
            print(f"screenshot: {args.screenshot}")
    finally:
        server.terminate()
        server.wait(timeout=30)

    sources = {"api": api.to_dict(), "cli": cli, "folder": folder_pred, "server": served}
    probs = {name: np.array([d["probabilities"][label] for label in LABELS]) for name, d in sources.items()}
    max_diff = max(float(np.abs(p - probs["api"]).max()) for p in probs.values())
    agree = len({d["label"] for d in sources.values()}) == 1 and max_diff <= 1e-5
    for name, d in sources.items():
        print(f"  {name:7s} {d['label']:9s} " + " ".join(f"{label} {d['probabilities'][label]:.6f}"
                                                      for label in LABELS))
    print(f"API, CLI, folder and server agree: {agree} (max probability difference {max_diff:.2e})")
    figures = {"guid": guid, "latency": latency, "load": load, "agree": agree, "max_diff": max_diff,
               "prediction": api.to_dict()}
    print(json.dumps(figures))
    recorder.write(args.json, figures)


if __name__ == "__main__":
    main()
