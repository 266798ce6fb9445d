"""Using a trained run: Python API, ``mmsent predict --text/--image``, and ``mmsent serve`` over a real socket and in
headless Chromium. One tiny run (tiny HF models, 1 epoch x 2 folds) serves every test of this module."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import train_fast, write_dataset
from mmsent import load_run
from mmsent.cli import main
from mmsent.config import LABELS
from mmsent.data.dataset import open_data
from mmsent.data.images import ImageError
from mmsent.data.text import decode_text

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
MAX_UPLOAD = 300_000  # bytes, small so that the oversize test stays cheap
MAX_PIXELS = 150 * 150


@dataclass
class Trained:
    data: Path
    run: Path
    guid: str  # a test post with a text and an image

    @property
    def text(self) -> str:
        return decode_text((self.data / "data" / f"{self.guid}.txt").read_bytes()).text

    @property
    def image(self) -> Path:
        return self.data / "data" / f"{self.guid}.jpg"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert_dir, tiny_vit_dir) -> Trained:
    root = tmp_path_factory.mktemp("serve")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MMSENT_CACHE_DIR", str(root / "cache"))
        data = write_dataset(root / "mvsa")
        run = root / "run"
        train_fast(data, run, **{"text.name": tiny_bert_dir, "image.name": tiny_vit_dir, "image.image_size": 32})
    return Trained(data, run, guid="1025")


@pytest.fixture(scope="module")
def model(trained):
    return load_run(trained.run, device="cpu")


def _probs(prediction) -> np.ndarray:
    return np.array([prediction["probabilities"][name] for name in LABELS])


# ---- (a) one loading code: Python API, CLI and folder prediction agree --------------------------------------------

def test_api_cli_and_folder_agree_on_one_post(trained, model, tmp_path, capsys):
    api = model.predict(text=trained.text, image=trained.image)
    assert api.label == max(api.probabilities, key=api.probabilities.get) and api.modalities_used == ["text", "image"]
    assert list(api.probabilities) == list(LABELS)
    assert sum(api.probabilities.values()) == pytest.approx(1.0, abs=1e-5)

    assert main(["predict", "--run", str(trained.run), "--text", trained.text, "--image", str(trained.image),
                 "--json"]) == 0
    cli = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    one = tmp_path / "one.txt"
    one.write_text(f"guid,tag\n{trained.guid},null\n")
    folder = model.predict_folder(trained.data, one, log=lambda *_: None)[trained.guid]

    assert cli["label"] == api.label == folder.label
    np.testing.assert_allclose(_probs(cli), _probs(api.to_dict()), atol=1e-5)
    np.testing.assert_allclose(_probs(folder.to_dict()), _probs(api.to_dict()), atol=1e-5)


def test_batch_matches_predict_split(trained, model):
    split = open_data(trained.data, "test")
    expected = model.predict_split(split, log=lambda *_: None)  # through the feature cache
    texts = [decode_text(split.read_text_bytes(g)).text for g in split.guids]
    images = [split.read_image_bytes(g) for g in split.guids]  # bytes this time
    batch = model.predict_batch(texts=texts, images=images)
    np.testing.assert_allclose(np.array([_probs(p.to_dict()) for p in batch]), expected, atol=1e-5)


def test_api_inputs_path_bytes_pil_and_missing(trained, model):
    by_path = model.predict(text=trained.text, image=str(trained.image))
    by_bytes = model.predict(text=trained.text, image=trained.image.read_bytes())
    assert by_bytes.probabilities == pytest.approx(by_path.probabilities, abs=1e-6)
    with Image.open(trained.image) as image:
        by_pil = model.predict(text=trained.text, image=image)
    assert by_pil.probabilities == pytest.approx(by_path.probabilities, abs=1e-6)  # decoded from its file alike
    text_only = model.predict(text=trained.text)
    image_only = model.predict(image=trained.image)
    assert text_only.modalities_used == ["text"] and image_only.modalities_used == ["image"]
    assert text_only.probabilities != by_path.probabilities  # the learned missing-image token was used
    with pytest.raises(ValueError, match="nothing to predict"):
        model.predict(text="   ")
    with pytest.raises(ImageError, match="not a readable image"):
        model.predict(text="x", image=b"this is not an image")


def test_api_is_thread_safe(trained, model):
    expected = model.predict(text=trained.text, image=trained.image).probabilities
    results = []

    def work():
        for _ in range(3):
            results.append(model.predict(text=trained.text, image=trained.image).probabilities)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 12
    assert all(r == pytest.approx(expected, abs=1e-6) for r in results)


def test_cli_single_post_text_or_image_alone(trained, capsys):
    assert main(["predict", "--run", str(trained.run), "--text", "love great happy"]) == 0
    out = capsys.readouterr().out
    assert "from text" in out and all(name in out for name in LABELS)
    assert main(["predict", "--run", str(trained.run), "--image", str(trained.image)]) == 0
    assert "from image" in capsys.readouterr().out


def test_cli_predict_user_errors(trained, tmp_path, capsys):
    assert main(["predict", "--run", str(trained.run), "--data", str(trained.data)]) == 2
    assert "--out FILE is required" in capsys.readouterr().err
    assert main(["predict", "--run", str(trained.run), "--image", str(tmp_path / "nope.jpg")]) == 2
    assert "image file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    assert main(["predict", "--run", str(trained.run), "--image", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("mmsent predict: error: not a readable image")


# ---- (b) the real server over a real socket ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(model):
    import uvicorn

    from mmsent.serve import create_app

    app = create_app(model, max_upload_bytes=MAX_UPLOAD, max_image_pixels=MAX_PIXELS)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def _request(url: str, body: bytes | None = None, content_type: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": content_type} if content_type else {}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _post(url: str, text: str | None = None, image: bytes | None = None, filename: str = "post.jpg",
          content_type: str = "image/jpeg", path: str = "/predict") -> tuple[int, dict]:
    """POST a multipart/form-data body with an optional 'text' field and an optional 'image' file."""
    boundary = uuid.uuid4().hex
    parts = []
    if text is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\n{text}\r\n'.encode())
    if image is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
                     f"Content-Type: {content_type}\r\n\r\n".encode() + image + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return _request(url + path, body, f"multipart/form-data; boundary={boundary}")


def test_health(server, trained):
    status, body = _request(server + "/health")
    assert status == 200
    assert body["status"] == "ok" and body["labels"] == list(LABELS) and body["folds"] == 2
    assert body["run"] == str(trained.run) and body["modalities"] == ["text", "image"]
    saved = json.loads((trained.run / "calibration.json").read_text())["temperature"]
    assert body["temperature"] == saved  # the API's probabilities are calibrated with the run's temperature


def test_predict_over_http_matches_api(server, trained, model):
    image = trained.image.read_bytes()
    for text, raw, used in ((trained.text, image, ["text", "image"]), (trained.text, None, ["text"]),
                            (None, image, ["image"])):
        status, body = _post(server, text=text, image=raw)
        assert status == 200, body
        assert body["modalities_used"] == used
        expected = model.predict(text=text, image=raw)
        assert body["label"] == expected.label
        np.testing.assert_allclose(_probs(body), _probs(expected.to_dict()), atol=1e-5)


def test_explain_over_http_matches_api(server, trained, model):
    image = trained.image.read_bytes()
    status, body = _post(server, text=trained.text, image=image, path="/explain")
    assert status == 200, body
    expected = model.explain(text=trained.text, image=image).to_dict()
    assert body["label"] == expected["label"] and [w["word"] for w in body["words"]] == trained.text.split()
    np.testing.assert_allclose([w["score"] for w in body["words"]], [w["score"] for w in expected["words"]],
                               atol=1e-6)
    np.testing.assert_allclose(body["image"]["grid"], expected["image"]["grid"], atol=1e-6)
    assert body["modality_shares"] == pytest.approx(expected["modality_shares"])
    status, body = _post(server, text="great day", path="/explain")
    assert status == 200 and body["image"] is None
    assert body["unavailable"]["image"] == "not available: the post has no image"
    status, body = _post(server, text="hi", image=b"%PDF-1.4 not an image", filename="doc.pdf",
                         content_type="application/pdf", path="/explain")
    assert status == 415 and "not a readable image" in body["error"]
    status, body = _post(server, path="/explain")
    assert status == 400 and "empty request" in body["error"]


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def test_predict_errors_are_4xx_json(server):
    status, body = _post(server, text="hi", image=b"%PDF-1.4 not an image at all", filename="doc.pdf",
                         content_type="application/pdf")
    assert status == 415 and "not a readable image" in body["error"]
    status, body = _post(server, text="hi", image=os.urandom(MAX_UPLOAD + 1000))
    assert status == 413 and "request too large" in body["error"]
    status, body = _post(server, text="hi", image=_png((200, 200)))  # 40,000 pixels > MAX_PIXELS
    assert status == 413 and "pixels" in body["error"]
    status, body = _post(server)
    assert status == 400 and "empty request" in body["error"]
    status, body = _post(server, text="   ")
    assert status == 400 and "empty request" in body["error"]
    status, body = _request(server + "/predict", b"", "application/octet-stream")
    assert status == 400 and "empty request" in body["error"]
    status, body = _request(server + "/nope")
    assert status == 404 and "error" in body


def test_page_is_self_contained(server):
    with urllib.request.urlopen(server + "/", timeout=30) as response:
        assert response.status == 200 and response.headers["content-type"].startswith("text/html")
        html = response.read().decode()
    assert "<style>" in html and "<script>" in html and 'type="file"' in html
    assert "http://" not in html and "https://" not in html  # nothing fetched from elsewhere


def test_serve_refuses_a_busy_port(trained, capsys):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        assert main(["serve", "--run", str(trained.run), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


# ---- (c) a person's path through the page, in headless Chromium ----------------------------------------------------

@pytest.fixture
def browser(tmp_path):
    if not CHROMIUM.is_file() or not CHROMEDRIVER.is_file():
        pytest.skip("headless Chromium not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install '.[test]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=900,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def _submit(browser, server: str, trained, explain: bool = False) -> None:
    """What a person does on the page: pick the image, type the text, (tick Explain,) press Predict."""
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    browser.find_element(By.ID, "image").send_keys(str(trained.image))
    browser.find_element(By.ID, "text").send_keys(trained.text)
    if explain:
        browser.find_element(By.ID, "explain").click()
    browser.find_element(By.ID, "submit").click()


@pytest.mark.browser
def test_page_predicts_in_a_browser(server, browser, trained, model):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _submit(browser, server, trained)
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "label").text.strip())
    expected = model.predict(text=trained.text, image=trained.image)
    assert browser.find_element(By.ID, "label").text.strip().lower() == expected.label
    assert browser.find_element(By.ID, "used").text == "from text + image"
    bars = browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
    assert [bar.get_attribute("data-label") for bar in bars] == list(LABELS)
    shown = {bar.get_attribute("data-label"): bar.find_element(By.CLASS_NAME, "pct").text for bar in bars}
    assert shown == {name: f"{100 * p:.1f}%" for name, p in expected.probabilities.items()}
    time.sleep(0.5)  # the bars grow with a 0.35 s transition
    for bar in bars:  # each bar is drawn as wide as its probability (of the track's width)
        track = bar.find_element(By.CLASS_NAME, "track").size["width"]
        fill = bar.find_element(By.CLASS_NAME, "fill").size["width"]
        assert fill == pytest.approx(track * expected.probabilities[bar.get_attribute("data-label")], abs=2)


@pytest.mark.browser
def test_page_explains_in_a_browser(server, browser, trained, model):
    """The Explain toggle: the words highlighted by score and the heat map drawn over the image."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _submit(browser, server, trained, explain=True)
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#words .w"))
    expected = model.explain(text=trained.text, image=trained.image)
    spans = browser.find_elements(By.CSS_SELECTOR, "#words .w")
    assert [span.text for span in spans] == [w["word"] for w in expected.words]
    strongest = max(range(len(spans)), key=lambda i: abs(expected.words[i]["score"]))
    assert spans[strongest].value_of_css_property("background-color") not in ("rgba(0, 0, 0, 0)", "transparent")
    WebDriverWait(browser, 10).until(lambda d: d.execute_script(
        "var c = document.getElementById('heat-map'); return c.width > 1 && c.getContext('2d')"
        ".getImageData(0, 0, c.width, c.height).data.some(function (v, i) { return i % 4 == 3 && v > 0; });"))
    canvas = browser.find_element(By.ID, "heat-map")
    assert int(canvas.get_attribute("width")) == expected.image.width
    assert len(browser.find_elements(By.CSS_SELECTOR, "#shares .shares")) == 2
