"""Any label set, end to end through the CLI: a two-class and a seven-class table each train, predict, report and
serve with their own classes (the head's size, the folds, the metrics, the output and the API)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image

from helpers import FAST

SEVEN = ("angry", "bored", "calm", "fear", "happy", "love", "sad")
TWO = ("negative", "positive")
FILLER = ["the", "photo", "street", "city", "car", "window", "train", "coffee", "book", "walk"]


def write_table(root, classes, per_class: int, n_test: int, seed: int = 0):
    """posts.csv: a planted word (the class name itself, made a word the tokenizer keeps) decides the label; a
    colour per class in the image; ``n_test`` rows without a label to predict."""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(per_class * len(classes) + n_test):
        label = classes[i % len(classes)]
        words = rng.choices(FILLER, k=4)
        words.insert(rng.randrange(5), f"{label}")
        colour = np.array([(37 * k) % 256 for k in (i % len(classes) + 1, 3 * (i % len(classes)) + 5, 11)])
        noise = np.random.default_rng(i).integers(-10, 10, size=(40, 40, 3))
        Image.fromarray(np.clip(colour + noise, 0, 255).astype(np.uint8)).save(root / "images" / f"{i}.jpg")
        rows.append({"id": f"p{i}", "text": " ".join(words), "image": f"images/{i}.jpg",
                     "label": label if i < per_class * len(classes) else ""})
    import pandas as pd

    pd.DataFrame(rows).to_csv(root / "posts.csv", index=False)
    return root / "posts.csv"


@pytest.mark.slow
@pytest.mark.parametrize("classes", [TWO, SEVEN], ids=["two", "seven"])
def test_a_label_set_trains_predicts_reports_and_serves(classes, tmp_path, capsys, tiny_bert_dir, tiny_vit_dir):
    from starlette.testclient import TestClient

    from mmsent import load_run
    from mmsent.cli import main
    from mmsent.serve import create_app

    table = write_table(tmp_path, classes, per_class=6, n_test=4)
    run = tmp_path / "run"
    encoders = ["--text-encoder", tiny_bert_dir, "--image-encoder", tiny_vit_dir, "--set", "image.image_size=32"]
    assert main(["train", "--data", str(table), "--out", str(run), *FAST, *encoders]) == 0
    config = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert config["data"]["labels"] == sorted(classes)  # read from the data, sorted
    assert list(metrics["data"]["label_counts"]) == sorted(classes)
    assert all(count == 6 for count in metrics["data"]["label_counts"].values())
    assert list(metrics["out_of_fold"]["per_class"]) == sorted(classes)
    assert np.asarray(metrics["out_of_fold"]["confusion"]).shape == (len(classes), len(classes))
    assert np.asarray(metrics["out_of_fold"]["confusion"]).sum() == 6 * len(classes)
    header = (run / "oof_predictions.csv").read_text().splitlines()[0]
    assert header == "guid,label," + ",".join(f"p_{name}" for name in sorted(classes))

    out = tmp_path / "predictions.txt"
    assert main(["predict", "--data", str(table), "--run", str(run), "--out", str(out)]) == 0
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    assert [row[0] for row in rows] == [f"p{i}" for i in range(6 * len(classes), 6 * len(classes) + 4)]
    assert {row[1] for row in rows} <= set(classes)

    assert main(["report", "--out", str(tmp_path / "report"), str(run)]) == 0
    page = (tmp_path / "report" / "report.md").read_text()
    assert all(f"| {name} |" in page for name in classes)  # the per-class table names every class

    import threading

    def inference_threads() -> int:
        return sum(t.name.startswith("mmsent-inference") and t.is_alive() for t in threading.enumerate())

    before = inference_threads()
    with load_run(run, device="cpu") as predictor:
        assert inference_threads() == before + 1
        client = TestClient(create_app(predictor))
        assert client.get("/health").json()["labels"] == sorted(classes)
        answer = client.post("/predict", data={"text": f"the {classes[0]} car"}).json()
        assert list(answer["probabilities"]) == sorted(classes)
        assert answer["label"] == max(answer["probabilities"], key=answer["probabilities"].get)
        assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert inference_threads() == before  # the run's inference thread ends with it
    with pytest.raises(RuntimeError):  # a closed run predicts no more
        predictor.predict(text="the car")
