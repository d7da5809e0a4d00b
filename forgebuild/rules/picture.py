"""One image: decoded, validated and normalised with PIL into deterministic PNG bytes.

Build-only: the `images` rule imports it inside build(), so planning never loads PIL.
A problem is a `BadImage` whose text completes a sentence about the image ("is not an
image (cannot identify image file)"); the rule puts the file, row and field in front.
"""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

# Our own max_pixels check replaces PIL's bomb guard (which warns above 89M pixels and raises above
# 179M): it reads the size from the header before any pixel is decoded, with the user's limit.
Image.MAX_IMAGE_PIXELS = None

RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
# zlib level 6 (PIL's default, written out so no library default can move it): the PNG's bytes, and so
# its digest and file name, depend only on the pixels and this number.
PNG_LEVEL = 6
# PIL's messages end in the repr of the file object ("cannot identify image file <_io.BytesIO ...>")
OBJECT_REPR = re.compile(r"\s*<[^<>]* object at 0x[0-9a-f]+>")


class BadImage(ValueError):
    """An image that fails a check: the message completes "image 'x' ...", its general part before any " (";
    the rule counts refusals in stats.json by that part."""


@dataclass(frozen=True)
class Normalisation:
    mode: str  # "RGB", "L" or "RGBA"
    resize: tuple[int, int] | None  # exact (width, height)
    max_side: int | None  # scale down, keeping the aspect ratio, so the longer side is at most this
    resample: str  # a key of RESAMPLE
    max_bytes: int
    max_pixels: int
    min_side: int


def normalised_png(data: bytes, how: Normalisation) -> bytes:
    """The image in `data`, checked against the limits, in the declared mode and size, as PNG bytes."""
    if len(data) > how.max_bytes:
        raise BadImage(f"is larger than image.max_bytes = {how.max_bytes:,} ({len(data):,} bytes)")
    with warnings.catch_warnings():
        # PIL warns of corrupt EXIF tags it skips ("Corrupt EXIF data", 36 of 20,000 byte-flipped WebPs):
        # the pixels are whole, so the image is kept, and the build log is not filled with the warnings
        warnings.simplefilter("ignore")
        image = _in_mode(_upright(_decoded(data, how)), how.mode)
    image = _resized(image, how)
    # A fresh image of the pixels alone: no ICC profile, text chunk or gamma from the source file
    # reaches the PNG, so two files with the same pixels give the same bytes.
    plain = Image.frombytes(image.mode, image.size, image.tobytes())
    out = io.BytesIO()
    plain.save(out, "PNG", compress_level=PNG_LEVEL)
    return out.getvalue()


def _decoded(data: bytes, how: Normalisation) -> Image.Image:
    try:
        Image.open(io.BytesIO(data)).verify()  # checksums and structure, without decoding pixels
    except UnidentifiedImageError:
        raise BadImage("is not an image (cannot identify image file)") from None
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, struct.error... for broken files
        raise BadImage(f"is not a readable image ({_said(e)})") from None
    image = Image.open(io.BytesIO(data))  # verify() leaves the image unusable: open it again
    width, height = image.size
    if width * height > how.max_pixels:
        raise BadImage(f"has more pixels than image.max_pixels = {how.max_pixels:,} "
                       f"({width}x{height} = {width * height:,})")
    if min(width, height) < how.min_side:
        raise BadImage(f"has a side shorter than image.min_side = {how.min_side} ({width}x{height} pixels)")
    try:
        image.load()
    except Exception as e:  # noqa: BLE001 - a truncated file passes verify() for some formats
        raise BadImage(f"is not a readable image ({_said(e)})") from None
    return image


def _upright(image: Image.Image) -> Image.Image:
    """Turned as its EXIF orientation says (a phone's portrait photo is stored on its side)."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception as e:  # noqa: BLE001 - EXIF is a TIFF inside the file: a broken one raises SyntaxError
        raise BadImage(f"has unreadable EXIF data ({_said(e)})") from None


def _said(e: Exception) -> str:
    return OBJECT_REPR.sub("", str(e)) or type(e).__name__


def _in_mode(image: Image.Image, mode: str) -> Image.Image:
    if image.mode == mode:
        return image
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    if has_alpha and mode != "RGBA":
        # Dropping alpha keeps whatever colour transparent pixels hold (often black): composite on white
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert(mode)
    return image.convert(mode)


def _resized(image: Image.Image, how: Normalisation) -> Image.Image:
    size = how.resize
    if size is None and how.max_side is not None and max(image.size) > how.max_side:
        scale = how.max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size is None or tuple(size) == image.size:
        return image
    return image.resize(tuple(size), RESAMPLE[how.resample])
