"""``make run`` on a fresh clone with no data beside it: it says it uses the bundled sample, trains on it and writes
a prediction for every post of the sample's test file.

The clone is of the committed HEAD, in a temporary folder with no ``../shared``. Its ``make`` is pointed at this
environment (``VENV`` a folder whose ``bin`` is this interpreter's, marked installed) so that setup is skipped, and
at the clone's own source (``PYTHONPATH``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample" / "mvsa"

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def _git_head() -> bool:
    if shutil.which("git") is None or shutil.which("make") is None:
        return False
    found = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "HEAD"], capture_output=True)
    return found.returncode == 0


@pytest.mark.skipif(not _git_head(), reason="needs git, make and a git checkout of mmsent")
def test_make_run_on_a_fresh_clone_uses_the_bundled_sample(tmp_path):
    clone = tmp_path / "mmsent"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    assert not (tmp_path / "shared").exists()
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / "bin").symlink_to(Path(sys.executable).parent)
    (venv / ".installed").touch()  # newer than the clone's pyproject.toml: setup has nothing to do
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYTEST_", "MMSENT_")) and key not in ("DATA", "RUN", "ARGS", "MAKEFLAGS")}
    env.update(PYTHONPATH=str(clone / "src"), MMSENT_CACHE_DIR=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    result = subprocess.run(["make", "run", f"VENV={venv}"], cwd=clone, env=env, capture_output=True, text=True,
                            timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert ("data folder ../shared/data/mvsa not found: using the bundled sample sample/mvsa (put MVSA-Single there "
            "or pass DATA=...)") in result.stdout.splitlines()
    expected = [line.split(",")[0] for line in (clone / "sample/mvsa/test_without_label.txt").read_text().splitlines()]
    rows = (clone / "runs/default/predictions.txt").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == expected  # the header, then every post to predict, in file order
    assert len(rows) == 41
    assert all(row.split(",")[1] in ("negative", "neutral", "positive") for row in rows[1:])


def test_the_sample_is_stratified_and_keeps_its_posts_whole():
    """The sample holds what its README says: 300 labelled posts in MVSA-Single's proportions, 40 unlabelled, a text
    and an image per post, no image with a short side over 224 px."""
    from PIL import Image

    def rows(name):
        return [line.split(",") for line in (SAMPLE / name).read_text().splitlines()[1:]]

    train, test = rows("train.txt"), rows("test_without_label.txt")
    counts = {tag: sum(row[1] == tag for row in train) for tag in ("negative", "neutral", "positive")}
    assert counts == {"negative": 90, "neutral": 31, "positive": 179}
    assert len(test) == 40 and {row[1] for row in test} == {"null"}
    guids = [row[0] for row in train + test]
    assert len(set(guids)) == 340
    assert sorted(p.name for p in (SAMPLE / "data").iterdir()) == sorted(f"{g}.{x}" for g in guids for x in ("txt", "jpg"))
    for guid in guids:
        with Image.open(SAMPLE / "data" / f"{guid}.jpg") as image:
            assert image.format == "JPEG" and image.mode == "RGB" and min(image.size) <= 224
