"""Decoding and preprocessing of untrusted image bytes into model inputs (Pillow, simplejpeg and numpy).

The worker calls :func:`load_for_model` once per item. Anything that cannot become a model input raises
:class:`ImageError` with a human-readable reason; programming errors (bad arguments) raise ``ValueError``.

Two decoders, one result. Pillow opens every item (format, size, EXIF; the ``max_pixels`` check comes
before any pixel is decoded) and picks the JPEG draft scale. For a baseline or progressive 8-bit JPEG in
YCbCr, RGB or greyscale, :func:`load_for_model` then decodes the pixels with simplejpeg (libjpeg-turbo's
TurboJPEG API, GIL released) at exactly that scale, with the same accurate integer DCT and fancy upsampling as
Pillow's decoder, and orients and resizes them with Pillow as before. Tolerance: none. The model inputs are
bit-identical to the Pillow path's (max |difference| 0 in 0..1 units over 1,800 inputs: 300 photo-like
JPEGs, baseline, progressive, greyscale and EXIF-rotated, x 6 targets; benchmarks/decode_speed.py), and so are
the Geometry and the scores; the tests hold the fast path to that. Anything else (other formats, CMYK, MPO,
images under 8 px) and any JPEG that libjpeg-turbo refuses or merely warns about (truncated, corrupt data) goes
to Pillow, so every error keeps its message and a corrupt-but-readable file decodes as it always did.
``fast_jpeg=False`` uses Pillow alone; :func:`decoder_counts` tells which decoder ran. The gain is small
(2-5 % less CPU per image): both decoders are libjpeg-turbo, whose entropy decoding dominates at any scale.

Coordinates: a point at original pixel ``(x, y)`` (continuous coordinates, pixel ``i`` spans ``[i, i+1)``)
lands at model pixel ``(x * scale_x + pad_x, y * scale_y + pad_y)``; see :class:`Geometry`.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections import Counter
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.ExifTags import Base as ExifBase

from shared.core.vocab import PIXEL_SCALE_MAPS, PIXEL_SCALES, RESIZE_MODES

_RESAMPLE = Image.Resampling.BILINEAR
_WHITE = (255, 255, 255, 255)
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_WIDE_GREY_MODES = {"I", "F"}  # I;16 variants are handled by prefix

# What Pillow raises on broken or hostile files (its fuzzers see all of these).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError,
                  ZeroDivisionError, struct.error)

# EXIF Orientation -> transpose, as in PIL.ImageOps.exif_transpose.
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# The fast decoder takes JPEGs Pillow opens in these modes (CMYK/YCCK stay with Pillow: it inverts Adobe CMYK).
_FAST_JPEG_MODES = {"RGB", "L"}
# Below 8 px two DCT scales can give the same output size, so the output size would not prove the scale.
_FAST_JPEG_MIN_SIDE = 8

Box = tuple[float, float, float, float]

_decoder_counts: Counter[str] = Counter()
_decoder_counts_lock = threading.Lock()


class ImageError(Exception):
    """An item cannot be turned into a model input; ``str(e)`` is a clear reason for a human."""


@dataclass(frozen=True)
class Preprocessing:
    """How a decoded RGB image becomes a model input of shape (height, width, 3)."""

    height: int
    width: int
    resize_mode: str = "stretch"  # "stretch" | "letterbox" (keep aspect ratio, pad)
    pixel_scale: str = "unit"  # "unit" -> [0,1]; "raw" -> [0,255]; "symmetric" -> [-1,1]
    pad_value: int = 0  # letterbox fill, 0..255 for all 3 channels

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ValueError(f"Preprocessing.{name} must be a positive integer, got {value!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"Preprocessing.resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.pixel_scale not in PIXEL_SCALES:
            raise ValueError(f"Preprocessing.pixel_scale must be one of {PIXEL_SCALES}, got {self.pixel_scale!r}")
        if not _is_int(self.pad_value) or not 0 <= self.pad_value <= 255:
            raise ValueError(f"Preprocessing.pad_value must be an integer in 0..255, got {self.pad_value!r}")


@dataclass(frozen=True)
class Geometry:
    """How the original image's pixel frame maps onto the model input."""

    orig_width: int
    orig_height: int
    scale_x: float  # model px per original px (equal in letterbox up to rounding)
    scale_y: float
    pad_x: float  # letterbox offset in model px (0 for stretch)
    pad_y: float
    input_width: int
    input_height: int

    def to_original(self, x_norm, y_norm) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates normalised to [0,1] of the model input -> original image pixels. Scalars or arrays."""
        x_model = np.asarray(x_norm, dtype=np.float64) * self.input_width
        y_model = np.asarray(y_norm, dtype=np.float64) * self.input_height
        return (x_model - self.pad_x) / self.scale_x, (y_model - self.pad_y) / self.scale_y

    def to_normalised(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Original image pixels -> coordinates normalised to [0,1] of the model input (inverse of to_original)."""
        x_model = np.asarray(x, dtype=np.float64) * self.scale_x + self.pad_x
        y_model = np.asarray(y, dtype=np.float64) * self.scale_y + self.pad_y
        return x_model / self.input_width, y_model / self.input_height


