"""``mmsent export``: a run (or ensemble) as a portable folder that predicts like the run, without PyTorch.

One tiny run (a tiny BERT and EfficientNet-Lite0 at 64 px, 1 epoch x 2 folds) is exported once for the module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import train_fast, write_dataset
from mmsent import load_run
from mmsent.cli import main
from mmsent.data.text import decode_text
from mmsent.portable import MANIFEST_FILE, ExportedModel

pytestmark = pytest.mark.slow
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_bert_dir):
    """(data folder, run folder, export folder), trained and exported in a cache of their own."""
    root = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MMSENT_CACHE_DIR", str(root / "cache"))
        data = write_dataset(root / "mvsa")
        train_fast(data, root / "run", **{"text.name": tiny_bert_dir})
        assert main(["export", "--run", str(root / "run"), "--out", str(root / "model")]) == 0
    return data, root / "run", root / "model"


def _posts(data: Path) -> tuple[list, list]:
    """Test posts with text and image, text only, image only, and one image given as a PIL image."""
    guids = [line.split(",")[0] for line in (data / "test_without_label.txt").read_text().splitlines()[1:]]
    texts = [decode_text((data / "data" / f"{g}.txt").read_bytes()).text for g in guids]
    images = [(data / "data" / f"{g}.jpg").read_bytes() for g in guids]
    return ([texts[0], texts[1], None, texts[3], None],
            [images[0], None, images[2], Image.open(data / "data" / f"{guids[3]}.jpg"), images[4]])


def _probs(predictions) -> np.ndarray:
    return np.array([list(p.probabilities.values()) for p in predictions])


def test_export_folder_holds_what_prediction_needs(exported):
    _, run, model = exported
    manifest = json.loads((model / MANIFEST_FILE).read_text())
    assert manifest["decision"] is None and manifest["combine"] == {"rule": "single"}
    assert manifest["labels"] == ["negative", "neutral", "positive"]
    assert manifest["temperature"] == pytest.approx(json.loads((run / "calibration.json").read_text())["temperature"])
    assert [m["folds"] for m in manifest["members"]] == [2]
    assert {spec["kind"] for spec in manifest["encoders"].values()} == {"text", "image", "lexicon"}
    card = (model / "README.md").read_text()
    assert "negative, neutral, positive" in card and "Limitations" in card and "accuracy" in card


def test_export_gives_the_runs_probabilities(exported):
    data, run, model = exported
    texts, images = _posts(data)
    with load_run(run, device="cpu") as loaded, load_run(model) as portable:
        assert isinstance(portable, ExportedModel)
        expected, got = _probs(loaded.predict_batch(texts, images)), _probs(portable.predict_batch(texts, images))
        assert np.abs(expected - got).max() < 1e-4
        assert [p.modalities_used for p in portable.predict_batch(texts, images)] == [
            ["text", "image"], ["text"], ["image"], ["text", "image"], ["image"]]
        folder_run = loaded.predict_folder(data, data / "test_without_label.txt")
        folder_export = portable.predict_folder(data, data / "test_without_label.txt")
    assert folder_run.keys() == folder_export.keys()
    for guid, prediction in folder_run.items():
        assert folder_export[guid].label == prediction.label
        assert np.allclose(list(folder_export[guid].probabilities.values()), list(prediction.probabilities.values()),
                           atol=1e-4)


SITE_BLOCK_TORCH = """
import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "sklearn", "scipy", "captum", "matplotlib"):
            raise ImportError(f"blocked: {name}", name=name)
sys.meta_path.insert(0, Blocked())
"""

BLOCK_TORCH = SITE_BLOCK_TORCH + """
from mmsent.cli import main
code = main(sys.argv[1:])
assert not any(m.split(".")[0] in ("torch", "transformers") for m in sys.modules), "torch was imported"
sys.exit(code)
"""


def _blocked(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """``mmsent ARGV`` in a process where importing torch (and the training stack) fails."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(BLOCK_TORCH), *argv], cwd=cwd, capture_output=True,
                          text=True, env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "MMSENT_CACHE_DIR":
                                          str(cwd / "cache"), "TQDM_DISABLE": "1"})


