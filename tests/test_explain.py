"""Explanations (mmsent.explain): shapes and word coverage over every encoder x fusion and the from-scratch family,
what is said where an attribution cannot be computed, the CLI / HTTP surfaces, and a planted word that decides the
label ranked first by a trained run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmsent.config import LABELS, RunConfig, TextPrepConfig
from mmsent.errors import InputError
from mmsent.explain import cleaned_char_to_word, merge_pieces, words_of
from mmsent.model import MultimodalClassifier, build_towers
from mmsent.predict import LoadedEnsemble, LoadedRun
from mmsent.registry import FUSIONS, IMAGE_ENCODERS, MODEL_FAMILIES, TEXT_ENCODERS

from helpers import TINY_IMAGE, TINY_TEXT, encoder_params


TEXT = "RT @friend: What a #LegDay 😀 at http://t.co/x today!!  great"


def _image(path: Path, size=(80, 50)) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _run(config: RunConfig, folds: int = 2) -> LoadedRun:
    towers = build_towers(config)
    towers.use_backend("torch", torch.device("cpu"), log=lambda m: None)
    models = []
    for seed in range(folds):
        torch.manual_seed(seed)
        models.append(MultimodalClassifier(config, towers).eval())
    return LoadedRun(config, towers, models, torch.device("cpu"), temperature=1.3)


def _small(config: RunConfig, fusion: str = "cross_attention") -> RunConfig:
    config.fusion.name, config.fusion.dim, config.fusion.ffn_dim = fusion, 16, 32
    config.text.max_length = config.custom.max_length = 24
    config.image.image_size = config.custom.image_size = 32
    config.custom.dim, config.custom.ffn_dim, config.custom.layers, config.custom.widths = 32, 64, 1, [8, 16, 16, 16]
    return config


def _check(explanation, text: str, image: Path | None, grid: tuple[int, int] | None):
    assert [w["word"] for w in explanation.words] == text.split()  # every word once, in order
    assert all(np.isfinite(w["score"]) for w in explanation.words)
    assert any(w["read"] and w["score"] != 0 for w in explanation.words)
    if image is not None:
        width, height = Image.open(image).size
        assert explanation.image is not None, explanation.unavailable
        assert np.asarray(explanation.image.grid).shape == grid
        heat = explanation.image.heatmap()
        assert heat.shape == (height, width) and np.isfinite(heat).all()
        left, top, side = explanation.image.crop
        assert (left, top, side) == ((width - height) / 2, 0, height)
        assert not heat[:, : int(left)].any() and heat[:, int(left) + 1: int(left + side) - 1].any()
        shares = explanation.modality_shares
        assert shares["text"] + shares["image"] == pytest.approx(1.0, abs=1e-5)
    json.dumps(explanation.to_dict())


def _grid(name: str) -> tuple[int, int]:
    return (4, 4) if name == TINY_IMAGE else (1, 1)  # the tiny ViT: 32 px / 8 px patches; Lite at 32 px: 1 cell


@pytest.mark.slow
@pytest.mark.parametrize("fusion", FUSIONS.names())
@pytest.mark.parametrize("text_name", encoder_params(TEXT_ENCODERS, TINY_TEXT))
@pytest.mark.parametrize("image_name", encoder_params(IMAGE_ENCODERS, TINY_IMAGE))
def test_every_encoder_and_fusion_explains(fusion, text_name, image_name, tmp_path, tiny_bert_dir, tiny_vit_dir):
    config = _small(RunConfig(), fusion)
    config.text.name = tiny_bert_dir if text_name == TINY_TEXT else text_name
    config.image.name = tiny_vit_dir if image_name == TINY_IMAGE else image_name
    run = _run(config)
    image = _image(tmp_path / "post.png")
    _check(run.explain(text=TEXT, image=image), TEXT, image, _grid(image_name))


@pytest.mark.parametrize("fusion", FUSIONS.names())
@pytest.mark.parametrize("family", MODEL_FAMILIES.names())
def test_every_family_explains(family, fusion, tmp_path, tiny_bert_dir, tiny_vit_dir):
    config = _small(RunConfig(model=family), fusion)
    if family == "pretrained":
        config.text.name, config.image.name = tiny_bert_dir, tiny_vit_dir
    run = _run(config)
    image = _image(tmp_path / "post.png")
    explanation = run.explain(text=TEXT, image=image)
    _check(explanation, TEXT, image, (4, 4) if family == "pretrained" else (2, 2))  # custom: 32 px / 16 = 2x2
    again = run.explain(text=TEXT, image=image)
    assert again.to_dict() == explanation.to_dict()  # deterministic


@pytest.mark.parametrize("loss", ["cross_entropy", "focal"])
def test_the_explained_function_is_the_one_that_predicts(loss, tmp_path, monkeypatch, tiny_bert_dir,
                                                        tiny_vit_dir):
    """A one-fold run with a temperature: the function integrated gradients differentiates gives, at the post,
    predict's probabilities (a focal-loss run's renormalised sigmoids, not a softmax, then the temperature)."""
    import captum.attr

    config = _small(RunConfig())
    config.text.name, config.image.name, config.train.loss = tiny_bert_dir, tiny_vit_dir, loss
    run = _run(config, folds=1)
    at_post = []

    class Recording(captum.attr.IntegratedGradients):
        def attribute(self, inputs, *args, **kwargs):
            at_post.append(self.forward_func(*inputs).detach().numpy()[0])
            return super().attribute(inputs, *args, **kwargs)

    monkeypatch.setattr(captum.attr, "IntegratedGradients", Recording)
    image = _image(tmp_path / "post.png")
    explained = run.explain(text=TEXT, image=image).probabilities
    predicted = run.predict(text=TEXT, image=image).probabilities
    assert list(explained) == list(predicted)
    np.testing.assert_allclose(list(explained.values()), list(predicted.values()), atol=1e-5)
    assert len(at_post) == 1
    np.testing.assert_allclose(at_post[0], list(predicted.values()), atol=1e-5)


def test_one_modality_and_missing_parts_say_why(tmp_path, tiny_bert_dir, tiny_vit_dir):
    image = _image(tmp_path / "post.png")
    config = _small(RunConfig())
    config.text.name, config.image.name = tiny_bert_dir, tiny_vit_dir
    run = _run(config)
    text_only = run.explain(text="great day")
    assert text_only.image is None and text_only.unavailable["image"] == "the post has no image"
    assert text_only.to_dict()["unavailable"]["modality_shares"].startswith("not available: ")
    image_only = run.explain(image=image)
    assert image_only.words is None and "no text" in image_only.unavailable["words"]
    assert np.asarray(image_only.image.grid).shape == (4, 4)
    config = _small(RunConfig(modality="text"))
    config.text.name = tiny_bert_dir
    text_run = _run(config)
    explanation = text_run.explain(text="great day", image=image)
    assert [w["word"] for w in explanation.words] == ["great", "day"]
    assert "texts only" in explanation.unavailable["image"] and "text only" in explanation.unavailable["modality_shares"]
    with pytest.raises(InputError):
        run.explain(text="  ")
    with pytest.raises(InputError, match="steps"):
        run.explain(text="great day", steps=0)


def test_pooled_features_say_not_available(tmp_path, tiny_bert_dir, tiny_vit_dir):
    config = _small(RunConfig(), "concat")
    config.text.name, config.image.name = tiny_bert_dir, tiny_vit_dir
    config.text.pooled = config.image.pooled = True
    explanation = _run(config).explain(text="great day", image=_image(tmp_path / "post.png"))
    assert explanation.words is None and explanation.image is None
    out = explanation.to_dict()["unavailable"]
    assert out["words"].startswith("not available: ") and "mean-pooled" in out["words"]
    assert out["image"].startswith("not available: ") and "mean-pooled" in out["image"]
    assert explanation.modality_shares is not None  # replacing a modality still works on pooled features


def test_ensemble_of_runs_says_not_available(tiny_bert_dir):
    config = _small(RunConfig(modality="text"))
    config.text.name = tiny_bert_dir
    ensemble = LoadedEnsemble([_run(config), _run(config)])
    with pytest.raises(InputError, match="one run"):
        ensemble.explain(text="great day")


@pytest.mark.parametrize("prep", [TextPrepConfig(), TextPrepConfig(split_hashtags=True, placeholders=True),
                                  TextPrepConfig(remove_stopwords=True, lowercase=False)])
def test_pieces_merge_back_to_original_words(prep, tiny_bert_dir):
    from mmsent.encoders.text import TokenIds

    tokenizer = TokenIds(tiny_bert_dir, 64, None)
    cleaned, owner = cleaned_char_to_word(TEXT, prep)
    offsets = tokenizer.offsets(cleaned)
    scores = np.arange(1, len(offsets) + 1, dtype=float)
    words = merge_pieces(TEXT, prep, offsets, scores)
    assert [w["word"] for w in words] == TEXT.split()
    read = {w["word"]: w["read"] for w in words}
    assert not read["RT"]  # removed by the cleaning
    assert read["@friend:"] == read["http://t.co/x"] == prep.placeholders  # removed, or replaced by 'user' / 'url'
    assert read["#LegDay"] and read["😀"] and read["today!!"] and read["great"]
    total = sum(s for s, span in zip(scores, offsets) if span is not None)
    assert sum(w["score"] for w in words) == pytest.approx(total)  # every piece counted once
    assert words_of("  a\tb \n c ") == [(2, 3), (4, 5), (8, 9)]


def test_cli_explain_and_report_error_analysis(tmp_path, capsys, monkeypatch, tiny_bert_dir, tiny_vit_dir):
    """`mmsent predict --explain` on a run folder (trained for one epoch): JSON and the plain-text form; `mmsent
    report --data` adds the run's error analysis."""
    from helpers import train_fast, write_dataset
    from mmsent.cli import main

    data = write_dataset(tmp_path / "mvsa", n_train=12, n_test=2)
    run = tmp_path / "run"
    train_fast(data, run, **{"text.name": tiny_bert_dir, "image.name": tiny_vit_dir, "image.image_size": 32})
    capsys.readouterr()
    image = _image(tmp_path / "post.png")
    assert main(["predict", "--run", str(run), "--explain", "--json", "--text", "great #day 😀", "--image",
                 str(image)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [w["word"] for w in out["words"]] == ["great", "#day", "😀"]
    assert np.asarray(out["image"]["grid"]).shape == (4, 4) and out["label"] in LABELS
    assert main(["predict", "--run", str(run), "--explain", "--text", "great day", "--image", str(image),
                 "--heatmap", str(tmp_path / "heat.png")]) == 0
    printed = capsys.readouterr().out
    assert "great(" in printed and "modalities: text" in printed and "\033[" not in printed  # not a terminal
    assert Image.open(tmp_path / "heat.png").size == (80, 50)
    assert main(["predict", "--run", str(run), "--text", "x", "--heatmap", str(tmp_path / "h.png")]) == 2
    assert "--heatmap needs --explain" in capsys.readouterr().err

    # the report's error analysis: mistakes explained by the fold that held them out, words per class
    assert main(["report", "--out", str(tmp_path / "rep"), "--data", str(data), "--explain-posts", "0", str(run)]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "## run run: error analysis" in md and "Words pushing toward each predicted class, over 12" in md
    oof = [line.split(",") for line in (run / "oof_predictions.csv").read_text().splitlines()[1:]]
    pairs = {}
    for row in oof:
        predicted = LABELS[int(np.argmax([float(x) for x in row[2:]]))]
        if predicted != row[1]:
            pairs[(row[1], predicted)] = pairs.get((row[1], predicted), 0) + 1
    shown = sum(min(3, n) for n in pairs.values())  # the 3 most confident mistakes of each confusion pair
    assert shown and md.count("modality shares: text") == shown
    assert len(list((tmp_path / "rep" / "figures").glob("mistake_*.png"))) == shown
    assert page.count("data:image/png;base64") >= shown
    other = write_dataset(tmp_path / "other", n_train=9, n_test=2, seed=3)
    assert main(["report", "--out", str(tmp_path / "rep2"), "--data", str(other), str(run)]) == 0
    assert "Error analysis not available: " in (tmp_path / "rep2" / "report.md").read_text()
    assert main(["report", "--out", str(tmp_path / "rep3"), "--data", str(tmp_path), str(run)]) == 2


@pytest.mark.slow
def test_planted_word_ranks_first(tmp_path, capsys):
    """Generated posts whose label only one planted word decides (fillers and images carry nothing): a run
    trained on them (the default encoders) must give that word the largest score toward the label."""
    from mmsent import load_run
    from mmsent.cli import main

    planted = {"negative": "zebra", "neutral": "violin", "positive": "quartz"}
    fillers = ["table", "window", "river", "paper", "garden", "yellow", "seven", "train", "cloud", "stone", "music",
               "lamp", "coffee", "street", "chair", "bottle"]
    rng = random.Random(0)
    root = tmp_path / "mvsa"
    (root / "data").mkdir(parents=True)
    rows = ["guid,tag"]

    def post(label: str) -> str:
        words = rng.sample(fillers, 5)
        words.insert(rng.randrange(6), planted[label])
        return " ".join(words)

    for i in range(90):
        label = LABELS[i % 3]
        (root / "data" / f"{i}.txt").write_text(post(label))
        noise = np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(noise).save(root / "data" / f"{i}.jpg")
        rows.append(f"{i},{label}")
    (root / "train.txt").write_text("\n".join(rows) + "\n")
    (root / "test_without_label.txt").write_text("guid,tag\n0,null\n")
    run = tmp_path / "run"
    assert main(["train", "--data", str(root), "--out", str(run), "--folds", "2", "--epochs", "8", "--workers", "0",
                 "--set", "image.image_size=64"]) == 0
    capsys.readouterr()
    model = load_run(run, device="cpu")
    image = tmp_path / "post.jpg"
    Image.fromarray(np.random.default_rng(99).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(image)
    for label in LABELS:
        for _ in range(2):
            text = post(label)
            explanation = model.explain(text=text, image=image)
            assert explanation.label == label, (text, explanation.probabilities)
            best = max(explanation.words, key=lambda w: w["score"])
            assert best["word"] == planted[label], (text, explanation.words)
