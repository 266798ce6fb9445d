"""Opening a post's image by its content (not its extension) into a square RGB array."""

from __future__ import annotations

import io
import os
import warnings
from functools import singledispatch
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError

MAX_IMAGE_PIXELS = 40_000_000  # a file that declares more is refused before it is decoded
MAX_ASPECT = 50  # wider/taller than this is treated as unusable


class ImageError(UserError):
    """An image that cannot be used; the message says why."""


class ImageTooLarge(ImageError):
    """An image that declares more pixels than allowed."""


def check_size(width: int, height: int, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Refuse images over ``max_pixels`` (ImageTooLarge) or of an extreme aspect ratio (ImageError)."""
    if width * height > max_pixels:
        raise ImageTooLarge(f"declares {width}x{height} pixels (limit {max_pixels:,}); refused")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageError(f"aspect ratio {width}x{height} is too extreme")


def open_image(raw: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open bytes of any format Pillow knows (lazily: only the header is read), refusing decompression bombs."""
    if not raw:
        raise ImageError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            check_size(*image.size, max_pixels=max_pixels)
            return image
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"decompression bomb refused: {error}") from None
    except UnidentifiedImageError:
        raise ImageError("not a readable image (no image format recognised)") from None
    except Exception as error:  # Pillow raises many types for non-images
        raise ImageError(f"not a readable image ({type(error).__name__}: {error})") from None


def load_square_rgb(raw: bytes, size: int) -> np.ndarray:
    """The decoding of a post's image, the same for the feature cache and for a single post: decode, apply EXIF
    rotation, convert to RGB, resize the short side to ``size`` and centre-crop -> (size, size, 3) uint8.

    JPEGs are decoded in draft mode at the smallest DCT scale still at least ``size`` (much faster for large
    photos). Raises ImageError for unusable images.
    """
    image = open_image(raw)
    try:
        if image.format == "JPEG":
            image.draft("RGB", (size, size))
    except Exception as error:
        raise ImageError(f"could not decode ({type(error).__name__}: {error})") from None
    return square_rgb(image, size)


def square_rgb(image: Image.Image, size: int) -> np.ndarray:
    """EXIF rotation, RGB (transparency on white), short side resized to ``size``, centre crop -> (size, size, 3)."""
    try:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image)
        image = image.convert("RGB")
        width, height = image.size
        scale = size / min(width, height)
        new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
        image = image.resize((new_w, new_h), Image.BILINEAR, reducing_gap=2.0)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        image = image.crop((left, top, left + size, top + size))
        return np.array(image, dtype=np.uint8)  # a writable copy
    except ImageError:
        raise
    except Exception as error:
        raise ImageError(f"could not decode ({type(error).__name__}: {error})") from None


def encoded_bytes(image: Image.Image) -> bytes | None:
    """The file a PIL image was opened from, while it is not decoded yet (``Image.open`` reads only the header);
    None for an image already decoded or made in memory, or showing another frame than the first."""
    source = getattr(image, "fp", None)
    if source is None or not getattr(image, "tile", None) or image.tell() != 0:
        return None
    try:
        position = source.tell()
        source.seek(0)  # Image.open reads a file from its start
        raw = source.read()
        source.seek(position)
    except (AttributeError, OSError, ValueError):  # closed or not seekable
        return None
    return raw


@singledispatch
def load_image(source, size: int) -> np.ndarray:
    """A post's image given as a path, bytes or a PIL image -> (size, size, 3) uint8 by ``load_square_rgb``: the
    same pixels as the feature cache's for the same file.

    A PIL image is decoded from the file it was opened from; one already decoded (or made in memory) has no file,
    and gets ``square_rgb`` of its pixels: for a JPEG of more than twice ``size`` these differ from the file's draft
    decoding.
    """
    raise TypeError(f"an image is a path, bytes or a PIL image, not {type(source).__name__}")


@load_image.register(bytes)
@load_image.register(bytearray)
@load_image.register(memoryview)
def _(source, size: int) -> np.ndarray:
    return load_square_rgb(bytes(source), size)


@load_image.register(str)
@load_image.register(os.PathLike)
def _(source, size: int) -> np.ndarray:
    try:
        raw = Path(source).read_bytes()
    except OSError as error:
        raise ImageError(f"cannot read image file {source}: {error.strerror or error}") from None
    return load_square_rgb(raw, size)


@load_image.register(Image.Image)
def _(source, size: int) -> np.ndarray:
    raw = encoded_bytes(source)
    if raw is not None:
        return load_square_rgb(raw, size)
    check_size(*source.size)
    return square_rgb(source, size)