def test_predict_from_export_without_torch(exported, tmp_path):
    data, run, model = exported
    assert main(["predict", "--run", str(run), "--data", str(data), "--out", str(tmp_path / "run.csv")]) == 0
    done = _blocked("predict", "--run", str(model), "--data", str(data), "--out", str(tmp_path / "export.csv"),
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    expected, got = [(tmp_path / name).read_text().splitlines() for name in ("run.csv", "export.csv")]
    assert [row.split(",")[:2] for row in got] == [row.split(",")[:2] for row in expected]
    gap = max(abs(float(a) - float(b)) for x, y in zip(expected[1:], got[1:])
              for a, b in zip(x.split(",")[2:-1], y.split(",")[2:-1]))
    assert gap < 1e-4
    one = _blocked("predict", "--run", str(model), "--text", "love this great day", "--json", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert set(json.loads(one.stdout)["probabilities"]) == {"negative", "neutral", "positive"}


def test_predict_from_export_imports_no_torch_where_torch_is_installed(exported, tmp_path):
    """With torch installed (no blocker), predicting from an export still does not import it: the base command
    builds its own parser only, not the training commands' registry choices."""
    _, _, model = exported
    code = ("import sys; from mmsent.cli import main; code = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code, "predict", "--run", str(model), "--text", "a lovely day",
                           "--json"], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(SRC)})
    assert done.returncode == 0, done.stderr


def test_without_torch_training_commands_and_runs_say_what_to_install(exported, tmp_path):
    data, run, _ = exported
    done = _blocked("train", "--data", str(data), "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert done.returncode == 2 and "pip install 'mmsent[train]'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = _blocked("predict", "--run", str(run), "--text", "hello", cwd=tmp_path)
    assert done.returncode == 2 and "mmsent export" in done.stderr and "mmsent[train]" in done.stderr


def _with_config(run: Path, target: Path, **sections) -> Path:
    import shutil

    shutil.copytree(run, target)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, **sections}))
    return target


