"""Tests of the benchmarks' records (benchmarks/record.py) and of the README tables rendered from them
(benchmarks/render.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = ("bench_cv.py", "bench_features.py", "bench_backends.py", "bench_predict.py", "bench_serve.py",
           "bench_predict_table.py", "bench_explain.py", "bench_ocr.py", "bench_levers.py")


@pytest.fixture
def bench(monkeypatch):
    """The modules of benchmarks/ importable as the scripts import them."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import record
    import render

    return record, render


def render_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / "render.py"), *args], capture_output=True, text=True)


def test_a_record_holds_the_figures_and_what_they_were_measured_on(bench, tmp_path):
    record, _ = bench
    recorder = record.Recorder("example", ["benchmarks/bench_example.py", "--data", "my data", "--posts", "3"])
    written = recorder.write(tmp_path / "sub" / "example.json", {"seconds": 1.5, "rows": {"a": 2}})
    on_disk = json.loads((tmp_path / "sub" / "example.json").read_text())
    assert on_disk == written
    assert set(record.REQUIRED_KEYS) <= set(on_disk)
    assert on_disk["benchmark"] == "example" and on_disk["figures"] == {"seconds": 1.5, "rows": {"a": 2}}
    assert on_disk["command"] == "python benchmarks/bench_example.py --data 'my data' --posts 3"
    assert set(on_disk["machine"]) == {"platform", "cpu", "cores"} and on_disk["machine"]["cores"] >= 1
    assert set(on_disk["load_average"]) == {"start", "end"}
    assert all(len(values) in (0, 3) for values in on_disk["load_average"].values())
    assert "python" in on_disk["versions"] and "numpy" in on_disk["versions"]
    assert isinstance(on_disk["revision"], str)
    assert datetime.fromisoformat(on_disk["date"]).tzinfo is not None


def test_the_cpu_model_comes_from_cpuinfo(bench, tmp_path):
    record, _ = bench
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n")
    assert record.cpu_model(cpuinfo) == "AMD EPYC 7B13"
    assert record.cpu_model(tmp_path / "absent")  # elsewhere: what platform reports


def test_an_absolute_script_path_is_recorded_relative_to_the_working_folder(bench, tmp_path, monkeypatch):
    record, _ = bench
    monkeypatch.chdir(tmp_path)
    assert record.command_line([str(tmp_path / "benchmarks" / "bench_x.py"), "--out", "OUT"]) == \
        "python benchmarks/bench_x.py --out OUT"
    assert record.command_line(["/elsewhere/bench_x.py"]) == "python benchmarks/bench_x.py"


def lever(accuracy: float) -> dict:
    pair = [accuracy, 0.01]
    return {"flags": [], "train_seconds_per_seed": 20.4,
            "cv": {"accuracy": pair, "weighted_f1": pair, "macro_f1": pair, "decision_macro_f1": {"macro_f1": pair},
                   "train_seconds_per_seed": 20.4,
                   "seed_average": {"accuracy": 0.75, "weighted_f1": 0.7, "macro_f1": 0.6}},
            "fixed_split": {"accuracy": pair, "weighted_f1": pair, "macro_f1": pair}}


def test_a_lever_record_renders_to_its_table(bench, tmp_path):
    record, render = bench
    path = tmp_path / "levers_x.json"
    record.Recorder("levers", ["bench_levers.py"]).write(path, {"base": "--profile fast", "seeds": [1, 2],
                                                                "levers": {"base": lever(0.7), "ocr": lever(0.71)}})
    revision = json.loads(path.read_text())["revision"]
    text = render.render([path])
    lines = text.splitlines()
    assert lines[0].startswith("Base: `--profile fast`; CV: mean ± std over seeds")
    assert lines[2].startswith("| lever | CV accuracy |") and lines[3] == "| --- |" + " --- |" * 10
    assert lines[4] == ("| base | 0.7000 ± 0.0100 | 0.7000 ± 0.0100 | 0.7000 ± 0.0100 | 0.7000 ± 0.0100 | "
                        "0.7000 ± 0.0100 | 0.7000 ± 0.0100 | 0.7000 ± 0.0100 | 0.7500 / 0.7000 / 0.6000 |  | 20 |")
    assert lines[5].startswith("| ocr | 0.7100 ± 0.0100 |")
    assert lines[6:] == ["", f"Rendered from `levers_x.json`" + (f" (revision {revision})." if revision else ".")]


