"""MultimodalClassifier: trainable encoder parts + projections + fusion + head, with a modality switch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import MODALITIES, RunConfig, check_config, run_labels  # noqa: F401 (MODALITIES: imported from here)
from .errors import ConfigError
from .encoders.base import Tower, TrainableEncoder
from .fusion import create_fusion
from .layers import masked_mean
from .registry import MODEL_FAMILIES


@dataclass
class Towers:
    """The loaded encoders a run uses (None where the modality leaves one out)."""

    text: Tower | None
    image: Tower | None
    image_text: Tower | None = None  # the text read from each image (ocr.enabled), encoded by ``text``
    lexicon: Tower | None = None  # lexicon scores of each text (lexicon.enabled)

    def present(self) -> list[Tower]:
        return [t for t in (self.text, self.image, self.image_text, self.lexicon) if t is not None]

    @property
    def modalities(self) -> list[str]:
        """What the posts must give: ["text", "image"] or one of them (the text in an image comes with it)."""
        return [t.kind for t in (self.text, self.image) if t is not None]

    def to(self, device: torch.device) -> "Towers":
        """Run the frozen parts of both encoders on ``device``."""
        for tower in self.present():
            tower.to(device)
        return self

    def use_backend(self, requested: str, device: torch.device, log=print, precision: str = "f32") -> "Towers":
        """Run the frozen parts with ``train.backend`` (auto, torch or a graph runtime; see :mod:`.encoders.runtime`)
        at ``train.inference_precision``.

        ``auto`` tries the installed graph runtimes in order of preference, then torch, telling which one failed for
        an encoder that cannot be exported or loaded; an explicit graph runtime that fails raises instead.
        """
        from .encoders.runtime import BackendError, backend_candidates

        candidates = backend_candidates(requested, device, precision)
        for tower in self.present():
            for backend in candidates:
                try:
                    tower.use_backend(backend, log, precision)
                    break
                except BackendError:
                    raise
                except Exception as error:  # exporters and runtimes fail in many ways on models they cannot handle
                    if requested != "auto":
                        raise BackendError(f"cannot run the frozen {tower.kind} encoder with {backend} "
                                           f"({type(error).__name__}: {error}); use --backend torch") from None
                    log(f"{tower.kind} encoder: {backend} failed ({type(error).__name__}: {error}); trying "
                        f"{candidates[candidates.index(backend) + 1]}")
        return self


@MODEL_FAMILIES.register("pretrained", config=RunConfig)
def pretrained_family(config: RunConfig) -> Towers:
    """Pretrained encoders: ``text.name`` and ``image.name`` (packaged weights, or any Hugging Face model)."""
    from .encoders.image import create_image_tower
    from .encoders.image_text import ImageTextTower
    from .encoders.lexicon import LexiconTower
    from .encoders.text import create_text_tower

    if config.ocr.enabled and config.modality != "all":
        raise ConfigError(f"ocr.enabled reads the text in images as a second text: it needs --modality all, not "
                          f"{config.modality}")
    text = create_text_tower(config.text) if config.modality in ("all", "text") else None
    return Towers(
        text=text,
        image=create_image_tower(config.image) if config.modality in ("all", "image") else None,
        image_text=ImageTextTower(text, config.ocr, config.text_prep) if config.ocr.enabled else None,
        lexicon=LexiconTower() if config.lexicon.enabled and text is not None else None,
    )


# For this family the three fusions measured within noise of each other and bi_cross_attention had the best cell;
# trained from random initialisation on a few thousand posts, it gains from regularisation (an EMA of the weights,
# label smoothing, weight decay). The measurements: benchmarks/README.md.
CUSTOM_DEFAULTS = {"fusion.name": "bi_cross_attention", "train.ema_decay": 0.99, "train.label_smoothing": 0.1,
                   "train.weight_decay": 0.1, "lexicon.enabled": False}


@MODEL_FAMILIES.register("custom", config=RunConfig, defaults=CUSTOM_DEFAULTS)
def custom_family(config: RunConfig) -> Towers:
    """From scratch: a ResNet on cached pixels and a Transformer on WordPiece ids (``custom.*`` settings).

    Its defaults differ from the pretrained family's: bi_cross_attention fusion, an EMA of the weights (decay 0.99),
    label smoothing 0.1, weight decay 0.1 and no lexicon scores (family defaults: flags and ``--set`` still
    override them)."""
    from .encoders.lexicon import LexiconTower
    from .encoders.scratch import PixelTower, WordPieceTower

    if config.ocr.enabled:
        raise ConfigError("ocr.enabled is available for the pretrained family (--model pretrained)")
    text = WordPieceTower(config.custom) if config.modality in ("all", "text") else None
    return Towers(
        text=text,
        image=PixelTower(config.custom) if config.modality in ("all", "image") else None,
        lexicon=LexiconTower() if config.lexicon.enabled and text is not None else None,
    )


def load_towers(config: RunConfig, device: torch.device, log=print) -> Towers:
    """The run's encoders, their frozen parts on ``device`` and run by ``config.train.backend``."""
    return build_towers(config).to(device).use_backend(config.train.backend, device, log,
                                                       config.train.inference_precision)


def build_towers(config: RunConfig) -> Towers:
    check_config(config)  # a config built in Python has not been through apply_overrides
    return MODEL_FAMILIES.create(config.model, config)