def test_export_refuses_what_it_cannot_carry_over(exported, tmp_path, capsys):
    _, run, model = exported
    assert main(["export", "--run", str(run), "--out", str(model)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    config = json.loads((run / "config.json").read_text())
    for i, (section, key, value, said) in enumerate([("ocr", "enabled", True, "reads the text in each image"),
                                                     ("image", "fit", "pad", "pads each image")]):
        changed = _with_config(run, tmp_path / f"r{i}", **{section: {**config[section], key: value}})
        assert main(["export", "--run", str(changed), "--out", str(tmp_path / f"m{i}")]) == 2
        assert said in capsys.readouterr().err and not (tmp_path / f"m{i}").exists()
    unknown = _with_config(run, tmp_path / "unknown", calibration_v9={"offsets": [0.1, 0, 0]})
    assert main(["export", "--run", str(unknown), "--out", str(tmp_path / "m9")]) == 2
    assert "does not know (calibration_v9)" in capsys.readouterr().err
    assert main(["export", "--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "m3")]) == 2
    assert not (tmp_path / "m9").exists()


def test_export_carries_the_decision_rule(exported, tmp_path):
    import shutil

    from mmsent import load_run

    _, run, _ = exported
    decided = tmp_path / "decided"
    shutil.copytree(run, decided)
    assert main(["decide", "--run", str(decided)]) == 0
    rule = json.loads((decided / "decision.json").read_text())
    rule["offsets"] = [0.0, 50.0, 0.0][:len(rule["offsets"])]  # always the second class: visible in every label
    (decided / "decision.json").write_text(json.dumps(rule))
    assert main(["export", "--run", str(decided), "--out", str(tmp_path / "m")]) == 0
    manifest = json.loads((tmp_path / "m" / "mmsent-export.json").read_text())
    assert manifest["decision"] == {"rule": "offsets", "offsets": rule["offsets"]}
    with load_run(tmp_path / "m") as model, load_run(decided) as original:
        exported_label = model.predict(text="love great happy").label
        assert exported_label == original.predict(text="love great happy").label == model.classes[1]


def test_exported_ensembles_mean_and_stacked(exported, tmp_path, tiny_bert_dir):
    data, run, _ = exported
    other = tmp_path / "other"
    train_fast(data, other, **{"text.name": tiny_bert_dir, "fusion.name": "concat"})
    texts, images = _posts(data)
    for name, extra in (("mean", []), ("stack", ["--stack", "--data", str(data)])):
        assert main(["ensemble", "--out", str(tmp_path / name), str(run), str(other), *extra]) == 0
        assert main(["export", "--run", str(tmp_path / name), "--out", str(tmp_path / f"{name}-model")]) == 0
        manifest = json.loads((tmp_path / f"{name}-model" / MANIFEST_FILE).read_text())
        assert manifest["combine"]["rule"] == name and len(manifest["members"]) == 2
        assert len(manifest["encoders"]) == 3  # the members share their encoders (text, image, lexicon scores)
        with load_run(tmp_path / name, device="cpu") as loaded, load_run(tmp_path / f"{name}-model") as portable:
            gap = np.abs(_probs(loaded.predict_batch(texts, images)) - _probs(portable.predict_batch(texts, images)))
        assert gap.max() < 1e-4


def test_predict_table_from_export_streams_like_the_run(exported, tmp_path):
    data, run, model = exported
    table = tmp_path / "posts.csv"
    assert main(["convert", "--data", str(data), "--out", str(table)]) == 0
    for name, source in (("run", run), ("export", model)):
        assert main(["predict", "--run", str(source), "--data", str(table), "--out", str(tmp_path / f"{name}.csv"),
                     "--chunk-size", "4", "--all-rows", "--allow-outside-paths"]) == 0
    expected, got = [(tmp_path / f"{name}.csv").read_text().splitlines() for name in ("run", "export")]
    assert len(got) == len(expected) == 31
    for a, b in zip(expected[1:], got[1:]):
        assert a.split(",")[:2] == b.split(",")[:2]
        assert np.allclose([float(v) for v in a.split(",")[2:-1]], [float(v) for v in b.split(",")[2:-1]], atol=1e-4)


def test_lexicon_scores_are_exported(exported):
    """A run that reads lexicon scores exports them as an input its graph takes, computed from the raw texts in
    the base install; a word the lexicon scores changes the exported model's probabilities as it does the run's."""
    data, run, model = exported  # lexicon scores are the default
    assert json.loads((run / "config.json").read_text())["lexicon"]["enabled"] is True
    manifest = json.loads((model / MANIFEST_FILE).read_text())
    assert manifest["members"][0]["encoders"]["lexicon"] == "lexicon"
    assert "lexicon" in manifest["members"][0]["inputs"]
    texts, images = _posts(data)
    texts += ["I love this, wonderful and happy 😍"]
    images += [None]
    with load_run(run, device="cpu") as loaded, load_run(model) as portable:
        expected, got = _probs(loaded.predict_batch(texts, images)), _probs(portable.predict_batch(texts, images))
        folder_run = loaded.predict_folder(data, data / "test_without_label.txt")
        folder_export = portable.predict_folder(data, data / "test_without_label.txt")
        member = portable.members[0]
        inputs = {"text": ["a day"], "image": [None]}
        features = {name: encoder.encode(inputs[spec["kind"]]) for (name, encoder), spec in
                    zip(portable.encoders.items(), manifest["encoders"].values()) if spec["kind"] != "lexicon"}
        feeds = {k: v for f in features.values() for k, v in f.items()}
        logits = [member.graph.run(None, {**feeds, "lexicon": np.full((1, 9), value, dtype=np.float32)})[0]
                  for value in (0.0, 1.0)]
    assert np.abs(expected - got).max() < 1e-4
    assert np.abs(logits[0] - logits[1]).max() > 1e-6  # the graph reads its lexicon input
    for guid, prediction in folder_run.items():
        assert np.allclose(list(folder_export[guid].probabilities.values()), list(prediction.probabilities.values()),
                           atol=1e-4)


def test_fine_tuned_text_layers_are_exported(exported, tmp_path, tiny_bert_dir):
    data, _, _ = exported
    run = tmp_path / "finetuned"
    train_fast(data, run, **{"text.name": tiny_bert_dir, "text.train_layers": 1})
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "model")]) == 0  # checked against the run
    texts, images = _posts(data)
    with load_run(run, device="cpu") as loaded, load_run(tmp_path / "model") as portable:
        gap = np.abs(_probs(loaded.predict_batch(texts, images)) - _probs(portable.predict_batch(texts, images)))
    assert gap.max() < 1e-4


def test_server_batches_concurrent_requests_and_reports_metrics(exported):
    from concurrent.futures import ThreadPoolExecutor

    from starlette.testclient import TestClient

    from mmsent.serve import Batching, create_app

    data, _, model = exported
    texts, images = _posts(data)
    with load_run(model) as portable:
        expected = portable.predict(text=texts[0], image=images[0]).probabilities
        app = create_app(portable, batching=Batching(max_batch=8, wait_ms=50))
        with TestClient(app) as client:
            def ask(_):
                return client.post("/predict", data={"text": texts[0]},
                                   files={"image": ("post.jpg", images[0], "image/jpeg")}).json()

            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(ask, range(16)))
            assert client.post("/predict", data={"text": " "}).status_code == 400
            assert client.post("/explain", data={"text": "great"}).status_code == 501
            metrics = client.get("/metrics").text
    for answer in answers:
        assert answer["probabilities"] == pytest.approx(expected, abs=1e-6)
    assert 'mmsent_requests_total{endpoint="/predict",status="200"} 16' in metrics
    assert 'mmsent_errors_total{endpoint="/predict"} 1' in metrics
    assert 'mmsent_request_seconds_count{endpoint="/predict"} 17' in metrics
    batches = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines() if line.startswith("mmsent_batch")}
    assert batches["mmsent_batch_size_sum"] == 16 and batches["mmsent_batch_size_count"] < 16  # some were batched




