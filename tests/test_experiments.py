"""ablate / compare / sweep / report: grid expansion, resumption (a second run trains nothing), tables, report."""

from __future__ import annotations

import json

import pytest

from mmsent import experiments
from mmsent.cli import main
from mmsent.config import ConfigError
from mmsent.experiments import comparison_cells, parse_grid, sweep_cells
from mmsent.model import MODALITIES
from mmsent.registry import FUSIONS, MODEL_FAMILIES

pytestmark = pytest.mark.slow  # trains runs: left out of the quick subset (pytest -m "not slow")

TINY = ["--epochs", "1", "--folds", "2", "--batch-size", "8", "--dim", "16", "--ffn-dim", "32", "--workers", "0",
        "--set", "text.max_length=16", "--set", "image.image_size=64",
        "--custom-dim", "16", "--custom-heads", "2", "--custom-ffn-dim", "32", "--custom-layers", "1",
        "--custom-image-size", "32", "--set", "custom.widths=8,8", "--set", "custom.blocks=1,1"]
ROW_KEYS = {"accuracy", "weighted_f1", "macro_f1", "accuracy_std"}


def test_grid_keys_are_config_keys_or_flag_names():
    grid = parse_grid(["heads=4,8", "ffn_dim=256,512,1024", "train.lr=1e-3"])
    assert grid == {"fusion.heads": ["4", "8"], "fusion.ffn_dim": ["256", "512", "1024"], "train.lr": ["1e-3"]}
    cells = sweep_cells(grid)
    assert len(cells) == 6
    assert cells[0].overrides == {"fusion.heads": 4, "fusion.ffn_dim": 256, "train.lr": 0.001}  # typed values
    assert len({c.name for c in cells}) == 6  # one folder per cell
    assert parse_grid(["ffn-dim=64"]) == {"fusion.ffn_dim": ["64"]}
    assert parse_grid(["custom.widths=8,16;16,32"]) == {"custom.widths": ["8,16", "16,32"]}
    assert sweep_cells(parse_grid(["custom.widths=8,16;16,32"]))[1].overrides == {"custom.widths": [16, 32]}


@pytest.mark.parametrize("items,message", [
    (["nonsense=1,2"], "unknown grid key"),
    (["heads=4", "fusion.heads=8"], "given twice"),
    (["train.seed=1,2"], "same folds"),
    (["heads"], "KEY=V1,V2"),
    (["heads=four"], "expected int"),
    ([], "at least one"),
])
def test_bad_grids_are_refused(items, message):
    with pytest.raises(ConfigError, match=message):
        sweep_cells(parse_grid(items))


def test_comparison_grid_comes_from_the_registries():
    cells = comparison_cells()
    assert [(c.settings["model"], c.settings["fusion"]) for c in cells] == [
        (m, f) for m in MODEL_FAMILIES.names() for f in FUSIONS.names()]
    assert {"pretrained", "custom"} <= set(MODEL_FAMILIES.names())


def _count_training(monkeypatch) -> list[str]:
    calls = []
    real = experiments.train_cv

    def counting(config, split, out_dir, **kwargs):
        calls.append(out_dir.name)
        return real(config, split, out_dir, **kwargs)

    monkeypatch.setattr(experiments, "train_cv", counting)
    return calls


def test_sweep_writes_table_and_a_second_run_trains_nothing(dataset, tmp_path, monkeypatch, capsys):
    out = tmp_path / "sweep"
    calls = _count_training(monkeypatch)
    argv = ["sweep", "--data", str(dataset), "--out", str(out), "--grid", "heads=2,4", "lr=1e-3", *TINY]
    assert main(argv) == 0
    assert len(calls) == 2
    table = json.loads((out / "sweep.json").read_text())
    assert [r["fusion.heads"] for r in table["rows"]] == [2, 4]
    for row in table["rows"]:  # each row holds its cell's own CV figures, as its run folder has them
        assert ROW_KEYS <= set(row)
        cell = next(p for p in (out / "cells").iterdir()
                    if json.loads((p / "config.json").read_text())["fusion"]["heads"] == row["fusion.heads"])
        assert row["accuracy"] == json.loads((cell / "metrics.json").read_text())["cv"]["accuracy_mean"]
    assert "| fusion.heads | train.lr | accuracy (mean ± std)" in (out / "sweep.md").read_text()

    calls.clear()
    assert main(argv) == 0  # everything finished: nothing is trained again
    assert calls == []
    assert "finished earlier; kept" in capsys.readouterr().out
    assert json.loads((out / "sweep.json").read_text())["rows"] == table["rows"]

    # an interrupted grid: the second cell never finished -> only it is trained
    second = out / "cells" / table["rows"][1]["run"].split("/")[-1]
    (second / "metrics.json").unlink()
    calls.clear()
    assert main(argv) == 0
    assert calls == [second.name]
    assert json.loads((out / "sweep.json").read_text())["rows"] == table["rows"]  # resumed folds: same numbers


def test_changed_base_config_is_refused_not_mixed(dataset, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", "--data", str(dataset), "--out", str(out), "--grid", "heads=2", *TINY]
    assert main(argv) == 0
    assert main([*argv, "--dropout", "0.5"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_ablation_and_comparison_tables(dataset, tmp_path):
    ablation = tmp_path / "ablation"
    assert main(["ablate", "--data", str(dataset), "--out", str(ablation), *TINY]) == 0
    rows = json.loads((ablation / "ablation.json").read_text())["rows"]
    assert [r["modality"] for r in rows] == list(MODALITIES)
    assert all(ROW_KEYS <= set(r) for r in rows)

    comparison = tmp_path / "comparison"
    assert main(["compare", "--data", str(dataset), "--out", str(comparison), *TINY]) == 0
    rows = json.loads((comparison / "comparison.json").read_text())["rows"]
    assert len(rows) == len(MODEL_FAMILIES.names()) * len(FUSIONS.names())
    assert all({"model", "fusion"} | ROW_KEYS <= set(r) for r in rows)
    md = (comparison / "comparison.md").read_text()
    assert md.count("\n") == len(rows) + 2 and "custom" in md and "bi_cross_attention" in md

    report = tmp_path / "report"
    assert main(["report", "--out", str(report), str(ablation), str(comparison),
                 str(comparison / "cells" / rows[0]["run"].split("/")[-1])]) == 0
    page = (report / "report.html").read_text()
    assert page.count("<img") >= 3 and "data:image/png;base64," in page  # distribution, curves, confusion
    assert "confusion" in (report / "report.md").read_text()
    assert "<table>" in page and "bi_cross_attention" in page and "precision" in page
    figures = sorted((report / "figures").glob("*.png"))
    assert figures and all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in figures)


def test_report_of_a_sweep_has_loss_curves_per_value(dataset, tmp_path):
    out = tmp_path / "sweep"
    assert main(["sweep", "--data", str(dataset), "--out", str(out), "--grid", "heads=2,4", *TINY]) == 0
    assert main(["report", "--out", str(tmp_path / "r"), str(out)]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    # the label distribution, then one validation-loss plot per swept key
    assert "## sweep" in md and md.count("![") == 2 and "validation loss by fusion.heads" in md


def test_report_refuses_other_folders(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", "--out", str(tmp_path / "r"), str(tmp_path / "empty")]) == 2
    assert "neither a run folder" in capsys.readouterr().err