@dataclass(frozen=True)
class _Decoded:
    """A decoded RGB image plus where the original (oriented) image lies in it.

    JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale; the original frame then covers ``content_box``
    of ``image`` (fractional when the size is not a multiple of the scale).
    """

    image: Image.Image
    orig_size: tuple[int, int]
    content_box: Box


def content_hash(data: bytes) -> str:
    """sha256 hex of the bytes."""
    return hashlib.sha256(data).hexdigest()


_READ_BLOCK = 1 << 20


def read_and_hash(path: Path, *, max_bytes: int | None, shown: str | None = None) -> tuple[bytearray, str]:
    """The file's bytes and their sha256 hex, hashed block by block as they are read (one pass, while each
    block is still in the CPU cache), or an ImageError naming the problem
    (`shown` is how the path is reported)."""
    shown = shown or str(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if max_bytes is not None and size > max_bytes:
                raise ImageError(f"file too large: {size} bytes > limit {max_bytes}")
            data = bytearray(size + 1)  # one spare byte shows a file that grew after the fstat
            view, digest, filled = memoryview(data), hashlib.sha256(), 0
            while True:
                got = f.readinto(view[filled:filled + _READ_BLOCK] if filled < size else view[filled:])
                if not got:
                    break
                digest.update(view[filled:filled + got])
                filled += got
                if filled == len(data):  # it grew: read the rest the slow way, still within the limit
                    rest = f.read(None if max_bytes is None else max_bytes - filled + 1)
                    digest.update(rest)
                    view.release()
                    data += rest
                    view = memoryview(data)
                    filled = len(data)
                    if max_bytes is not None and filled > max_bytes:
                        raise ImageError(f"file too large: more than {max_bytes} bytes")
                    break
            view.release()
            del data[filled:]
            return data, digest.hexdigest()
    except FileNotFoundError:
        raise ImageError(f"file not found: {shown}") from None
    except IsADirectoryError:
        raise ImageError(f"not a file: {shown}") from None
    except PermissionError:
        raise ImageError(f"permission denied: {shown}") from None
    except OSError as exc:
        raise ImageError(f"cannot read {shown}: {exc.strerror or exc}") from None


def decode_rgb(data: bytes, *, max_pixels: int, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Bytes -> fully loaded RGB image with EXIF orientation applied and alpha composited on white.

    ``draft_size`` (width, height) is the eventual target; JPEGs are then decoded at a reduced scale that is
    still at least that large in both dimensions whatever the EXIF rotation. Raises :class:`ImageError`.
    """
    return _decode(data, max_pixels=max_pixels, draft_size=draft_size).image


def preprocess(img: Image.Image, prep: Preprocessing) -> tuple[np.ndarray, Geometry]:
    """RGB image -> float32 array (height, width, 3) scaled per ``prep.pixel_scale``, plus its Geometry."""
    return _preprocess(img, prep, orig_size=img.size, content_box=(0.0, 0.0, *map(float, img.size)))


def load_for_model(data: bytes, prep: Preprocessing, *, max_pixels: int, fast_jpeg: bool = True,
                   scaled: bool = True) -> tuple[np.ndarray, Geometry]:
    """Decode (with JPEG draft) and preprocess one item; Geometry refers to the full-size original image.

    ``fast_jpeg`` lets simplejpeg decode the pixels of JPEGs it handles (same result, see the module docstring).
    ``scaled=False`` gives the resized pixels as uint8, for a model that scales them itself
    (worker/model_cache.py does, inside its tf.function: a quarter of the bytes to stack and hand over, and no
    float conversion in the decoding threads).
    """
    decoded = _decode(data, max_pixels=max_pixels, draft_size=(prep.width, prep.height), fast_jpeg=fast_jpeg)
    return _preprocess(decoded.image, prep, orig_size=decoded.orig_size, content_box=decoded.content_box,
                       scaled=scaled)


def decoder_counts() -> dict[str, int]:
    """Items decoded in this process so far, by decoder: "fast_jpeg" (simplejpeg), "pillow", and
    "fast_jpeg_rejected" (simplejpeg refused or warned; Pillow then decoded or reported the error)."""
    with _decoder_counts_lock:
        return dict(_decoder_counts)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparency composited on white, 16/32-bit grey scaled to 8 bits."""
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    if img.mode.startswith("I;16") or img.mode in _WIDE_GREY_MODES:
        return _wide_grey_to_l(img).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _decode(data: bytes, *, max_pixels: int, draft_size: tuple[int, int] | None,
            fast_jpeg: bool = False) -> _Decoded:
    if not data:
        raise ImageError("empty file")
    try:
        # Our own pixel limit is checked before decoding (no process-wide warning filter: decoding runs in threads).
        with Image.open(BytesIO(data)) as img:
            _check_pixels(img.size, max_pixels)
            stored_size = img.size
            box = _apply_draft(img, draft_size)
            fast = _decode_jpeg_fast(data, img) if fast_jpeg else None
            if fast is None:
                _count("pillow")
                img.load()
            decoded_size = img.size
            orientation = img.getexif().get(ExifBase.Orientation, 1)
            if fast is None:
                oriented = ImageOps.exif_transpose(img)
            else:  # a fresh image already: no copy when there is nothing to turn
                oriented = fast if _ORIENTATION_TRANSPOSE.get(orientation) is None else ImageOps.exif_transpose(fast)
            rgb = to_rgb(oriented)
            rgb.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"too many pixels: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError("not an image (cannot identify image file)") from exc
    except _DECODE_ERRORS as exc:
        raise ImageError(_describe_decode_error(exc)) from exc

    method = _ORIENTATION_TRANSPOSE.get(orientation)
    orig_size = _transposed_size(stored_size, method)
    content_box = _transpose_box(box, decoded_size, method)
    return _Decoded(rgb, orig_size, content_box)


def _decode_jpeg_fast(data: bytes, img: Image.Image) -> Image.Image | None:
    """The pixels of an opened (and drafted) JPEG decoded by simplejpeg, as Pillow would decode them; None when
    Pillow must decode (not a JPEG simplejpeg may take, or simplejpeg refused or warned)."""
    width, height = img.size  # after draft: the reduced size Pillow would decode to
    if img.format != "JPEG" or img.mode not in _FAST_JPEG_MODES or min(width, height) < _FAST_JPEG_MIN_SIDE:
        return None
    try:
        # strict: a libjpeg warning (truncated or corrupt data) raises instead of filling in grey
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=width, min_height=height, strict=True)
    except ValueError:
        pixels = None
    if pixels is None or pixels.shape != (height, width, 3):  # another DCT scale would not match the draft box
        _count("fast_jpeg_rejected")
        return None
    _count("fast_jpeg")
    fast = Image.fromarray(pixels)
    fast.info = dict(img.info)  # for exif_transpose: the same EXIF, XMP and metadata rewriting as Pillow's image
    return fast


def _count(decoder: str) -> None:
    with _decoder_counts_lock:
        _decoder_counts[decoder] += 1


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"image has no pixels: {width}x{height}")
    if width * height > max_pixels:
        raise ImageError(f"too many pixels: {width}x{height} = {width * height} > limit {max_pixels}")


