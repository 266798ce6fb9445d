"""The model's extra inputs and the decision rule: the text read inside images (OCR, cached by content), the whole
image padded to a square, lexicon scores, and the macro-F1 decision rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from mmsent.config import OcrConfig, RunConfig, TextEncoderConfig, TextPrepConfig
from mmsent.data.dataset import open_data
from mmsent.data.images import FITS, PAD_COLOUR, load_image
from mmsent.decision import decide, fit_decision, fit_offsets
from mmsent.encoders.image_text import ImageTextTower
from mmsent.encoders.lexicon import LexiconTower
from mmsent.explain import ImageMap, centre_crop
from mmsent.lexicon import SCORES, emoji_scores, lexicon_scores_of_raw
from mmsent.model import MultimodalClassifier, Towers
from mmsent.registry import FUSIONS

from helpers import train_run, write_dataset

ocr = pytest.importorskip("rapidocr_onnxruntime", reason="the OCR tests need rapidocr-onnxruntime")


def text_image(words: str, size=(560, 160)) -> Image.Image:
    """Black words on a white image, large enough to be read back."""
    image = Image.new("RGB", size, "white")
    font = ImageFont.load_default(size=56)
    ImageDraw.Draw(image).text((20, 40), words, fill="black", font=font)
    return image


def jpeg_bytes(image: Image.Image) -> bytes:
    import io

    out = io.BytesIO()
    image.save(out, format="JPEG", quality=92)
    return out.getvalue()


# ------------------------------------------------------------------------------------------ reading text in images

def test_ocr_reads_back_text_drawn_with_pillow(tmp_path):
    from mmsent.ocr import OcrCache

    text = OcrCache(OcrConfig(enabled=True)).text_of(jpeg_bytes(text_image("HAPPY DAY")))
    assert "HAPPY" in text.upper().replace(" ", "") and "DAY" in text.upper()


def test_ocr_cache_is_keyed_by_content_and_reused(tmp_path, monkeypatch):
    import mmsent.ocr as ocr_module

    cache = ocr_module.OcrCache(OcrConfig(enabled=True))
    raw = jpeg_bytes(text_image("GOOD NEWS"))
    first = cache.text_of(raw)
    files = list(cache.folder.rglob("*.json"))
    assert len(files) == 1 and files[0].stem == __import__("hashlib").sha256(raw).hexdigest()

    def no_reading(*args, **kwargs):
        raise AssertionError("read again although cached")

    monkeypatch.setattr(ocr_module, "read_image_bytes", no_reading)
    assert cache.text_of(raw) == first  # from the cache
    assert cache.texts_of([raw, None, raw]) == [first, "", first]
    other = ocr_module.OcrCache(OcrConfig(enabled=True, max_boxes=3))  # other settings: another cache folder
    assert other.folder != cache.folder


def test_blank_and_unreadable_images_give_no_text():
    from mmsent.ocr import OcrCache

    cache = OcrCache(OcrConfig(enabled=True))
    assert cache.text_of(jpeg_bytes(Image.new("RGB", (300, 200), (90, 160, 220)))) == ""
    assert cache.text_of(b"not an image") == ""


def test_split_texts_follow_the_posts(tmp_path):
    from mmsent.ocr import split_image_texts

    data = write_dataset(tmp_path / "d", n_train=6, n_test=0)
    text_image("SAD NEWS").save(data / "data" / "1001.jpg", quality=92)
    (data / "data" / "1002.jpg").unlink()  # a post without its image
    split = open_data(data, "train")
    texts = split_image_texts(split, OcrConfig(enabled=True), workers=1)
    assert len(texts) == 6 and "SAD" in texts[1].upper() and texts[2] == ""
    assert not any(texts[i] for i in (0, 3, 4, 5))


# ------------------------------------------------------------------------------------------ the model's inputs

@pytest.fixture(scope="module")
def text_tower(tiny_bert_dir):
    from mmsent.encoders.text import create_text_tower

    return create_text_tower(TextEncoderConfig(name=tiny_bert_dir, max_length=16))


def _features(text_tower, texts, image_texts, lexicon_texts=None):
    image_text = ImageTextTower(text_tower, OcrConfig(enabled=True), TextPrepConfig())
    features = dict(text_tower.encode_items(texts))
    features.update(image_text.encode_items(image_texts))
    if lexicon_texts is not None:
        features.update(LexiconTower().encode_items(lexicon_texts))
    return image_text, features


@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_image_text_joins_every_fusion_and_an_empty_one_changes_nothing(fusion, text_tower):
    image_text, features = _features(text_tower, ["love this", "sad day", "photo"], ["great", "", ""])
    config = RunConfig(modality="text")  # text tokens only: the image text joins them in every modality path
    config.fusion.name, config.fusion.dim, config.fusion.ffn_dim = fusion, 16, 32
    torch.manual_seed(0)
    model = MultimodalClassifier(config, Towers(text=text_tower, image=None, image_text=image_text)).eval()
    with torch.no_grad():
        encoded = model.encoder_outputs(features)
        with_read = model.forward_from_encoded(encoded["text"], None, encoded["image_text"])
        without = model.forward_from_encoded(encoded["text"], None, None)
    assert torch.allclose(with_read[1:], without[1:], atol=1e-6), "an image without text must change nothing"
    assert not torch.allclose(with_read[0], without[0], atol=1e-4), "the text read in the image is not used"


@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_all_inputs_through_every_fusion_train(fusion, text_tower, tiny_vit_dir, dataset):
    from mmsent.config import ImageEncoderConfig
    from mmsent.encoders.image import create_image_tower

    image = create_image_tower(ImageEncoderConfig(name=tiny_vit_dir, image_size=32))
    image_text, features = _features(text_tower, ["love", "hate", "meh", "ok"], ["yes", "", "no way", ""],
                                     ["love 😀", "hate 😠", None, "ok"])
    pixels = [np.full((32, 32, 3), c, dtype=np.uint8) for c in (10, 90, 170, 250)]
    features.update(image.encode_items(pixels))
    config = RunConfig()
    config.fusion.name, config.fusion.dim, config.fusion.ffn_dim = fusion, 16, 32
    towers = Towers(text=text_tower, image=image, image_text=image_text, lexicon=LexiconTower())
    model = MultimodalClassifier(config, towers)
    logits = model(features)
    assert logits.shape == (4, 3) and torch.isfinite(logits).all()
    logits.sum().backward()
    for name in ("image_text_segment", "lexicon_proj.0.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_lexicon_scores_point_the_right_way():
    scores = lexicon_scores_of_raw(["I love this, wonderful!", "I hate this, awful.", None, "😂😂 🎉", "😡"])
    assert scores.shape == (5, len(SCORES))
    compound, emoji_score, emoji_count = (SCORES.index(k) for k in ("compound", "emoji_score", "emoji_count"))
    assert scores[0, compound] > 0.5 > -0.5 > scores[1, compound]
    assert scores[2].tolist() == [0.0] * len(SCORES)
    assert scores[3, emoji_score] > 0 > scores[4, emoji_score]
    assert scores[3, emoji_count] > scores[4, emoji_count] > 0
    assert emoji_scores(["no emoji here"]).tolist() == [[0.0] * 5]


# ------------------------------------------------------------------------------------------ the whole image

def _two_colour_wide_image() -> Image.Image:
    pixels = np.zeros((100, 400, 3), dtype=np.uint8)
    pixels[:, :100] = (255, 0, 0)  # red left quarter
    pixels[:, 100:300] = (0, 255, 0)
    pixels[:, 300:] = (0, 0, 255)  # blue right quarter
    return Image.fromarray(pixels)


def test_pad_keeps_the_whole_image_where_crop_cuts_its_sides():
    image = _two_colour_wide_image()
    cropped, padded = load_image(image, 64, "crop"), load_image(image, 64, "pad")
    assert cropped.shape == padded.shape == (64, 64, 3)
    red = lambda a: ((a[..., 0] > 200) & (a[..., 1] < 60)).sum()  # noqa: E731
    assert red(cropped) == 0 and red(padded) > 0  # the crop lost the left quarter; the padded square keeps it
    assert tuple(padded[0, 32]) == PAD_COLOUR and tuple(padded[32, 32]) != PAD_COLOUR
    assert FITS == tuple(RunConfig().image.__dataclass_fields__["fit"].metadata["choices"])


def test_heat_map_of_a_padded_image_covers_the_whole_image():
    left, top, side = centre_crop(400, 100, "pad")
    assert (left, top, side) == (0.0, -150.0, 400.0)
    heat = ImageMap([[1.0, 1.0], [1.0, 1.0]], (left, top, side), 400, 100).heatmap()
    assert heat.shape == (100, 400) and (heat > 0).all()
    crop = ImageMap([[1.0]], centre_crop(400, 100), 400, 100).heatmap()
    assert crop[:, :100].sum() == 0 and (crop[:, 150:250] > 0).all()


# ------------------------------------------------------------------------------------------ the decision rule

def _neutral_underpredicted(n=600, seed=0):
    """Probabilities of a model that rarely says 'neutral' (class 1) though it ranks neutral posts higher."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=n, p=[0.3, 0.15, 0.55])
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), labels] += 1.6
    logits[:, 1] -= 1.2  # neutral is under-predicted
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs, labels


