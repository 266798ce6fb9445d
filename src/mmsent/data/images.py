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
FITS = ("crop", "pad")  # how an image becomes a square: centre crop of the short side, or the whole image padded
PAD_COLOUR = (124, 116, 104)  # the ImageNet mean: padding that normalises to about zero


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


def load_square_rgb(raw: bytes, size: int, fit: str = "crop") -> np.ndarray:
    """The decoding of a post's image, the same for the feature cache and for a single post: decode, apply EXIF
    rotation, convert to RGB, resize the short side to ``size`` and centre-crop (``fit="pad"``: resize the long side
    to ``size`` and pad the rest evenly with ``PAD_COLOUR``, so that nothing is cut) -> (size, size, 3) uint8.

    JPEGs are decoded in draft mode at the smallest DCT scale still at least ``size`` (much faster for large
    photos). Raises ImageError for unusable images.
    """
    image = open_image(raw)
    try:
        if image.format == "JPEG":
            image.draft("RGB", (size, size))
    except Exception as error:
        raise ImageError(f"could not decode ({type(error).__name__}: {error})") from None
    return square_rgb(image, size, fit)


def upright_rgb(image: Image.Image) -> Image.Image:
    """EXIF rotation applied, transparency composed on white, converted to RGB."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def load_whole_rgb(raw: bytes, max_side: int) -> np.ndarray:
    """The whole image (no crop), upright RGB, its longest side at most ``max_side`` -> (H, W, 3) uint8; for
    reading the text inside an image. Raises ImageError for unusable images."""
    image = open_image(raw)
    try:
        if image.format == "JPEG":
            image.draft("RGB", (max_side, max_side))
        image = upright_rgb(image)
        scale = max_side / max(image.size)
        if scale < 1:
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.BILINEAR, reducing_gap=2.0)
        return np.array(image, dtype=np.uint8)
    except ImageError:
        raise
    except Exception as error:
        raise ImageError(f"could not decode ({type(error).__name__}: {error})") from None


def square_rgb(image: Image.Image, size: int, fit: str = "crop") -> np.ndarray:
    """EXIF rotation, RGB (transparency on white), short side resized to ``size``, centre crop -> (size, size, 3);
    ``fit="pad"``: long side resized to ``size``, centred on a ``PAD_COLOUR`` square."""
    if fit not in FITS:
        raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    try:
        image = upright_rgb(image)
        if fit == "pad":
            return _padded(image, size)
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


def _padded(image: Image.Image, size: int) -> np.ndarray:
    width, height = image.size
    scale = size / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    canvas = Image.new("RGB", (size, size), PAD_COLOUR)
    canvas.paste(image.resize((new_w, new_h), Image.BILINEAR, reducing_gap=2.0),
                 ((size - new_w) // 2, (size - new_h) // 2))
    return np.array(canvas, dtype=np.uint8)


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
def load_image(source, size: int, fit: str = "crop") -> np.ndarray:
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
def _(source, size: int, fit: str = "crop") -> np.ndarray:
    return load_square_rgb(bytes(source), size, fit)


@load_image.register(str)
@load_image.register(os.PathLike)
def _(source, size: int, fit: str = "crop") -> np.ndarray:
    try:
        raw = Path(source).read_bytes()
    except OSError as error:
        raise ImageError(f"cannot read image file {source}: {error.strerror or error}") from None
    return load_square_rgb(raw, size, fit)


@load_image.register(Image.Image)
def _(source, size: int, fit: str = "crop") -> np.ndarray:
    raw = encoded_bytes(source)
    if raw is not None:
        return load_square_rgb(raw, size, fit)
    check_size(*source.size)
    return square_rgb(source, size, fit)