def _apply_draft(img: Image.Image, draft_size: tuple[int, int] | None) -> Box:
    """Ask a JPEG to decode reduced; returns where the full image lies in the (possibly reduced) frame."""
    full_box = (0.0, 0.0, float(img.width), float(img.height))
    if draft_size is None or img.format != "JPEG":
        return full_box
    side = max(draft_size)  # square request: safe for any EXIF rotation
    result = img.draft("RGB", (side, side))
    if result is None:
        return full_box
    _, box = result
    return tuple(float(v) for v in box)


def _transposed_size(size: tuple[int, int], method: Image.Transpose | None) -> tuple[int, int]:
    if method in (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270,
                  Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE):
        return size[1], size[0]
    return size


def _transpose_box(box: Box, frame_size: tuple[int, int], method: Image.Transpose | None) -> Box:
    """Where ``box`` (in a frame of ``frame_size``, before transposing) lies after ``img.transpose(method)``."""
    if method is None:
        return box
    w, h = frame_size
    mapping = {
        Image.Transpose.FLIP_LEFT_RIGHT: lambda x, y: (w - x, y),
        Image.Transpose.FLIP_TOP_BOTTOM: lambda x, y: (x, h - y),
        Image.Transpose.ROTATE_180: lambda x, y: (w - x, h - y),
        Image.Transpose.ROTATE_90: lambda x, y: (y, w - x),  # counter-clockwise
        Image.Transpose.ROTATE_270: lambda x, y: (h - y, x),  # clockwise
        Image.Transpose.TRANSPOSE: lambda x, y: (y, x),
        Image.Transpose.TRANSVERSE: lambda x, y: (h - y, w - x),
    }[method]
    (x0, y0), (x1, y1) = mapping(box[0], box[1]), mapping(box[2], box[3])
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def _describe_decode_error(exc: BaseException) -> str:
    reason = str(exc) or type(exc).__name__
    if "truncated" in reason.lower():
        return f"truncated image: {reason}"
    return f"cannot decode image: {reason}"


