"""Tests for shared.images.imaging: decoding every mode to RGB, orientation, geometry, draft mode, errors and the fast
JPEG path (simplejpeg), which must give the Pillow path's inputs, Geometry and error messages."""

from __future__ import annotations

import hashlib
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO

import numpy as np
import pytest
from PIL import Image, ImageFile
from sklearn.datasets import load_sample_image

from shared.images.imaging import (
    Geometry,
    ImageError,
    Preprocessing,
    content_hash,
    decode_rgb,
    decoder_counts,
    load_for_model,
    preprocess,
    to_rgb,
)

BIG = 10**9
RED = (255, 0, 0)
GREY = (128, 128, 128)
WHITE = (255, 255, 255)


# ---------------------------------------------------------------- helpers

def encode(img: Image.Image, fmt: str, **save_kwargs) -> bytes:
    buf = BytesIO()
    img.save(buf, fmt, **save_kwargs)
    return buf.getvalue()


def decode(data: bytes, **kwargs) -> Image.Image:
    return decode_rgb(data, max_pixels=kwargs.pop("max_pixels", BIG), **kwargs)


def pixel(img: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(img)[xy[1], xy[0]])


def assert_close(actual, expected, tol: int) -> None:
    assert np.max(np.abs(np.subtract(actual, expected, dtype=float))) <= tol, f"{actual} != {expected} (tol {tol})"


def with_marker(size: tuple[int, int], box: tuple[int, int, int, int], bg=GREY) -> Image.Image:
    """An RGB image of ``size`` filled with ``bg`` and a red rectangle ``box`` (x0, y0, x1, y1 exclusive)."""
    img = Image.new("RGB", size, bg)
    img.paste(RED, box)
    return img


def red_centroid(model_input: np.ndarray) -> tuple[float, float]:
    """Centroid in continuous model pixels (pixel i spans [i, i+1]) of 'redness' = R - G."""
    redness = np.clip(model_input[..., 0] - model_input[..., 1], 0, None).astype(np.float64)
    assert redness.sum() > 0, "marker not found"
    ys, xs = np.indices(redness.shape)
    return (float((redness * (xs + 0.5)).sum() / redness.sum()),
            float((redness * (ys + 0.5)).sum() / redness.sum()))


def marker_in_original(model_input: np.ndarray, geometry: Geometry) -> tuple[float, float]:
    """Where the marker centroid of a model input lands in original image pixels."""
    cx, cy = red_centroid(model_input)
    x, y = geometry.to_original(cx / geometry.input_width, cy / geometry.input_height)
    return float(x), float(y)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming ``width`` x ``height`` whose pixel data is almost entirely missing."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\0" * 100)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def gradient_jpeg(size: tuple[int, int], marker: tuple[int, int, int, int], **save_kwargs) -> bytes:
    w, h = size
    xs, ys = np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h))
    arr = np.stack([np.zeros_like(xs), xs, ys], axis=-1).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    img.paste(RED, marker)
    return encode(img, "JPEG", quality=95, **save_kwargs)


def exif_with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


# ---------------------------------------------------------------- modes -> RGB

def test_rgb_png_passes_through_unchanged():
    img = with_marker((5, 4), (1, 1, 2, 2))
    out = decode(encode(img, "PNG"))
    assert out.mode == "RGB" and out.size == (5, 4)
    assert np.array_equal(np.asarray(out), np.asarray(img))


def test_grey_l():
    out = decode(encode(Image.new("L", (3, 2), 100), "PNG"))
    assert out.mode == "RGB"
    assert pixel(out, (2, 1)) == (100, 100, 100)


def test_rgba_composited_on_white():
    img = Image.new("RGBA", (3, 1))
    img.putpixel((0, 0), (255, 0, 0, 255))  # opaque red
    img.putpixel((1, 0), (0, 0, 0, 0))  # fully transparent black
    img.putpixel((2, 0), (0, 0, 255, 128))  # half-transparent blue
    out = decode(encode(img, "PNG"))
    assert out.mode == "RGB"
    assert pixel(out, (0, 0)) == RED
    assert pixel(out, (1, 0)) == WHITE
    assert_close(pixel(out, (2, 0)), (127, 127, 255), tol=1)