class MultimodalClassifier(nn.Module):
    """Logits over the run's classes (``config.run_labels``) from a batch of cached encoder features.

    With ``modality == "all"`` the two token streams are fused; with one modality its tokens are mean-pooled.
    A post whose image could not be read gets a learned "missing image" token instead.
    """

    def __init__(self, config: RunConfig, towers: Towers):
        super().__init__()
        fusion_cfg = config.fusion
        dim = fusion_cfg.dim
        self.modality = config.modality
        self.n_classes = len(run_labels(config))
        self.text_encoder: TrainableEncoder | None = towers.text.make_trainable() if towers.text else None
        self.image_encoder: TrainableEncoder | None = towers.image.make_trainable() if towers.image else None
        if self.text_encoder is not None:
            self.text_proj = nn.Sequential(nn.Linear(self.text_encoder.out_dim, dim), nn.LayerNorm(dim))
        if self.image_encoder is not None:
            self.image_proj = nn.Sequential(nn.Linear(self.image_encoder.out_dim, dim), nn.LayerNorm(dim))
            self.missing_image = nn.Parameter(torch.zeros(1, 1, dim))
        if towers.image_text is not None:  # the text in the image: the text path plus a segment embedding
            self.image_text_segment = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        if self.modality == "all":
            self.fusion = create_fusion(fusion_cfg)
            fused_dim = self.fusion.out_dim
        else:
            self.fusion = None
            fused_dim = dim
        if towers.lexicon is not None:  # lexicon scores join the fused representation
            self.lexicon_proj = nn.Sequential(nn.Linear(towers.lexicon.out_dim, dim), nn.GELU())
            fused_dim += dim
        self.head = nn.Sequential(
            nn.Dropout(fusion_cfg.dropout), nn.Linear(fused_dim, dim), nn.GELU(), nn.Dropout(fusion_cfg.dropout),
            nn.Linear(dim, self.n_classes),
        )

    def encoder_parameter_groups(self) -> list[tuple[int, list[nn.Parameter]]]:
        """Trainable parameters of pretrained encoders, layer by layer: (depth below the encoder's top layer,
        parameters). They learn at ``train.encoder_lr * train.layer_lr_decay ** depth``; the rest at ``train.lr``."""
        encoders = [e for e in (self.text_encoder, self.image_encoder) if e is not None and e.pretrained]
        groups = []
        for encoder in encoders:
            for depth, layer in enumerate(encoder.layers_top_first()):
                trainable = [p for p in layer if p.requires_grad]
                if trainable:
                    groups.append((depth, trainable))
        return groups

    def encoder_outputs(self, features: dict[str, torch.Tensor]) -> dict[str, tuple | None]:
        """The encoders' token features before projection: {"text": (tokens (B, Tt, Dt), mask) or None,
        "image": (tokens (B, Ti, Di), mask, present (B,)) or None, "image_text": (tokens (B, To, Dt), mask) or
        None}. Attributions are taken with respect to these."""
        text = image = image_text = None
        if self.text_encoder is not None:
            text = self.text_encoder(features)
            if "ocr_hidden" in features and hasattr(self, "image_text_segment"):
                image_text = self.text_encoder({"text_hidden": features["ocr_hidden"],
                                                "text_mask": features["ocr_mask"]})
        if self.image_encoder is not None:
            image = (*self.image_encoder(features), features["image_present"])
        lexicon = features["lexicon"].float() if hasattr(self, "lexicon_proj") else None  # (B, K)
        return {"text": text, "image": image, "image_text": image_text, "lexicon": lexicon}

    def _image_tokens(self, tokens, mask, present):
        tokens = self.image_proj(tokens)  # (B, Ti, D)
        # Selected without branching on the data, so that an exported graph (mmsent export) does the same.
        missing = ~present.bool()[:, None]  # (B, 1)
        tokens = torch.where(missing[..., None], self.missing_image.to(tokens.dtype).expand_as(tokens), tokens)
        first = torch.zeros_like(mask)
        first[:, 0] = True  # one learned token stands for the absent image
        return tokens, (mask & ~missing) | (first & missing)

    def forward_from_encoded(self, text: tuple | None, image: tuple | None, image_text: tuple | None = None,
                             lexicon: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, C) from ``encoder_outputs``: projections, the missing-image token, fusion and head. The text
        in the image joins the text tokens as a segment of its own (its padding and empty texts masked out)."""
        return self.head(self.represent_encoded(text, image, image_text, lexicon))  # (B, C)

    def represent_encoded(self, text: tuple | None, image: tuple | None, image_text: tuple | None = None,
                          lexicon: torch.Tensor | None = None) -> torch.Tensor:
        """The fused representation (B, F) the head classifies (the supervised contrastive term acts on it)."""
        if text is not None:
            txt, txt_mask = text
            txt = self.text_proj(txt)  # (B, Tt, D)
            if image_text is not None:
                read, read_mask = image_text
                read = self.text_proj(read) + self.image_text_segment  # (B, To, D)
                txt, txt_mask = torch.cat([txt, read], 1), torch.cat([txt_mask, read_mask], 1)  # (B, Tt + To, D)
        if image is not None:
            img, img_mask = self._image_tokens(*image)
        if self.modality == "all":
            fused = self.fusion(img, img_mask, txt, txt_mask)  # (B, F)
        elif self.modality == "text":
            fused = masked_mean(txt, txt_mask)
        else:
            fused = masked_mean(img, img_mask)
        if lexicon is not None:
            fused = torch.cat([fused, self.lexicon_proj(lexicon)], -1)  # (B, F + D)
        return fused  # (B, F)

    def represent(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """features: cached tensors of a batch -> the fused representation (B, F)."""
        encoded = self.encoder_outputs(features)
        return self.represent_encoded(encoded["text"], encoded["image"], encoded["image_text"], encoded["lexicon"])

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """features: cached tensors of a batch -> logits (B, C)."""
        return self.head(self.represent(features))
