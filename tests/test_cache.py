"""The feature cache and atomic writes: a damaged or interrupted file is never trusted by a later run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mmsent.cli import main
from mmsent.config import TextEncoderConfig, TextPrepConfig
from mmsent.data.dataset import open_data
from mmsent.encoders.text import create_text_tower
from mmsent.features import _load_valid, cache_key, load_or_compute
from mmsent.atomic import atomic_path, atomic_write_json, save_tensors

FAST = ["--epochs", "1", "--folds", "2", "--batch-size", "8", "--dim", "16", "--ffn-dim", "32",
        "--set", "text.max_length=16", "--workers", "0", "--set", "image.image_size=32"]


def _cache() -> Path:
    return Path(os.environ["MMSENT_CACHE_DIR"])


def _entry(kind: str) -> Path:
    (path,) = _cache().glob(f"{kind}-*.safetensors")
    return path


def _train(dataset: Path, out: Path, bert: str, vit: str) -> dict:
    assert main(["train", "--data", str(dataset), "--out", str(out), *FAST, "--text-encoder", bert,
                 "--image-encoder", vit]) == 0
    return json.loads((out / "metrics.json").read_text())


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _wrong_shape(path: Path) -> None:
    """A valid safetensors file with the right key but one post too few."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name)[:-1].clone() for name in handle.keys()}
    save_file(tensors, str(path), metadata=metadata)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["text", "image"])
@pytest.mark.parametrize("damage", [_truncate, _wrong_shape], ids=["truncated", "wrong_shape"])
def test_damaged_cache_entry_is_recomputed(damage, kind, dataset, tmp_path, capsys, tiny_bert_dir, tiny_vit_dir):
    first = _train(dataset, tmp_path / "a", tiny_bert_dir, tiny_vit_dir)
    capsys.readouterr()
    entry = _entry(kind)
    damage(entry)
    second = _train(dataset, tmp_path / "b", tiny_bert_dir, tiny_vit_dir)
    out = capsys.readouterr().out
    assert f"{kind} features: cache entry {entry.name} is stale or corrupt; recomputing" in out
    other = "image" if kind == "text" else "text"
    assert f"{other} features: cache hit" in out
    assert second["folds"] == first["folds"] and second["cv"] == first["cv"]
    assert second["data"] == first["data"]
    _train(dataset, tmp_path / "c", tiny_bert_dir, tiny_vit_dir)  # the entry was rewritten whole
    assert f"{kind} features: cache hit ({entry.name})" in capsys.readouterr().out


@pytest.fixture
def text_setup(dataset, tiny_bert_dir):
    tower = create_text_tower(TextEncoderConfig(name=tiny_bert_dir, max_length=16))
    split = open_data(dataset)
    return tower, split


def test_cache_validation_refuses_dtype_missing_tensor_and_key(text_setup, tmp_path):
    tower, split = text_setup
    prep = TextPrepConfig()
    tensors = load_or_compute(tower, split, prep, log=lambda *a: None)
    key = cache_key(tower, split.fingerprint(), prep)
    n = len(split.records)
    path = tmp_path / "entry.safetensors"
    save_tensors(path, tensors, metadata={"key": key})
    assert _load_valid(path, key, tower, n) is not None
    variants = {
        "other key": ({**tensors}, {"key": "0" * 64}),
        "float64": ({**tensors, "text_hidden": tensors["text_hidden"].double()}, {"key": key}),
        "missing tensor": ({"text_hidden": tensors["text_hidden"]}, {"key": key}),
        "extra tensor": ({**tensors, "x": torch.zeros(1)}, {"key": key}),
        "no metadata": ({**tensors}, None),
    }
    for name, (bad, metadata) in variants.items():
        save_tensors(path, bad, metadata=metadata)
        assert _load_valid(path, key, tower, n) is None, name
    path.write_bytes(b"\x80\x04garbage, maybe a pickle")
    assert _load_valid(path, key, tower, n) is None


# ----------------------------------------------------------------------------- interrupted writes


def test_atomic_path_failure_leaves_no_file(tmp_path):
    target = tmp_path / "sub" / "result.json"
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(target) as tmp:
            tmp.write_text('{"half": ')
            raise RuntimeError("killed mid-write")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temporary file either

    atomic_write_json(target, {"old": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"old": 1}  # the previous version is untouched
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]


