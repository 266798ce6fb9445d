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


def test_labels_given_are_normalised_and_checked():
    from mmsent.config import normalised_labels
    from mmsent.errors import ConfigError

    assert normalised_labels([" Positive", "negative ", ""]) == ("positive", "negative")
    with pytest.raises(ConfigError, match="names a more than once"):
        normalised_labels(["a", "b", "A"])
    with pytest.raises(ConfigError, match="one class"):
        normalised_labels(["a"])


@pytest.mark.slow
def test_a_table_run_resumes_without_its_data_flags_and_refuses_what_it_cannot_continue(tmp_path, capsys,
                                                                                       tiny_bert_dir, tiny_vit_dir):
    """--resume reads the data as the run did (its saved data.* keys: columns, --labels in their order); an
    ensemble folder is never overwritten by a run; a run whose folds an earlier version drew is not continued."""
    import pandas as pd

    from mmsent.cli import main

    table = write_table(tmp_path, TWO, per_class=6, n_test=2)
    renamed = tmp_path / "renamed.csv"
    pd.read_csv(table, keep_default_na=False).rename(columns={"text": "tweet"}).to_csv(renamed, index=False)
    run = tmp_path / "run"
    encoders = ["--text-encoder", tiny_bert_dir, "--image-encoder", tiny_vit_dir, "--set", "image.image_size=32"]
    argv = ["train", "--data", str(renamed), "--out", str(run), *FAST, *encoders]
    assert main([*argv, "--text-column", "tweet", "--labels", "Positive, negative"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["labels"] == ["positive", "negative"] and config["data"]["text_column"] == "tweet"
    (run / "metrics.json").unlink()  # as if it had stopped before the end
    capsys.readouterr()
    assert main(["train", "--data", str(renamed), "--out", str(run), "--resume", *FAST, *encoders]) == 0
    assert "finished earlier; kept" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["data"]["labels"] == ["positive", "negative"]

    ensemble = tmp_path / "ens"
    ensemble.mkdir()
    (ensemble / "ensemble.json").write_text("{}")
    assert main([*argv, "--text-column", "tweet", "--out", str(ensemble), "--overwrite"]) == 2
    assert "holds an ensemble" in capsys.readouterr().err

    saved = json.loads((run / "config.json").read_text())
    del saved["train"]["fold_scheme"]  # as a run of an earlier version saved it
    (run / "config.json").write_text(json.dumps(saved))
    (run / "metrics.json").unlink(missing_ok=True)
    assert main(["train", "--data", str(renamed), "--out", str(run), "--resume", *FAST, *encoders]) == 2
    assert "folds drawn by an earlier version" in capsys.readouterr().err


def test_split_cuts_a_lab_folder_of_any_label_set_and_names_the_way_for_a_table(tmp_path, capsys):
    from mmsent.cli import main

    table = write_table(tmp_path, TWO, per_class=10, n_test=0)
    assert main(["split", "--data", str(table), "--out", str(tmp_path / "s")]) == 2
    assert "mmsent convert --data DATA --out FOLDER" in capsys.readouterr().err
    folder = tmp_path / "folder"
    assert main(["convert", "--data", str(table), "--out", str(folder)]) == 0
    assert main(["split", "--data", str(folder), "--out", str(tmp_path / "s"), "--ratios", "6,2,2"]) == 0
    parts = {name: (tmp_path / "s" / f"{name}.txt").read_text().splitlines()[1:] for name in ("train", "val", "test")}
    assert [len(rows) for rows in parts.values()] == [12, 4, 4]
    assert sorted(row.split(",")[1] for row in parts["test"]) == ["negative", "negative", "positive", "positive"]