def test_la_composited_on_white():
    img = Image.new("LA", (3, 1))
    img.putpixel((0, 0), (50, 255))
    img.putpixel((1, 0), (0, 0))
    img.putpixel((2, 0), (0, 128))
    out = decode(encode(img, "PNG"))
    assert pixel(out, (0, 0)) == (50, 50, 50)
    assert pixel(out, (1, 0)) == WHITE
    assert_close(pixel(out, (2, 0)), (127, 127, 127), tol=1)


def palette_image() -> Image.Image:
    img = Image.new("P", (2, 1))
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * (254 * 3))
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    return img


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP"])
def test_palette_without_transparency(fmt):
    out = decode(encode(palette_image(), fmt))
    assert pixel(out, (0, 0)) == (10, 20, 30)
    assert pixel(out, (1, 0)) == (200, 100, 50)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency(fmt):
    out = decode(encode(palette_image(), fmt, transparency=0))
    assert pixel(out, (0, 0)) == WHITE  # transparent index
    assert pixel(out, (1, 0)) == (200, 100, 50)


def test_grey_and_rgb_with_transparency_key():
    grey = Image.new("L", (2, 1), 0)
    grey.putpixel((1, 0), 90)
    out = decode(encode(grey, "PNG", transparency=0))
    assert [pixel(out, (0, 0)), pixel(out, (1, 0))] == [WHITE, (90, 90, 90)]

    rgb = Image.new("RGB", (2, 1), (1, 2, 3))
    rgb.putpixel((1, 0), RED)
    out = decode(encode(rgb, "PNG", transparency=(1, 2, 3)))
    assert [pixel(out, (0, 0)), pixel(out, (1, 0))] == [WHITE, RED]


def test_cmyk_jpeg_cyan():
    out = decode(encode(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), "JPEG", quality=95))
    assert_close(pixel(out, (8, 8)), (0, 255, 255), tol=3)