def test_interrupted_cache_write_is_not_trusted(text_setup):
    tower, split = text_setup

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")  # a partial write, then the failure
        raise OSError(28, "No space left on device")

    logs = []
    with pytest.MonkeyPatch.context() as patch:  # its own patcher: the isolated cache dir stays in place
        patch.setattr(safetensors.torch, "save_file", disk_full)  # io.save_tensors imports it at call time
        first = load_or_compute(tower, split, TextPrepConfig(), log=logs.append)
    assert any("could not write the feature cache" in line for line in logs)
    assert list(_cache().iterdir()) == []  # neither the entry nor its temporary file

    logs.clear()
    second = load_or_compute(tower, split, TextPrepConfig(), log=logs.append)
    assert not any("cache hit" in line for line in logs)  # computed again, not read from a partial file
    assert all(torch.equal(first[k], second[k]) for k in first)
    logs.clear()
    load_or_compute(tower, split, TextPrepConfig(), log=logs.append)
    assert any("cache hit" in line for line in logs)


@pytest.mark.slow
def test_leftover_temporary_files_are_never_read_and_are_cleared_from_run_folders(dataset, tmp_path, tiny_bert_dir,
                                                                                  tiny_vit_dir):
    run = tmp_path / "run"
    _train(dataset, run, tiny_bert_dir, tiny_vit_dir)
    fold = run / "folds" / "fold_0"
    leftovers = [fold / ".checkpoint.safetensors.abc123.tmp", run / ".metrics.json.xyz.tmp"]
    for path in leftovers:
        path.write_bytes(b"partial")  # what a SIGKILL during an atomic write leaves behind
    assert main(["train", "--data", str(dataset), "--out", str(run), "--resume"]) == 0
    assert not any(path.exists() for path in leftovers)


def test_atomic_writes_get_the_permissions_of_the_umask(tmp_path):
    """An atomic write's file gets what open() would give under the process's umask, not mkstemp's 0600."""
    import os

    from mmsent.atomic import atomic_write_text

    for umask in (0o022, 0o077):
        previous = os.umask(umask)
        try:
            atomic_write_text(tmp_path / f"report-{umask:o}.html", "x")
        finally:
            os.umask(previous)
        assert (tmp_path / f"report-{umask:o}.html").stat().st_mode & 0o777 == 0o666 & ~umask
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def _large_photo(path: Path) -> None:
    """A 200 x 150 JPEG: more than twice the 32 px the towers below use, so JPEG draft decoding takes effect."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:150, 0:200]
    noise = np.random.default_rng(0).integers(0, 60, size=(150, 200, 3))
    rgb = np.stack([x, y, (x * y) % 256], -1) + noise  # (150, 200, 3)
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path, quality=90)


@pytest.mark.parametrize("tower_name", ["pixels", "tiny vit"])
def test_a_single_post_gets_the_pixels_and_features_of_the_cache(tower_name, dataset, tiny_vit_dir):
    import numpy as np
    from PIL import Image

    from mmsent.config import CustomConfig, ImageEncoderConfig
    from mmsent.data.images import square_rgb
    from mmsent.encoders.image import create_image_tower
    from mmsent.encoders.scratch import PixelTower

    split = open_data(dataset)
    index = 2
    image_file = dataset / "data" / f"{split.records[index].guid}.jpg"
    _large_photo(image_file)
    tower = (PixelTower(CustomConfig(image_size=32)) if tower_name == "pixels"
             else create_image_tower(ImageEncoderConfig(name=tiny_vit_dir, image_size=32)))
    cached = load_or_compute(tower, split, TextPrepConfig(), batch_size=1, workers=0, log=lambda *_: None)
    with Image.open(image_file) as opened:  # not decoded yet: decoded from its file
        singles = [tower.load(image_file), tower.load(str(image_file)), tower.load(image_file.read_bytes()),
                   tower.load(opened)]
    for pixels in singles:
        assert np.array_equal(pixels, singles[0])
        features = tower.encode_items([pixels])
        assert torch.equal(features["image_input"][0], cached["image_input"][index]) and features["image_present"].all()
    if tower_name == "pixels":  # the cache holds the pixels themselves, (3, S, S)
        assert torch.equal(cached["image_input"][index], torch.from_numpy(singles[0]).permute(2, 0, 1))
        with Image.open(image_file) as decoded:
            decoded.load()  # decoded at full size, without the JPEG draft scale: other pixels
            assert not np.array_equal(square_rgb(decoded, 32), singles[0])
