"""The shared layers: attention on scaled_dot_product_attention equals nn.MultiheadAttention, loads its weights and
the former scratch attention's, and draws the same initial weights; one masked mean pooling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmsent.config import FusionConfig
from mmsent.fusion import CrossAttentionLayer
from mmsent.layers import MultiHeadAttention, masked_mean, pool_tokens


def _inputs(b=3, tq=5, tk=7, dim=32):
    queries, context = torch.randn(b, tq, dim), torch.randn(b, tk, dim)
    key_mask = torch.ones(b, tk, dtype=torch.bool)
    key_mask[1, 4:] = False  # padded keys
    key_mask[2, 1:] = False  # a single real key
    return queries, context, key_mask


def _reference(state: dict, dim=32, heads=4) -> nn.MultiheadAttention:
    reference = nn.MultiheadAttention(dim, heads, batch_first=True)
    reference.load_state_dict(state)
    return reference.eval()


def test_attention_equals_multihead_attention_with_the_same_weights_and_a_padding_mask():
    torch.manual_seed(0)
    ours = MultiHeadAttention(32, 4).eval()
    reference = _reference(ours.state_dict())
    queries, context, key_mask = _inputs()
    with torch.no_grad():
        expected, _ = reference(queries, context, context, key_padding_mask=~key_mask, need_weights=False)
        assert torch.allclose(ours(queries, context, key_mask), expected, atol=1e-6)
        assert torch.allclose(ours(queries, queries, torch.ones(3, 5, dtype=torch.bool)),  # self-attention
                              reference(queries, queries, queries, need_weights=False)[0], atol=1e-6)


def test_padded_keys_do_not_change_the_output():
    torch.manual_seed(0)
    attention = MultiHeadAttention(32, 4).eval()
    queries, context, key_mask = _inputs()
    changed = context.clone()
    changed[~key_mask] = torch.randn(int((~key_mask).sum()), 32) * 100
    assert torch.allclose(attention(queries, context, key_mask), attention(queries, changed, key_mask), atol=1e-5)


def test_initial_weights_are_drawn_as_the_modules_it_replaces():
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(32, 4, batch_first=True)
    after_reference = torch.rand(4)
    torch.manual_seed(0)
    ours = MultiHeadAttention(32, 4)
    assert torch.equal(torch.rand(4), after_reference)  # the same draws from the generator, in the same order
    assert all(torch.equal(value, ours.state_dict()[name]) for name, value in reference.state_dict().items())

    torch.manual_seed(0)
    qkv, out = nn.Linear(32, 96), nn.Linear(32, 32)  # the from-scratch encoder's former attention
    after_linear = torch.rand(4)
    torch.manual_seed(0)
    linear = MultiHeadAttention(32, 4, init="linear")
    assert torch.equal(torch.rand(4), after_linear)
    assert torch.equal(linear.in_proj_weight, qkv.weight) and torch.equal(linear.in_proj_bias, qkv.bias)
    assert torch.equal(linear.out_proj.weight, out.weight) and torch.equal(linear.out_proj.bias, out.bias)


def test_state_dict_keeps_multihead_attention_names_and_loads_the_former_scratch_names():
    layer = CrossAttentionLayer(FusionConfig(dim=32, heads=4, ffn_dim=64, dropout=0.0))
    names = {name for name in layer.state_dict() if name.startswith("attention.")}
    assert names == {"attention.in_proj_weight", "attention.in_proj_bias", "attention.out_proj.weight",
                     "attention.out_proj.bias"}  # fusions saved with nn.MultiheadAttention load unchanged

    torch.manual_seed(1)
    source = MultiHeadAttention(32, 4).eval()
    former = {"qkv.weight": source.in_proj_weight, "qkv.bias": source.in_proj_bias,
              "out.weight": source.out_proj.weight, "out.bias": source.out_proj.bias}  # a run saved before
    loaded = MultiHeadAttention(32, 4)
    loaded.load_state_dict({name: value.clone() for name, value in former.items()}, strict=True)
    queries, context, key_mask = _inputs()
    assert torch.equal(loaded.eval()(queries, context, key_mask), source(queries, context, key_mask))


def test_attention_dropout_acts_in_training_only():
    torch.manual_seed(0)
    attention = MultiHeadAttention(32, 4, dropout=0.5)
    queries, context, key_mask = _inputs()
    assert not torch.allclose(attention.train()(queries, context, key_mask),
                              attention.eval()(queries, context, key_mask))
    assert torch.equal(attention(queries, context, key_mask), attention(queries, context, key_mask))


def test_width_not_divisible_by_heads_is_refused():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(30, 4)


def test_pooling_is_the_mean_over_real_tokens():
    tokens = torch.arange(24, dtype=torch.float32).view(2, 3, 4)  # (B, T, D)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert torch.equal(masked_mean(tokens, mask), torch.stack([tokens[0, :2].mean(0), tokens[1, 0]]))
    pooled, pooled_mask = pool_tokens(tokens.half(), mask)
    assert pooled.shape == (2, 1, 4) and pooled.dtype == torch.float16 and pooled_mask.all()
    assert torch.equal(pooled[:, 0], masked_mean(tokens, mask).half())