def test_cmyk_tiff_exact_colours():
    img = Image.new("CMYK", (2, 1), (0, 255, 0, 0))  # magenta
    img.putpixel((1, 0), (0, 0, 0, 255))  # black
    out = decode(encode(img, "TIFF"))
    assert pixel(out, (0, 0)) == (255, 0, 255)
    assert pixel(out, (1, 0)) == (0, 0, 0)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_grey_scaled_to_eight_bits(fmt):
    img = Image.new("I;16", (3, 1))
    for x, value in enumerate([0, 128 * 257, 65535]):
        img.putpixel((x, 0), value)
    data = encode(img, fmt)
    assert Image.open(BytesIO(data)).mode.startswith("I;16")
    out = decode(data)
    assert [pixel(out, (x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_thirty_two_bit_int_grey():
    eight_bit = Image.fromarray(np.array([[0, 77, 255]], dtype=np.int32), "I")
    out = decode(encode(eight_bit, "TIFF"))
    assert [pixel(out, (x, 0))[0] for x in range(3)] == [0, 77, 255]

    sixteen_bit_range = Image.fromarray(np.array([[0, 257 * 77, 65535]], dtype=np.int32), "I")
    out = decode(encode(sixteen_bit_range, "TIFF"))
    assert [pixel(out, (x, 0))[0] for x in range(3)] == [0, 77, 255]


def test_float_grey():
    img = Image.fromarray(np.array([[0.0, 200.0, 255.0]], dtype=np.float32), "F")
    out = decode(encode(img, "TIFF"))
    assert [pixel(out, (x, 0)) for x in range(3)] == [(0, 0, 0), (200, 200, 200), WHITE]


def test_bilevel():
    img = Image.new("1", (2, 1), 0)
    img.putpixel((1, 0), 1)
    out = decode(encode(img, "PNG"))
    assert [pixel(out, (0, 0)), pixel(out, (1, 0))] == [(0, 0, 0), WHITE]


def test_ycbcr_tiff():
    ycbcr = Image.new("RGB", (2, 2), (200, 30, 90)).convert("YCbCr")
    data = encode(ycbcr, "TIFF")
    assert Image.open(BytesIO(data)).mode == "YCbCr"
    assert_close(pixel(decode(data), (1, 1)), (200, 30, 90), tol=3)


@pytest.mark.parametrize("mode", ["RGBX", "HSV", "LAB", "PA", "RGBa"])
def test_to_rgb_handles_other_modes(mode):
    source = Image.new("RGBA" if mode in ("PA", "RGBa") else "RGB", (2, 2), (20, 200, 60))
    img = source.convert(mode)
    assert img.mode == mode
    out = to_rgb(img)
    assert out.mode == "RGB"
    assert_close(pixel(out, (0, 0)), (20, 200, 60), tol=8)


# ---------------------------------------------------------------- EXIF orientation

@pytest.mark.parametrize(
    "orientation, expected_size, marker_corner",
    [
        (1, (60, 40), "top_left"),
        (3, (60, 40), "bottom_right"),
        (6, (40, 60), "top_right"),  # display = stored rotated 90 degrees clockwise
        (8, (40, 60), "bottom_left"),  # display = stored rotated 90 degrees counter-clockwise
    ],
)
def test_exif_orientation_applied(orientation, expected_size, marker_corner):
    stored = with_marker((60, 40), (0, 0, 12, 12), bg=(0, 0, 255))
    data = encode(stored, "JPEG", quality=95, exif=exif_with_orientation(orientation))
    out = decode(data)
    assert out.size == expected_size
    w, h = out.size
    corners = {"top_left": (3, 3), "top_right": (w - 4, 3), "bottom_left": (3, h - 4), "bottom_right": (w - 4, h - 4)}
    for name, xy in corners.items():
        red, _, blue = pixel(out, xy)
        if name == marker_corner:
            assert red > 200 and blue < 60, f"marker missing at {name}"
        else:
            assert red < 60 and blue > 200, f"unexpected marker at {name}"


# ---------------------------------------------------------------- geometry

@pytest.mark.parametrize(
    "size, marker, expected",
    [
        # wide: scale 0.5 -> 100x25, pad_y = (100 - 25) // 2 = 37
        ((200, 50), (140, 20, 148, 28), dict(scale_x=0.5, scale_y=0.5, pad_x=0.0, pad_y=37.0)),
        # tall: 25x100, pad_x = 37
        ((50, 200), (20, 150, 28, 158), dict(scale_x=0.5, scale_y=0.5, pad_x=37.0, pad_y=0.0)),
    ],
)
def test_letterbox_geometry_and_marker(size, marker, expected):
    prep = Preprocessing(height=100, width=100, resize_mode="letterbox", pixel_scale="raw", pad_value=17)
    arr, geo = preprocess(with_marker(size, marker), prep)
    assert arr.shape == (100, 100, 3) and arr.dtype == np.float32
    assert (geo.orig_width, geo.orig_height, geo.input_width, geo.input_height) == (*size, 100, 100)
    for field, value in expected.items():
        assert getattr(geo, field) == pytest.approx(value), field

    # everything outside the 100x25 (or 25x100) content rectangle is pad_value, nothing inside is
    content = np.any(arr != 17, axis=-1)
    rows, cols = np.flatnonzero(content.any(axis=1)), np.flatnonzero(content.any(axis=0))
    new_w, new_h = round(size[0] * geo.scale_x), round(size[1] * geo.scale_y)
    assert (rows.min(), rows.max() + 1) == (geo.pad_y, geo.pad_y + new_h)
    assert (cols.min(), cols.max() + 1) == (geo.pad_x, geo.pad_x + new_w)
    assert content[int(geo.pad_y):int(geo.pad_y) + new_h, int(geo.pad_x):int(geo.pad_x) + new_w].all()

    centre = ((marker[0] + marker[2]) / 2, (marker[1] + marker[3]) / 2)
    assert_close(marker_in_original(arr, geo), centre, tol=1)


def test_letterbox_rounding_uses_effective_scales_and_integer_offsets():
    prep = Preprocessing(height=64, width=64, resize_mode="letterbox")
    arr, geo = preprocess(Image.new("RGB", (100, 30), GREY), prep)
    # scale = 0.64 -> 64 x 19.2 -> 64 x 19; pad_y = (64 - 19) // 2 = 22
    assert (geo.scale_x, geo.scale_y) == (0.64, 19 / 30)
    assert (geo.pad_x, geo.pad_y) == (0.0, 22.0)
    content_rows = np.flatnonzero(arr[:, 32, 0] > 0)
    assert (content_rows.min(), content_rows.max()) == (22, 22 + 19 - 1)
    # the original frame's corners map exactly onto the content rectangle
    assert_close(geo.to_normalised([0, 100], [0, 30]), ([0, 1], [22 / 64, 41 / 64]), tol=1e-12)


def test_stretch_geometry_and_marker():
    prep = Preprocessing(height=80, width=50)
    arr, geo = preprocess(with_marker((200, 100), (120, 30, 136, 46)), prep)
    assert arr.shape == (80, 50, 3)
    assert (geo.scale_x, geo.scale_y, geo.pad_x, geo.pad_y) == (0.25, 0.8, 0.0, 0.0)
    assert_close(marker_in_original(arr, geo), (128, 38), tol=1)


@pytest.mark.parametrize("resize_mode", ["stretch", "letterbox"])
def test_normalised_round_trip(resize_mode):
    _, geo = preprocess(Image.new("RGB", (317, 123)), Preprocessing(96, 128, resize_mode=resize_mode))
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 317, 50), rng.uniform(0, 123, 50)
    xn, yn = geo.to_normalised(x, y)
    back_x, back_y = geo.to_original(xn, yn)
    np.testing.assert_allclose(back_x, x, atol=1e-9)
    np.testing.assert_allclose(back_y, y, atol=1e-9)
    # the original frame fills [0,1] in stretch and stays inside it in letterbox
    assert xn.min() >= 0 and xn.max() <= 1 and yn.min() >= 0 and yn.max() <= 1
    # scalars work too and follow the documented formula
    sx, sy = geo.to_original(0.5, 0.25)
    assert float(sx) == pytest.approx((0.5 * 128 - geo.pad_x) / geo.scale_x)
    assert float(sy) == pytest.approx((0.25 * 96 - geo.pad_y) / geo.scale_y)


@pytest.mark.parametrize("pixel_scale, low, high", [("unit", 0.0, 1.0), ("raw", 0.0, 255.0), ("symmetric", -1.0, 1.0)])
def test_pixel_scale_ranges(pixel_scale, low, high):
    img = Image.new("RGB", (4, 4), (0, 51, 255))
    arr, _ = preprocess(img, Preprocessing(4, 4, pixel_scale=pixel_scale))
    assert arr.dtype == np.float32
    assert arr[..., 0].min() == pytest.approx(low) and arr[..., 2].max() == pytest.approx(high)
    assert arr[0, 0, 1] == pytest.approx(low + (high - low) * 51 / 255)


def test_preprocess_requires_rgb():
    with pytest.raises(ValueError, match="RGB"):
        preprocess(Image.new("L", (4, 4)), Preprocessing(4, 4))


# ---------------------------------------------------------------- draft mode

def test_draft_used_for_big_jpeg():
    data = gradient_jpeg((2000, 1500), (1400, 600, 1480, 680))
    prep = Preprocessing(height=48, width=64)
    drafted = decode(data, draft_size=(prep.width, prep.height))
    assert drafted.size == (250, 188)  # 1/8 scale: 1500 // 64 = 23 -> 8
    assert drafted.width >= 64 and drafted.height >= 48

    arr, geo = load_for_model(data, prep, max_pixels=BIG)
    full_arr, full_geo = preprocess(decode(data), prep)
    assert arr.shape == (48, 64, 3)
    assert geo == full_geo  # geometry refers to the full-size original
    assert np.mean(np.abs(arr - full_arr)) < 0.02
    assert_close(marker_in_original(arr, geo), (1440, 640), tol=8)


def test_no_draft_for_small_target_ratio_or_png():
    jpeg = gradient_jpeg((120, 90), (0, 0, 8, 8))
    assert decode(jpeg, draft_size=(64, 64)).size == (120, 90)
    png = encode(Image.new("RGB", (2000, 1000)), "PNG")
    assert decode(png, draft_size=(64, 64)).size == (2000, 1000)


@pytest.mark.parametrize("orientation", [6, 8])
def test_draft_stays_above_target_after_rotation(orientation):
    # stored 2000x400, displayed 400x2000. A draft request of the raw target (200, 40) against the stored
    # frame would pick 1/8 scale -> 250x50 -> displayed 50 wide, narrower than the target.
    data = gradient_jpeg((2000, 400), (0, 0, 8, 8), exif=exif_with_orientation(orientation))
    out = decode(data, draft_size=(200, 40))
    assert out.size == (200, 1000)  # 1/2 scale, rotated
    assert out.width >= 200 and out.height >= 40


@pytest.mark.parametrize("orientation", [1, 2, 3, 6, 8])
@pytest.mark.parametrize("resize_mode", ["stretch", "letterbox"])
def test_draft_geometry_exact_for_sizes_not_multiple_of_scale(orientation, resize_mode):
    # 1001x757 at 1/8 scale decodes to 126x95 while the original covers only 125.125x94.625 of it
    stored_marker = (880, 620, 960, 700)
    data = gradient_jpeg((1001, 757), stored_marker, exif=exif_with_orientation(orientation))
    prep = Preprocessing(height=64, width=80, resize_mode=resize_mode)
    assert max(decode(data, draft_size=(80, 64)).size) == 126

    arr, geo = load_for_model(data, prep, max_pixels=BIG)
    full_arr, full_geo = preprocess(decode(data), prep)
    assert geo == full_geo
    assert (geo.orig_width, geo.orig_height) == ((757, 1001) if orientation in (6, 8) else (1001, 757))
    assert_close(marker_in_original(arr, geo), marker_in_original(full_arr, full_geo), tol=2)


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        b"id,url\n1,http://example.com/a.jpg\n" * 20,
    ],
    ids=["random-bytes", "text-file"],
)
def test_not_an_image(data):
    with pytest.raises(ImageError, match=r"^not an image \(cannot identify image file\)$"):
        decode(data)