def test_macro_f1_rule_raises_macro_f1_and_changes_labels_only_where_it_should():
    from mmsent.metrics import classification_metrics

    probs, labels = _neutral_underpredicted()
    offsets = fit_offsets(probs, labels, "macro_f1")
    assert offsets[0] == 0 and offsets[1] > 0  # neutral gets a push
    before = classification_metrics(labels, probs.argmax(1), 3)["macro_f1"]
    after = classification_metrics(labels, decide(probs, offsets), 3)["macro_f1"]
    assert after > before + 0.02
    changed = decide(probs, offsets) != probs.argmax(1)
    log_p = np.log(probs)
    margin = log_p.max(1) - np.sort(log_p, 1)[:, -2]
    assert changed.any() and (margin[changed] <= np.max(np.abs(offsets)) + 1e-9).all()
    assert (decide(probs, [0, 0, 0]) == probs.argmax(1)).all()
    assert fit_offsets(probs, labels, "accuracy") == [0.0, 0.0, 0.0]


def test_decision_figures_are_cross_fitted():
    probs, labels = _neutral_underpredicted()
    fold_of = np.arange(len(labels)) % 5
    rule = fit_decision(probs, labels, fold_of, "macro_f1", ("negative", "neutral", "positive"))
    assert len(rule.fold_offsets) == 5 and rule.cross_fitted["macro_f1"] > rule.argmax["macro_f1"]
    for fold, offsets in enumerate(rule.fold_offsets):  # each fold's offsets come from the other folds only
        held = fold_of == fold
        assert offsets == [round(v, 4) for v in fit_offsets(probs[~held], labels[~held], "macro_f1")]


