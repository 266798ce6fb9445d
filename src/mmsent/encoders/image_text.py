"""The text inside a post's image as a second text: read by :mod:`mmsent.ocr`, cleaned like the post's text and
encoded by the run's own text encoder (the same frozen part; the model applies the same trainable upper part and
projection, then adds a learned segment embedding, so the fusion tells the two texts apart)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from PIL import Image

from ..config import OcrConfig, TextPrepConfig
from ..data.text import clean_text
from .base import Tower


class ImageTextTower(Tower):
    """Features of the text in each image: ``ocr_hidden`` (N, L, D) and ``ocr_mask`` (N, L), all False for an image
    without text (or a post without an image), so that such a post is encoded as if the model had no such input."""

    kind = "image_text"
    feature_names = ("ocr_hidden", "ocr_mask")

    def __init__(self, text: Tower, config: OcrConfig, text_prep: TextPrepConfig):
        super().__init__(text._template, None)
        self.text, self.config, self.text_prep = text, config, text_prep
        self.precompute_batch_size = text.precompute_batch_size

    @property
    def inference_precision(self) -> str:
        return self.text.inference_precision

    def use_backend(self, backend: str, log=print, precision: str = "f32") -> str:
        return "shared with the text encoder"  # encoding goes through the text tower and its runtime

    def to(self, device: torch.device) -> "ImageTextTower":
        return self  # the text tower is moved by its own owner

    def make_trainable(self):
        raise TypeError("the text in images shares the text encoder's trainable part; it has none of its own")

    def cache_id(self) -> str:
        from ..ocr import settings_key

        return json.dumps({"image_text": settings_key(self.config), "encoder": self.text.cache_id()})

    def expected_shapes(self, n: int) -> dict[str, tuple]:
        shapes = self.text.expected_shapes(n)
        return {"ocr_hidden": shapes["text_hidden"], "ocr_mask": shapes["text_mask"]}

    def read(self, image) -> str:
        """The text in one image given as a path, bytes or a PIL image ("" for None or an image without text)."""
        from ..data.images import encoded_bytes
        from ..ocr import OcrCache

        if image is None:
            return ""
        if isinstance(image, Image.Image):
            raw = encoded_bytes(image)
            if raw is None:  # made in memory: read (and cache) it as a PNG of its pixels
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                raw = buffer.getvalue()
        elif isinstance(image, (bytes, bytearray, memoryview)):
            raw = bytes(image)
        else:
            try:
                raw = Path(image).read_bytes()
            except OSError:
                return ""
        return OcrCache(self.config).text_of(raw)

    def precompute(self, split, text_prep, batch_size, workers):
        from ..ocr import split_image_texts

        return self.encode_items(split_image_texts(split, self.config, self.config.workers), batch_size)

    def encode_items(self, items, batch_size=None):
        """Texts read from images (raw, as :meth:`read` gives them) -> ocr_hidden, ocr_mask."""
        cleaned = [clean_text(text or "", self.text_prep) for text in items]
        encoded = self.text.encode_items(cleaned, batch_size)
        present = torch.tensor([bool(text.strip()) for text in cleaned], dtype=torch.bool)  # (N,)
        return {"ocr_hidden": encoded["text_hidden"], "ocr_mask": encoded["text_mask"] & present[:, None]}
