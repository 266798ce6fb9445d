"""The text inside a post's image: read once per image with RapidOCR (PP-OCRv4 ONNX models shipped in the
``rapidocr-onnxruntime`` wheel, run by ONNX Runtime) and cached on disk by the image's content.

What is read: the whole image (no crop) with its longest side at ``ocr.side`` pixels is searched for text boxes;
the ``ocr.max_boxes`` largest are recognised, the lines scoring at least ``ocr.min_score`` are kept and joined in
reading order (top to bottom, left to right). An image without text, or that cannot be decoded, gives "".

The cache holds one small JSON file per image under ``<cache>/ocr/<settings>/``, named by the SHA-256 of the
image's bytes: a run over a data set resumes where it stopped, and the same image in another data set, a later
run or a single prediction is read once.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from .atomic import atomic_write_text
from .config import OcrConfig
from .errors import PackageError
from .paths import cache_dir
from .progress import progress

ENGINE_PACKAGE = "rapidocr-onnxruntime"
CACHE_FORMAT = 1  # bump when what is stored for an image changes
_engines: dict[tuple, object] = {}  # settings -> a loaded engine, one per process (created on first use)


def engine_version() -> str:
    """The installed OCR package's version (part of the cache key: another model may read other text)."""
    from importlib import metadata

    try:
        return metadata.version(ENGINE_PACKAGE)
    except metadata.PackageNotFoundError:
        raise PackageError(f"reading the text in images (ocr.enabled) needs the PyPI package {ENGINE_PACKAGE} "
                           f"(pip install {ENGINE_PACKAGE})") from None


def settings_key(config: OcrConfig) -> str:
    """What decides the text read from an image: the engine and the reading settings."""
    parts = {"engine": ENGINE_PACKAGE, "version": engine_version(), "side": config.side,
             "max_boxes": config.max_boxes, "min_score": config.min_score, "format": CACHE_FORMAT}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _engine(config: OcrConfig, threads: int):
    key = (config.side, threads)
    if key not in _engines:
        engine_version()  # a clear error when the package is missing
        from rapidocr_onnxruntime import RapidOCR

        _engines[key] = RapidOCR(det_limit_type="max", det_limit_side_len=config.side, use_cls=False,
                                 intra_op_num_threads=threads, inter_op_num_threads=1)
    return _engines[key]


def read_pixels(pixels: np.ndarray, config: OcrConfig, threads: int = 1) -> list[tuple[str, float]]:
    """Lines of text (text, recognition score) in an (H, W, 3) RGB uint8 image, in reading order."""
    engine = _engine(config, threads)
    bgr = np.ascontiguousarray(pixels[:, :, ::-1])
    boxes, _ = engine.text_det(bgr)  # (K, 4, 2) corner points, or None
    if boxes is None or len(boxes) == 0:
        return []
    area = np.array([_box_area(box) for box in boxes])
    keep = np.sort(np.argsort(-area, kind="stable")[:config.max_boxes])
    boxes = engine.sorted_boxes(np.asarray(boxes)[keep])  # reading order
    crops = engine.get_crop_img_list(bgr, boxes)
    recognised, _ = engine.text_rec(crops)
    return [(str(text).strip(), float(score)) for text, score in recognised
            if float(score) >= config.min_score and str(text).strip()]


def _box_area(box) -> float:
    x, y = np.asarray(box, dtype=np.float64).T  # 4 corners
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def read_image_bytes(raw: bytes, config: OcrConfig, threads: int = 1) -> str:
    """The text in an encoded image (any format Pillow reads); "" for an image without text or one that cannot be
    decoded (prediction goes on with the image's other features)."""
    from .data.images import ImageError, load_whole_rgb

    try:
        pixels = load_whole_rgb(raw, config.side)
    except ImageError:
        return ""
    return " ".join(text for text, _ in read_pixels(pixels, config, threads))


class OcrCache:
    """Texts read from images, one JSON file per image content under ``<cache>/ocr/<settings>/``."""

    def __init__(self, config: OcrConfig):
        self.config = config
        self.folder = cache_dir() / "ocr" / settings_key(config)

    def path(self, digest: str) -> Path:
        return self.folder / digest[:2] / f"{digest}.json"

    def get(self, digest: str) -> str | None:
        try:
            return json.loads(self.path(digest).read_text(encoding="utf-8"))["text"]
        except (OSError, ValueError, KeyError, TypeError):  # missing or damaged: read again
            return None

    def put(self, digest: str, text: str) -> None:
        try:
            self.path(digest).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path(digest), json.dumps({"text": text}, ensure_ascii=False))
        except OSError:
            pass  # a read-only or full cache: the text is still returned

    def text_of(self, raw: bytes, threads: int = 1) -> str:
        """The text in one image, from the cache or read now (and cached)."""
        digest = hashlib.sha256(raw).hexdigest()
        text = self.get(digest)
        if text is None:
            text = read_image_bytes(raw, self.config, threads)
            self.put(digest, text)
        return text

    def texts_of(self, raws: list[bytes | None], workers: int = 1, desc: str = "text in images") -> list[str]:
        """The text in each image ("" for None), reading the uncached ones in ``workers`` processes under a
        progress bar; each is cached as soon as it is read, so an interrupted call resumes."""
        digests = [None if raw is None else hashlib.sha256(raw).hexdigest() for raw in raws]
        texts = [None if digest is None else self.get(digest) for digest in digests]
        todo: dict[str, list[int]] = {}  # digest -> the indices of the uncached images with that content
        for index, (digest, text) in enumerate(zip(digests, texts)):
            if digest is not None and text is None:
                todo.setdefault(digest, []).append(index)
        if todo:
            items = [(digest, raws[indices[0]]) for digest, indices in todo.items()]
            for digest, text in _read_many(items, self.config, workers, desc):
                self.put(digest, text)
                for index in todo[digest]:
                    texts[index] = text
        return ["" if text is None else text for text in texts]


def _read_one(item: tuple[str, bytes], config: OcrConfig) -> tuple[str, str]:
    digest, raw = item
    return digest, read_image_bytes(raw, config, threads=1)


def _read_many(items: list[tuple[str, bytes]], config: OcrConfig, workers: int, desc: str):
    """Yield (digest, text) for every item, read in ``workers`` processes (in this one when 1)."""
    bar = progress(None, desc=desc, unit="image", total=len(items))
    try:
        if workers <= 1 or len(items) < 16:  # starting processes costs more than a few images
            for item in items:
                yield _read_one(item, config)
                bar.update(1)
            return
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for result in pool.map(_read_one, items, [config] * len(items), chunksize=4):
                yield result
                bar.update(1)
    finally:
        bar.close()


def default_workers() -> int:
    """OCR processes when the config says 0: one per core."""
    return max(1, os.cpu_count() or 1)


def split_image_texts(split, config: OcrConfig, workers: int = 0) -> list[str]:
    """The text in every post's image of ``split`` (a :class:`~mmsent.data.dataset.Split`), "" where the post has
    no image or its image has no text."""
    raws = [split.read_image_bytes(guid) for guid in split.guids]
    return OcrCache(config).texts_of(raws, workers or default_workers())