def _wide_grey_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit or float grey -> 8-bit L. I;16 always uses the 16-bit range; I and F only if values exceed 255."""
    values = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16") or (values.size and values.max() > 255):
        values = np.clip(values, 0, 65535) / 257.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def _preprocess(img: Image.Image, prep: Preprocessing, *, orig_size: tuple[int, int],
                content_box: Box, scaled: bool = True) -> tuple[np.ndarray, Geometry]:
    """Resize the part of ``img`` in ``content_box`` (the whole original frame) to the model input."""
    if img.mode != "RGB":
        raise ValueError(f"preprocess expects an RGB image, got mode {img.mode!r} (use decode_rgb/to_rgb)")
    orig_w, orig_h = orig_size
    if prep.resize_mode == "stretch":
        canvas = img.resize((prep.width, prep.height), _RESAMPLE, box=content_box)
        pad_x = pad_y = 0
        new_w, new_h = prep.width, prep.height
    else:
        scale = min(prep.width / orig_w, prep.height / orig_h)
        new_w = min(prep.width, max(1, round(orig_w * scale)))
        new_h = min(prep.height, max(1, round(orig_h * scale)))
        pad_x, pad_y = (prep.width - new_w) // 2, (prep.height - new_h) // 2
        canvas = Image.new("RGB", (prep.width, prep.height), (prep.pad_value,) * 3)
        canvas.paste(img.resize((new_w, new_h), _RESAMPLE, box=content_box), (pad_x, pad_y))
    geometry = Geometry(
        orig_width=orig_w, orig_height=orig_h,
        scale_x=new_w / orig_w, scale_y=new_h / orig_h,
        pad_x=float(pad_x), pad_y=float(pad_y),
        input_width=prep.width, input_height=prep.height,
    )
    if not scaled:
        return np.asarray(canvas), geometry
    return scale_pixels(np.asarray(canvas, dtype=np.float32), prep.pixel_scale), geometry


def pixel_scale_factors(pixel_scale: str) -> tuple[np.float32, np.float32]:
    """(multiplier, offset) in float32: model input = pixel * multiplier + offset, the multiplier being the float32
    reciprocal of the divisor in shared.core.vocab.PIXEL_SCALE_MAPS. A multiplication, not a division: TensorFlow's
    graph optimizer turns a division by a constant into this very multiplication inside a tf.function (serving's
    uint8 path) but not in eager code or tf.data, so only a multiplication written everywhere gives serving, training
    and NumPy the same bits (worker/pixel_scaling.py, tests/unit/worker/test_pixel_scaling.py)."""
    divisor, offset = PIXEL_SCALE_MAPS[pixel_scale]
    return np.float32(1.0 / divisor), np.float32(offset)


def scale_pixels(pixels: np.ndarray, pixel_scale: str) -> np.ndarray:
    """0..255 float32 pixels -> the model's input range, in NumPy (see `pixel_scale_factors`)."""
    multiplier, offset = pixel_scale_factors(pixel_scale)
    scaled = pixels * multiplier if multiplier != 1.0 else pixels
    return scaled + offset if offset else scaled


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