def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _multipart(text: str, image: bytes) -> tuple[bytes, str]:
    boundary = "mmsent-test-boundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\n{text}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="post.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_serve_with_two_worker_processes_without_torch(exported, tmp_path):
    """``mmsent serve --workers 2`` from an export, in processes (the workers too) where torch cannot be imported:
    concurrent answers equal the model's in this process, and two worker processes answer."""
    import os
    import signal
    import time
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    data, _, model = exported
    texts, images = _posts(data)
    with load_run(model) as portable:
        expected = [portable.predict(text=texts[i], image=images[i]).probabilities for i in (0, 3)]
    posts = [_multipart(texts[0], images[0]), _multipart(texts[3], Path(images[3].filename).read_bytes())]
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(textwrap.dedent(SITE_BLOCK_TORCH))  # every process
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mmsent", "serve", "--run", str(model), "--workers", "2", "--port", str(port)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={"PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{SRC}", "PATH": "/usr/bin:/bin",
             "MMSENT_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"

    def get(path):
        with urllib.request.urlopen(url + path, timeout=30) as answer:
            return json.loads(answer.read())

    def ask(i):
        body, kind = posts[i % 2]
        request = urllib.request.Request(url + "/predict", data=body, headers={"Content-Type": kind})
        with urllib.request.urlopen(request, timeout=60) as answer:
            return i % 2, json.loads(answer.read())

    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                get("/health")
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.communicate(timeout=10)[0]
                time.sleep(0.5)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(16)))
        for which, answer in answers:
            assert answer["probabilities"] == pytest.approx(expected[which], abs=1e-6)
            assert answer["modalities_used"] == ["text", "image"]
        pids = set()
        with ThreadPoolExecutor(4) as pool:  # each request on a connection of its own: the kernel hands them out
            for _ in range(50):
                pids |= {health["pid"] for health in pool.map(lambda _: get("/health"), range(8))}
                if len(pids) == 2:
                    break
        assert len(pids) == 2 and server.pid not in pids
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=60)[0]
    assert server.returncode == 0, output
    assert "with 2 worker processes" in output and "Traceback" not in output, output


def test_image_graph_pads_inside_its_convolutions(exported, tmp_path):
    """The exported image graph has no Pad left (folded into the convolutions) and gives the same outputs as the
    graph the run's ONNX backend runs."""
    import onnx
    import onnxruntime

    from mmsent.export import fold_pads_into_convs

    _, run, model = exported
    manifest = json.loads((model / MANIFEST_FILE).read_text())
    spec = next(spec for spec in manifest["encoders"].values() if spec["kind"] == "image")
    assert "Pad" not in {node.op_type for node in onnx.load(str(model / spec["graph"])).graph.node}
    with load_run(run, device="cpu", backend="onnx") as loaded:
        source = Path(loaded.towers.image._runner.path)
    assert "Pad" in {node.op_type for node in onnx.load(str(source)).graph.node}
    pixels = np.random.default_rng(0).integers(0, 255, size=(3, spec["size"], spec["size"], 3), dtype=np.uint8)
    outputs = []
    for graph in (source, model / spec["graph"]):
        session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {session.get_inputs()[0].name: pixels})[0])
    assert np.array_equal(*outputs)
    assert not fold_pads_into_convs(model / spec["graph"], tmp_path / "again.onnx", spec["size"])  # nothing left
    assert (tmp_path / "again.onnx").read_bytes() == (model / spec["graph"]).read_bytes()
