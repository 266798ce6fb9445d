"""Layers shared by the encoders and the fusions: masked mean pooling and multi-head attention.

Masks are boolean with True for real tokens, everywhere in mmsent.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .errors import ConfigError


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D), (B, T) -> (B, D): the mean over real tokens (zeros for a row without any)."""
    weights = mask.unsqueeze(-1).to(tokens.dtype)  # (B, T, 1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def pool_tokens(tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T, D), (N, T) -> the mean over real tokens as one token (N, 1, D) in ``tokens``' dtype (summed in
    float32), and its mask (N, 1), all True."""
    pooled = masked_mean(tokens.float(), mask).unsqueeze(1)  # (N, 1, D)
    return pooled.to(tokens.dtype), torch.ones(tokens.shape[0], 1, dtype=torch.bool, device=tokens.device)


# Parameter names of the from-scratch text encoder's attention before it used this module: the same tensors.
_FORMER_NAMES = {"qkv.weight": "in_proj_weight", "qkv.bias": "in_proj_bias", "out.weight": "out_proj.weight",
                 "out.bias": "out_proj.bias"}


class MultiHeadAttention(nn.Module):
    """Multi-head attention computed by ``F.scaled_dot_product_attention``; keys where ``key_mask`` is False get no
    weight.

    The parameters are laid out and named as ``nn.MultiheadAttention``'s (``in_proj_weight`` (3D, D) holding the
    query, key and value projections in that order, ``in_proj_bias`` (3D,), ``out_proj`` a D -> D linear layer), so
    the state dicts of fusions saved with ``nn.MultiheadAttention`` load unchanged; runs whose from-scratch text
    encoder saved the same tensors as ``qkv``/``out`` load too (renamed on loading).

    ``init`` draws the initial weights in the order and from the random generator that ``nn.MultiheadAttention``
    (``"multihead"``) or two ``nn.Linear`` layers, qkv and out (``"linear"``), would: a seed gives the same starting
    model as those modules.
    ``dropout`` is applied to the attention weights in training.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, init: str = "multihead"):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"the attention width {dim} must be divisible by its number of heads {heads}")
        if init not in ("multihead", "linear"):
            raise ValueError(f"init must be 'multihead' or 'linear', got {init!r}")
        self.heads, self.dropout = heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))  # rows: query, key, value projections
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.utils.skip_init(nn.Linear, dim, dim)  # initialised below, in the order ``init`` says
        self._reset_parameters(init)
        self._register_load_state_dict_pre_hook(_rename_former_parameters)

    @torch.no_grad()
    def _reset_parameters(self, init: str) -> None:
        if init == "multihead":
            self.out_proj.reset_parameters()
            nn.init.xavier_uniform_(self.in_proj_weight)
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)
        else:  # nn.Linear's own initialisation, projections first
            nn.init.kaiming_uniform_(self.in_proj_weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(self.in_proj_weight.shape[1])
            nn.init.uniform_(self.in_proj_bias, -bound, bound)
            self.out_proj.reset_parameters()

    def forward(self, queries: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """(B, Tq, D) queries attend to (B, Tk, D) context under ``key_mask`` (B, Tk) -> (B, Tq, D)."""
        b, tq, d = queries.shape
        w_q, w_kv = self.in_proj_weight.split([d, 2 * d])  # (D, D), (2D, D)
        b_q, b_kv = self.in_proj_bias.split([d, 2 * d])
        q = F.linear(queries, w_q, b_q).view(b, tq, self.heads, -1).transpose(1, 2)  # (B, H, Tq, d)
        k, v = F.linear(context, w_kv, b_kv).view(b, -1, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(  # (B, H, Tq, d); k, v: (B, H, Tk, d)
            q, k, v, attn_mask=key_mask[:, None, None, :], dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(attended.transpose(1, 2).reshape(b, tq, d))  # (B, Tq, D)


def _rename_former_parameters(state_dict, prefix, *args) -> None:
    """Load hook: ``qkv.*``/``out.*`` entries of a saved from-scratch text encoder -> the names used here."""
    for old, new in _FORMER_NAMES.items():
        if prefix + old in state_dict and prefix + new not in state_dict:
            state_dict[prefix + new] = state_dict.pop(prefix + old)
