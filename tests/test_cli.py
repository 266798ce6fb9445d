"""End to end through ``mmsent.cli.main``: check, train (1 epoch x 2 folds), predict, and the run folder contract."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from helpers import assert_figures_match_oof, assert_predictions_match_api, train_run
from mmsent.cli import main

def test_check_reports_usable_data(dataset, capsys):
    assert main(["check", "--data", str(dataset)]) == 0
    out = capsys.readouterr().out
    assert "negative 8" in out and "data set is usable" in out
    assert "cp1252" in out


def test_check_fails_on_unknown_tag(dataset, capsys):
    (dataset / "train.txt").write_text("guid,tag\n1000,postive\n")
    assert main(["check", "--data", str(dataset)]) == 1
    assert "train.txt:2" in capsys.readouterr().out


@pytest.mark.slow
def test_train_then_predict_default_encoders(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    metrics = train_run(dataset, run)
    assert set(metrics["cv"]) >= {"accuracy_mean", "accuracy_std", "weighted_f1_mean", "macro_f1_mean"}
    for row in metrics["folds"]:
        assert set(row) >= {"fold", "accuracy", "weighted_f1", "macro_f1", "best_epoch"}
    assert [row["val_size"] for row in metrics["folds"]] == [12, 12]
    assert assert_figures_match_oof(run) == metrics
    assert metrics["wall_seconds"] > 0
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["folds"] == 2 and config["fusion"]["dim"] == 16
    for fold in range(2):
        assert (run / "folds" / f"fold_{fold}" / "model.safetensors").is_file()
        history = json.loads((run / "folds" / f"fold_{fold}" / "history.json").read_text())
        assert set(history[0]) >= {"epoch", "train_loss", "val_loss", "val_accuracy"}
    assert len((run / "oof_predictions.csv").read_text().splitlines()) == 25

    predictions = tmp_path / "pred.txt"
    assert main(["predict", "--run", str(run), "--data", str(dataset), "--out", str(predictions)]) == 0
    assert_predictions_match_api(run, dataset, dataset / "test_without_label.txt", predictions)
    assert "wrote 6 predictions" in capsys.readouterr().out


@pytest.mark.slow
def test_same_seed_same_metrics(dataset, tmp_path):
    args = ["--text-encoder", "minilm", "--seed", "7", "--epochs", "2"]
    first = train_run(dataset, tmp_path / "a", *args)
    second = train_run(dataset, tmp_path / "b", *args)  # second run also reads the feature cache
    assert first["folds"] == second["folds"]
    assert first["cv"] == second["cv"]


@pytest.mark.slow
@pytest.mark.parametrize("fusion", ["concat", "bi_cross_attention"])
@pytest.mark.parametrize("modality", ["all", "text"])
def test_train_hf_folders_any_fusion(fusion, modality, dataset, tmp_path, tiny_bert_dir, tiny_vit_dir):
    train_run(dataset, tmp_path / "run", "--text-encoder", tiny_bert_dir, "--image-encoder", tiny_vit_dir,
              "--set", "image.image_size=32", "--fusion", fusion, "--modality", modality,
              "--text-train-layers", "1", "--loss", "focal")
    assert_figures_match_oof(tmp_path / "run")


@pytest.mark.slow
def test_config_file_is_overridden_by_flags(dataset, tmp_path, tiny_bert_dir, tiny_vit_dir):
    config_file = tmp_path / "cfg.json"
    config_file.write_text(json.dumps({"fusion": {"name": "concat", "heads": 2}, "train.lr": 0.01}))
    run = tmp_path / "run"
    train_run(dataset, run, "--config", str(config_file), "--lr", "0.002", "--text-encoder", tiny_bert_dir,
           "--image-encoder", tiny_vit_dir, "--set", "image.image_size=32")
    saved = json.loads((run / "config.json").read_text())
    assert saved["fusion"]["name"] == "concat" and saved["fusion"]["heads"] == 2
    assert saved["train"]["lr"] == 0.002


def test_user_errors_are_one_line(tmp_path, capsys, dataset):
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "data folder not found" in capsys.readouterr().err
    assert main(["train", "--data", str(dataset), "--out", str(tmp_path / "r"), "--set", "train.nope=1"]) == 2
    assert "unknown config key 'train.nope'" in capsys.readouterr().err
    assert main(["predict", "--run", str(tmp_path / "norun"), "--data", str(dataset), "--out", str(tmp_path / "p")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    for workers in ("0", "-2"):
        assert main(["serve", "--run", str(tmp_path / "norun"), "--workers", workers]) == 2
        assert f"--workers must be at least 1, got {workers}" in capsys.readouterr().err


def test_a_bug_is_not_reported_as_a_user_error(monkeypatch, capsys, tmp_path):
    """An exception that is not a UserError (here a ValueError from inside a command, as a bug would raise) shows
    its traceback and exits 3; a user's error exits 2 with one line and no traceback."""
    import dataclasses

    from mmsent import cli

    def broken(args):
        raise ValueError("an internal value went wrong")

    monkeypatch.setitem(cli.COMMANDS, "config", dataclasses.replace(cli.COMMANDS["config"], run=broken))
    assert main(["config"]) == cli.INTERNAL_ERROR == 3
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in broken" in err
    assert "internal error (ValueError): this is a bug in mmsent" in err

    assert main(["report", "--out", str(tmp_path / "r"), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and "not a folder" in err


@pytest.mark.slow
def test_the_public_load_run_takes_what_serve_passes(dataset, tmp_path, tiny_bert_dir, tiny_vit_dir):
    """``mmsent serve`` loads its run through the public ``mmsent.load_run`` with a device and a backend."""
    import inspect

    import mmsent
    from mmsent import predict

    public, folder = inspect.signature(mmsent.load_run), inspect.signature(predict.load_run_folder)
    assert public.parameters.keys() == folder.parameters.keys()
    run = tmp_path / "run"
    train_run(dataset, run, "--text-encoder", tiny_bert_dir, "--image-encoder", tiny_vit_dir, "--set", "image.image_size=32")
    model = mmsent.load_run(run, device="cpu", backend="torch")
    assert model.config.train.backend == "torch"
    assert model.towers.text._runner is None and model.towers.image._runner is None  # torch runs the encoders


class _Boom:
    def __reduce__(self):
        return (Path.write_text, (Path("/tmp/mmsent-pwned-marker"), "pwned"))


@pytest.mark.slow
def test_crafted_pickle_in_run_folder_is_refused(dataset, tmp_path, capsys, tiny_bert_dir, tiny_vit_dir):
    run = tmp_path / "run"
    train_run(dataset, run, "--text-encoder", tiny_bert_dir, "--image-encoder", tiny_vit_dir, "--set", "image.image_size=32")
    marker = Path("/tmp/mmsent-pwned-marker")
    marker.unlink(missing_ok=True)
    (run / "folds" / "fold_0" / "model.safetensors").write_bytes(pickle.dumps(_Boom()))
    code = main(["predict", "--run", str(run), "--data", str(dataset), "--out", str(tmp_path / "p.txt")])
    assert code == 2
    assert "not a valid safetensors file" in capsys.readouterr().err
    assert not marker.exists()
    assert not (tmp_path / "p.txt").exists()


@pytest.mark.slow
def test_incompatible_run_version_is_refused(dataset, tmp_path, capsys, tiny_bert_dir, tiny_vit_dir):
    run = tmp_path / "run"
    train_run(dataset, run, "--text-encoder", tiny_bert_dir, "--image-encoder", tiny_vit_dir, "--set", "image.image_size=32")
    config = json.loads((run / "config.json").read_text())
    config["version"] = 999
    (run / "config.json").write_text(json.dumps(config))
    assert main(["predict", "--run", str(run), "--data", str(dataset), "--out", str(tmp_path / "p.txt")]) == 2
    assert "incompatible" in capsys.readouterr().err


@pytest.mark.slow
def test_train_and_predict_custom_family(dataset, tmp_path):
    """--model custom: from-scratch ResNet + Transformer through the same CLI, run folder and predict."""
    run = tmp_path / "custom"
    train_run(dataset, run, "--model", "custom", "--custom-dim", "32", "--custom-heads", "4",
              "--custom-ffn-dim", "64", "--custom-layers", "1", "--custom-image-size", "32",
              "--set", "custom.widths=8,16", "--set", "custom.blocks=1,1")
    assert_figures_match_oof(run)
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "custom" and config["custom"]["widths"] == [8, 16]
    predictions = tmp_path / "pred.txt"
    assert main(["predict", "--run", str(run), "--data", str(dataset), "--out", str(predictions)]) == 0
    assert_predictions_match_api(run, dataset, dataset / "test_without_label.txt", predictions)
    from mmsent import load_run

    single = load_run(run).predict(text="love great happy", image=dataset / "data" / "1000.jpg")
    assert single.label == max(single.probabilities, key=single.probabilities.get)
    assert sum(single.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_the_config_reference_page_is_what_config_markdown_prints(capsys):
    """docs/config-reference.md is generated: regenerate it with 'mmsent config --markdown > docs/config-reference.md'
    when a config field, its help or a registry changes."""
    from mmsent.config import config_fields

    assert main(["config", "--markdown"]) == 0
    printed = capsys.readouterr().out
    page = Path(__file__).resolve().parents[1] / "docs" / "config-reference.md"
    assert printed == page.read_text(encoding="utf-8"), "regenerate: mmsent config --markdown > docs/config-reference.md"
    rows = [line for line in printed.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == [key for key, _, _ in config_fields()]
    assert "| `train.lr` | `--lr` | `0.0003` | a number | learning rate of the fusion and head |" in rows
    assert "| `data.labels` | `--labels` | `[]` | names, comma-separated |" in printed