@pytest.mark.slow
def test_train_with_decision_rule_and_predict_apply_it(tmp_path, dataset):
    from mmsent.cli import main
    from mmsent.predict import load_run_folder

    run = tmp_path / "run"
    metrics = train_run(dataset, run, "--decision", "macro_f1", "--lexicon")
    rule = json.loads((run / "decision.json").read_text())
    assert metrics["decision"]["offsets"] == rule["offsets"] and rule["rule"] == "macro_f1"
    # a rule that always picks 'neutral': every prediction path labels by it
    rule["offsets"] = [0.0, 50.0, 0.0]
    (run / "decision.json").write_text(json.dumps(rule))
    out = tmp_path / "p.txt"
    assert main(["predict", "--run", str(run), "--data", str(dataset), "--out", str(out)]) == 0
    assert {line.split(",")[1] for line in out.read_text().split()[1:]} == {"neutral"}
    with load_run_folder(run) as model:
        assert model.predict(text="love great happy").label == "neutral"
    assert main(["decide", "--run", str(run), "--rule", "accuracy"]) == 0
    assert not (run / "decision.json").exists()
    with load_run_folder(run) as model:
        result = model.predict(text="love great happy")
        assert result.label == max(result.probabilities, key=result.probabilities.get)


@pytest.mark.slow
def test_ocr_run_end_to_end_shows_the_text_it_read(tmp_path, capsys):
    from mmsent.cli import main
    from mmsent.predict import load_run_folder

    data = write_dataset(tmp_path / "d", n_train=12, n_test=3)
    text_image("SAD NEWS").save(data / "data" / "1002.jpg", quality=92)
    assert main(["check", "--data", str(data), "--ocr"]) == 0
    assert "train images with text: 1 of 12" in capsys.readouterr().out
    run = tmp_path / "run"
    metrics = train_run(data, run, "--ocr", "--folds", "2")
    assert json.loads((run / "config.json").read_text())["ocr"]["enabled"] is True
    assert metrics["cv"]["accuracy_mean"] >= 0
    capsys.readouterr()
    image = data / "data" / "1002.jpg"
    assert main(["predict", "--run", str(run), "--text", "hello", "--image", str(image), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert "SAD" in answer["image_text"].upper()
    with load_run_folder(run) as model:
        assert model.predict(text="hello").image_text is None  # no image, nothing read
        assert model.predict(text="hello", image=data / "data" / "1000.jpg").image_text == ""
        why = model.explain(text="hello", image=image).to_dict()
        assert "SAD" in why["image_text"].upper()


def test_image_text_of_a_path_bytes_and_an_in_memory_image_agree(tmp_path, text_tower):
    tower = ImageTextTower(text_tower, OcrConfig(enabled=True), TextPrepConfig())
    image = text_image("BIG SMILE")
    path = tmp_path / "post.png"
    image.save(path)
    read = tower.read(path)
    assert "SMILE" in read.upper()
    assert tower.read(path.read_bytes()) == read == tower.read(image) == tower.read(Image.open(path))
    assert tower.read(None) == "" and tower.read(tmp_path / "missing.jpg") == ""


def test_the_same_image_twice_is_read_once(monkeypatch):
    import mmsent.ocr as ocr_module

    calls = []
    monkeypatch.setattr(ocr_module, "read_image_bytes", lambda raw, config, threads=1: calls.append(raw) or "TEXT")
    first, second = jpeg_bytes(text_image("ONE")), jpeg_bytes(text_image("TWO"))
    texts = ocr_module.OcrCache(OcrConfig(enabled=True)).texts_of([first, second, None, first], workers=1)
    assert texts == ["TEXT", "TEXT", "", "TEXT"] and sorted(calls) == sorted([first, second])