def test_any_other_record_renders_a_figure_per_row(bench, tmp_path):
    _, render = bench
    path = tmp_path / "features.json"
    path.write_text(json.dumps({"benchmark": "features", "date": "2026-12-04T10:00:00+00:00", "revision": "abc1234",
                                "figures": {"pairs": 4000, "seconds": 61.84, "pairs_per_second": 64.68,
                                            "rates": {"onnx image": [99.51, 101.2]}, "settings": []}}))
    assert render.render([path]) == (
        "| figure | 2026-12-04 |\n"
        "| --- | --- |\n"
        "| pairs | 4000 |\n"
        "| seconds | 61.8 |\n"
        "| pairs_per_second | 64.7 |\n"
        "| rates.onnx image | 99.5, 101.2 |\n"
        "| settings |  |\n"
        "\n"
        "Rendered from `features.json` (revision abc1234).\n")


def test_records_of_two_benchmarks_do_not_share_a_table(bench, tmp_path):
    _, render = bench
    for name in ("a", "b"):
        (tmp_path / f"{name}.json").write_text(json.dumps({"benchmark": name, "figures": {"x": 1}}))
    with pytest.raises(ValueError, match="several benchmarks"):
        render.render([tmp_path / "a.json", tmp_path / "b.json"])


def test_the_committed_readme_matches_its_records():
    done = render_script("--check")
    assert done.returncode == 0, done.stderr
    text = (BENCHMARKS / "README.md").read_text()
    assert text.count("<!-- rendered: ") == text.count("<!-- end rendered -->") >= 2
    assert "<!-- rendered: levers-default from " in text and "<!-- rendered: levers-fast from " in text


def test_check_fails_on_a_tampered_readme_and_rendering_repairs_it(tmp_path):
    shutil.copytree(BENCHMARKS / "results", tmp_path / "results")
    readme = tmp_path / "README.md"
    original = (BENCHMARKS / "README.md").read_text()
    assert "| base | 0.7130 ± 0.0041 |" in original
    readme.write_text(original.replace("| base | 0.7130 ± 0.0041 |", "| base | 0.7330 ± 0.0041 |"))
    done = render_script("--check", "--readme", str(readme))
    assert done.returncode == 1
    assert "levers-default" in done.stderr and "0.7330" in done.stderr and "levers-fast:" not in done.stderr
    assert render_script("--readme", str(readme)).returncode == 0
    assert readme.read_text() == original
    assert render_script("--check", "--readme", str(readme)).returncode == 0


def test_a_block_whose_record_is_missing_fails_the_check(tmp_path):
    (tmp_path / "README.md").write_text("# B\n\n<!-- rendered: x from results/absent.json -->\nold\n"
                                        "<!-- end rendered -->\n")
    done = render_script("--check", "--readme", str(tmp_path / "README.md"))
    assert done.returncode == 1 and "absent.json" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_script_writes_its_record_through_the_shared_helper(script):
    source = (BENCHMARKS / script).read_text()
    assert "from record import" in source and "Recorder(" in source and ".write(" in source
    assert "platform." not in source and "rev-parse" not in source  # what record.py records is not repeated


def test_the_committed_records_name_no_machine_paths():
    for path in (BENCHMARKS / "results").glob("*.json"):
        text = path.read_text()
        assert "/work/" not in text and "/home/" not in text and "/tmp/" not in text, path.name
        assert json.loads(text).get("command"), path.name


def test_bench_levers_renders_its_outputs_old_and_new(bench, tmp_path):
    record, render = bench
    import bench_levers

    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    (old / "levers.json").write_text(json.dumps({"levers": {"base": lever(0.7)}, "base": "", "seeds": [1],
                                                 "revision": "b990dc6", "command": "bench_levers.py --out OUT"}))
    record.Recorder("levers", ["bench_levers.py"]).write(new / "levers.json",
                                                         {"base": "", "seeds": [1], "levers": {"ocr": lever(0.71)}})
    table = bench_levers.render([old, new])
    assert table.count("Base: `(the default)`") == 1
    assert "\n| base | 0.7000 ± 0.0100 |" in table and "\n| ocr | 0.7100 ± 0.0100 |" in table