def test_empty_file():
    with pytest.raises(ImageError, match="^empty file$"):
        decode(b"")


def test_truncated_jpeg():
    data = gradient_jpeg((300, 200), (0, 0, 8, 8))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ImageError, match=r"^truncated image: image file is truncated"):
        decode(data[: len(data) // 2])


def test_truncated_png():
    data = encode(Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG")
    with pytest.raises(ImageError) as info:
        decode(data[: len(data) // 2])
    assert "truncated" in str(info.value) or "cannot decode image" in str(info.value)


def test_corrupt_body_reported():
    noise = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = bytearray(encode(Image.fromarray(noise), "PNG"))
    data[2000:2020] = b"\xff" * 20  # inside the compressed IDAT stream
    with pytest.raises(ImageError, match="^cannot decode image: broken data stream"):
        decode(bytes(data))


def test_too_many_pixels_checked_before_decoding():
    # the header claims 10000x5000 but there is no pixel data: only the header may be read
    with pytest.raises(ImageError, match=r"^too many pixels: 10000x5000 = 50000000 > limit 40000000$"):
        decode(png_header_only(10000, 5000), max_pixels=40_000_000)


def test_too_many_pixels_small_limit():
    with pytest.raises(ImageError, match=r"^too many pixels: 100x100 = 10000 > limit 5000$"):
        decode(encode(Image.new("RGB", (100, 100)), "PNG"), max_pixels=5000)
    assert decode(encode(Image.new("RGB", (100, 100)), "PNG"), max_pixels=10000).size == (100, 100)


def test_pillow_decompression_bomb_error_becomes_image_error():
    side = 20_000
    assert side * side > 2 * Image.MAX_IMAGE_PIXELS  # Pillow itself refuses this in Image.open
    with pytest.raises(ImageError, match="^too many pixels: "):
        decode(png_header_only(side, side), max_pixels=10**12)


def test_load_for_model_errors_are_image_errors():
    with pytest.raises(ImageError, match="empty file"):
        load_for_model(b"", Preprocessing(8, 8), max_pixels=BIG)


# ---------------------------------------------------------------- Preprocessing, hashing, end to end

@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(height=0, width=10), "height must be a positive integer"),
        (dict(height=10, width=-3), "width must be a positive integer"),
        (dict(height=10.0, width=10), "height must be a positive integer"),
        (dict(height=True, width=10), "height must be a positive integer"),
        (dict(height=10, width=10, resize_mode="crop"), "resize_mode must be one of"),
        (dict(height=10, width=10, pixel_scale="imagenet"), "pixel_scale must be one of"),
        (dict(height=10, width=10, pad_value=256), r"pad_value must be an integer in 0\.\.255"),
        (dict(height=10, width=10, pad_value=-1), r"pad_value must be an integer in 0\.\.255"),
    ],
)
def test_preprocessing_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Preprocessing(**kwargs)


def test_preprocessing_defaults():
    prep = Preprocessing(height=224, width=160)
    assert (prep.resize_mode, prep.pixel_scale, prep.pad_value) == ("stretch", "unit", 0)


def test_content_hash():
    assert content_hash(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert content_hash(b"") == hashlib.sha256(b"").hexdigest()


def test_load_for_model_end_to_end():
    data = encode(with_marker((40, 20), (30, 10, 34, 14)).convert("RGBA"), "PNG")
    arr, geo = load_for_model(data, Preprocessing(32, 32, resize_mode="letterbox", pixel_scale="symmetric"),
                              max_pixels=BIG)
    assert arr.shape == (32, 32, 3) and arr.dtype == np.float32
    assert arr.min() >= -1.0 and arr.max() <= 1.0
    assert (geo.orig_width, geo.orig_height, geo.pad_x, geo.pad_y) == (40, 20, 0.0, 8.0)
    assert_close(marker_in_original((arr + 1) * 127.5, geo), (32, 12), tol=1)


# ---------------------------------------------------------------- fast JPEG path (simplejpeg)

# The fast path's model inputs equal the Pillow path's (module docstring of shared.images.imaging): both run
# libjpeg-turbo at the same DCT scale with the same accurate DCT and fancy upsampling.
FAST_JPEG_TOLERANCE = 0.0

PHOTO_PREPS = [
    Preprocessing(60, 60),
    Preprocessing(128, 128, resize_mode="letterbox"),
    Preprocessing(224, 224),
    Preprocessing(96, 160, resize_mode="letterbox", pixel_scale="symmetric", pad_value=17),
    Preprocessing(700, 500, pixel_scale="raw"),  # larger than the photo: no DCT scaling
]


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A real photo at an odd size (DCT-scaled sizes then leave a fractional content box)."""
    return Image.fromarray(load_sample_image("china.jpg")).resize((601, 797), Image.Resampling.LANCZOS)


def counted(fn, *args, **kwargs):
    """(fn's result, how many items each decoder took meanwhile)."""
    before = decoder_counts()
    result = fn(*args, **kwargs)
    after = decoder_counts()
    return result, {k: after.get(k, 0) - before.get(k, 0) for k in ("fast_jpeg", "fast_jpeg_rejected", "pillow")}


def assert_paths_agree(data: bytes, prep: Preprocessing) -> tuple[np.ndarray, Geometry]:
    """The fast path decodes `data` and gives the Pillow path's input (within the tolerance) and Geometry."""
    (fast, fast_geo), used = counted(load_for_model, data, prep, max_pixels=BIG)
    assert used == {"fast_jpeg": 1, "fast_jpeg_rejected": 0, "pillow": 0}
    slow, slow_geo = load_for_model(data, prep, max_pixels=BIG, fast_jpeg=False)
    assert fast.shape == slow.shape and fast.dtype == slow.dtype == np.float32
    span = {"unit": 1.0, "symmetric": 2.0, "raw": 255.0}[prep.pixel_scale]  # the tolerance is in 0..1 units
    assert float(np.max(np.abs(fast - slow))) / span <= FAST_JPEG_TOLERANCE
    assert fast_geo == slow_geo
    return fast, fast_geo


def error_of(data: bytes, **kwargs) -> str:
    with pytest.raises(ImageError) as info:
        load_for_model(data, Preprocessing(64, 64), max_pixels=kwargs.pop("max_pixels", BIG), **kwargs)
    return str(info.value)


@pytest.mark.parametrize("prep", PHOTO_PREPS, ids=lambda p: f"{p.width}x{p.height}-{p.resize_mode}")
@pytest.mark.parametrize(
    "kind, save_kwargs",
    [
        ("RGB", {}),
        ("RGB", {"progressive": True}),
        ("RGB", {"subsampling": 0}),  # 4:4:4
        ("RGB", {"restart_marker_blocks": 4}),
        ("RGB", {"keep_rgb": True}),  # stored as RGB, not YCbCr (Adobe transform 0)
        ("L", {}),
        ("L", {"progressive": True}),
    ],
    ids=["baseline", "progressive", "444", "restart-markers", "rgb-colourspace", "grey", "grey-progressive"],
)
def test_the_fast_path_gives_the_pillow_paths_inputs_for_photo_jpegs(photo, kind, save_kwargs, prep):
    assert_paths_agree(encode(photo.convert(kind), "JPEG", quality=90, **save_kwargs), prep)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("resize_mode", ["stretch", "letterbox"])
def test_the_fast_path_applies_every_exif_orientation_and_maps_points_back(orientation, resize_mode):
    # stored 1001x757 with a marker centred at (920, 660); 1/8 scale leaves a fractional content box
    stored_w, stored_h, cx, cy = 1001, 757, 920, 660
    data = gradient_jpeg((stored_w, stored_h), (880, 620, 960, 700), exif=exif_with_orientation(orientation))
    arr, geo = assert_paths_agree(data, Preprocessing(height=64, width=80, resize_mode=resize_mode))
    displayed = {1: (cx, cy), 2: (stored_w - cx, cy), 3: (stored_w - cx, stored_h - cy), 4: (cx, stored_h - cy),
                 5: (cy, cx), 6: (stored_h - cy, cx), 7: (stored_h - cy, stored_w - cx), 8: (cy, stored_w - cx)}
    assert (geo.orig_width, geo.orig_height) == ((stored_h, stored_w) if orientation >= 5 else (stored_w, stored_h))
    assert_close(marker_in_original(arr, geo), displayed[orientation], tol=8)


def test_the_fast_path_handles_photos_with_exif_orientation(photo):
    for orientation in range(1, 9):
        data = encode(photo, "JPEG", quality=90, exif=exif_with_orientation(orientation))
        assert_paths_agree(data, Preprocessing(128, 96, resize_mode="letterbox"))


def test_only_jpegs_take_the_fast_path_and_it_can_be_switched_off(photo):
    jpeg, png = encode(photo, "JPEG", quality=90), encode(photo, "PNG")
    prep = Preprocessing(32, 32)
    assert counted(load_for_model, jpeg, prep, max_pixels=BIG)[1] == {"fast_jpeg": 1, "fast_jpeg_rejected": 0,
                                                                      "pillow": 0}
    assert counted(load_for_model, jpeg, prep, max_pixels=BIG, fast_jpeg=False)[1]["pillow"] == 1
    assert counted(load_for_model, png, prep, max_pixels=BIG)[1] == {"fast_jpeg": 0, "fast_jpeg_rejected": 0,
                                                                     "pillow": 1}
    assert counted(decode_rgb, jpeg, max_pixels=BIG)[1]["pillow"] == 1  # decode_rgb stays Pillow-only


@pytest.mark.parametrize("size", [(5, 7), (7, 3)])
def test_jpegs_under_eight_pixels_stay_with_pillow(size):
    data = encode(Image.new("RGB", size, (10, 200, 30)), "JPEG", quality=95)
    (arr, _), used = counted(load_for_model, data, Preprocessing(4, 4), max_pixels=BIG)
    assert used == {"fast_jpeg": 0, "fast_jpeg_rejected": 0, "pillow": 1}
    assert np.array_equal(arr, load_for_model(data, Preprocessing(4, 4), max_pixels=BIG, fast_jpeg=False)[0])


def test_a_cmyk_jpeg_is_decoded_by_pillow_with_the_same_result(photo):
    data = encode(photo.convert("CMYK"), "JPEG", quality=90)
    (arr, geo), used = counted(load_for_model, data, Preprocessing(64, 64), max_pixels=BIG)
    assert used == {"fast_jpeg": 0, "fast_jpeg_rejected": 0, "pillow": 1}
    slow, slow_geo = load_for_model(data, Preprocessing(64, 64), max_pixels=BIG, fast_jpeg=False)
    assert np.array_equal(arr, slow) and geo == slow_geo


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def soi_then_garbage(_: bytes) -> bytes:
    return b"\xff\xd8\xff" + np.random.default_rng(3).integers(0, 256, 4000, dtype=np.uint8).tobytes()


def without_eoi(data: bytes) -> bytes:
    return data[:-2]


@pytest.mark.parametrize(
    "breakage, message",
    [
        (truncated, r"^truncated image: image file is truncated"),
        (without_eoi, r"^truncated image: image file is truncated"),
        (soi_then_garbage, r"^not an image \(cannot identify image file\)$"),
        (lambda data: b"", r"^empty file$"),
    ],
    ids=["truncated", "no-EOI", "garbage-after-SOI", "zero-size"],
)
@pytest.mark.parametrize("mode", ["RGB", "CMYK"])
def test_broken_jpegs_keep_the_pillow_paths_error_messages(photo, breakage, message, mode):
    data = breakage(encode(photo.convert(mode), "JPEG", quality=90, progressive=mode == "RGB"))
    fast_message, used = counted(error_of, data)
    assert fast_message == error_of(data, fast_jpeg=False)
    assert used["fast_jpeg"] == 0
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ImageError, match=message):
        load_for_model(data, Preprocessing(64, 64), max_pixels=BIG)


def test_corrupt_jpeg_data_gives_the_pillow_paths_result_or_error(photo):
    # libjpeg-turbo warns about most corruptions (the fast path then hands the bytes to Pillow, which decodes
    # them as before); either way the outcome must equal the Pillow path's
    data = encode(photo, "JPEG", quality=90)
    rng = np.random.default_rng(4)
    outcomes = []
    for _ in range(40):
        bad = bytearray(data)
        pos, n = int(rng.integers(700, len(data) - 40)), int(rng.integers(1, 30))
        bad[pos:pos + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        results = []
        for fast_jpeg in (True, False):
            try:
                results.append(load_for_model(bytes(bad), Preprocessing(64, 64), max_pixels=BIG, fast_jpeg=fast_jpeg))
            except ImageError as exc:
                results.append(str(exc))
        if isinstance(results[0], str) or isinstance(results[1], str):
            assert results[0] == results[1]
        else:
            assert np.array_equal(results[0][0], results[1][0]) and results[0][1] == results[1][1]
        outcomes.append(type(results[0]).__name__)
    assert "tuple" in outcomes  # some corruptions still decode


def jpeg_header_claiming(width: int, height: int) -> bytes:
    """A JPEG whose SOF claims ``width`` x ``height`` and whose scan data is almost entirely missing."""
    data = encode(Image.new("RGB", (16, 16), GREY), "JPEG", quality=90)
    sof = data.index(b"\xff\xc0")
    patched = data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9:]
    return patched[: patched.index(b"\xff\xda") + 20]


def test_too_many_pixels_is_checked_before_the_fast_path_decodes():
    data = jpeg_header_claiming(10000, 5000)
    message, used = counted(error_of, data, max_pixels=40_000_000)
    assert message == "too many pixels: 10000x5000 = 50000000 > limit 40000000"
    assert used == {"fast_jpeg": 0, "fast_jpeg_rejected": 0, "pillow": 0}  # nothing was decoded

    real = encode(Image.new("RGB", (100, 100), GREY), "JPEG")
    message, used = counted(error_of, real, max_pixels=5000)
    assert message == "too many pixels: 100x100 = 10000 > limit 5000"
    assert used == {"fast_jpeg": 0, "fast_jpeg_rejected": 0, "pillow": 0}


def test_the_fast_path_gives_the_same_inputs_from_several_threads(photo):
    blobs = [encode(photo.rotate(angle), "JPEG", quality=90) for angle in range(0, 40, 5)]
    prep = Preprocessing(96, 96)
    serial = [load_for_model(b, prep, max_pixels=BIG, fast_jpeg=False)[0] for b in blobs]
    with ThreadPoolExecutor(max_workers=2) as pool:
        threaded = list(pool.map(lambda b: load_for_model(b, prep, max_pixels=BIG)[0], blobs * 2))
    assert all(np.array_equal(a, b) for a, b in zip(threaded, serial * 2))
