"""The on-disk cache of decoded, resized images: hits never decode, and always equal load_for_model."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

import shared.images.image_cache as image_cache
from shared.images.image_cache import DecodedImageCache
from shared.images.imaging import ImageError, Preprocessing, content_hash, load_for_model
from tests.helpers import write_jpeg

MAX_PIXELS = 10 ** 7


@pytest.fixture
def decodes(monkeypatch):
    """Counts calls of the decode function the cache uses."""
    calls = []
    real = image_cache.load_for_model

    def counting(data, prep, **kw):
        calls.append(content_hash(data))
        return real(data, prep, **kw)

    monkeypatch.setattr(image_cache, "load_for_model", counting)
    return calls


def write_png(path, size=(50, 30), seed=0):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    arr[..., 3] = np.where(arr[..., 3] > 128, 255, 40)
    Image.fromarray(arr, "RGBA").save(path, "PNG")
    return path


PREPS = [
    Preprocessing(32, 32),
    Preprocessing(24, 40, resize_mode="letterbox", pixel_scale="symmetric", pad_value=114),
    Preprocessing(48, 48, resize_mode="letterbox", pixel_scale="raw"),
    Preprocessing(20, 28, pixel_scale="symmetric"),
]


@pytest.mark.parametrize("prep", PREPS, ids=lambda p: f"{p.height}x{p.width}-{p.resize_mode}-{p.pixel_scale}")
@pytest.mark.parametrize("kind", ["jpeg", "png", "big-jpeg"])
def test_miss_then_hit_equals_load_for_model(tmp_path, decodes, prep, kind):
    if kind == "png":
        path = write_png(tmp_path / "a.png")
    else:
        path = write_jpeg(tmp_path / "a.jpg", size=(400, 260) if kind == "big-jpeg" else (64, 48), seed=3)
    expected, geometry = load_for_model(path.read_bytes(), prep, max_pixels=MAX_PIXELS)
    cache = DecodedImageCache(tmp_path / "cache", prep, max_pixels=MAX_PIXELS)

    first = cache.load(path)
    assert (cache.stats.hits, cache.stats.misses) == (0, 1) and len(decodes) == 1
    spent = cache.stats.decode_seconds
    assert spent > 0
    second = cache.load(str(path))
    assert (cache.stats.hits, cache.stats.misses) == (1, 1)
    assert len(decodes) == 1 and cache.stats.decode_seconds == spent

    for array, geom, digest in (first, second):
        assert array.dtype == np.float32 and array.shape == (prep.height, prep.width, 3)
        np.testing.assert_allclose(array, expected, atol=1e-6, rtol=0)
        assert geom == geometry
        assert digest == content_hash(path.read_bytes())

    # another cache object on the same folder (another process, the next night) hits too
    again = DecodedImageCache(tmp_path / "cache", prep, max_pixels=MAX_PIXELS)
    array, geom, _ = again.load(path)
    assert again.stats.hits == 1 and again.stats.misses == 0 and len(decodes) == 1
    np.testing.assert_allclose(array, expected, atol=1e-6, rtol=0)
    assert geom == geometry


def test_entries_are_small_sharded_and_leave_no_temp_files(tmp_path):
    path = write_jpeg(tmp_path / "a.jpg", size=(300, 200))
    prep = Preprocessing(32, 32)
    cache = DecodedImageCache(tmp_path / "cache", prep, max_pixels=MAX_PIXELS)
    _, _, digest = cache.load(path)
    entry = cache.entry_path(digest)
    assert entry.is_file() and entry.parent.name == digest[:2] and entry.name.startswith(digest)
    assert entry.stat().st_size < 32 * 32 * 3 + 2048  # uint8, not float32
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert files == [entry]


def test_same_bytes_at_another_path_is_a_hit(tmp_path, decodes):
    a = write_jpeg(tmp_path / "a.jpg", seed=1)
    b = tmp_path / "copy" / "b.jpg"
    b.parent.mkdir()
    b.write_bytes(a.read_bytes())
    cache = DecodedImageCache(tmp_path / "cache", Preprocessing(16, 16), max_pixels=MAX_PIXELS)
    cache.load(a)
    cache.load(b)
    assert (cache.stats.hits, cache.stats.misses, len(decodes)) == (1, 1, 1)


def test_changed_file_is_a_miss(tmp_path, decodes):
    path = write_jpeg(tmp_path / "a.jpg", seed=1)
    prep = Preprocessing(16, 16)
    cache = DecodedImageCache(tmp_path / "cache", prep, max_pixels=MAX_PIXELS)
    old, _, old_hash = cache.load(path)
    write_jpeg(path, seed=2)  # the crawler replaced the photo
    new, geom, new_hash = cache.load(path)
    assert (cache.stats.hits, cache.stats.misses, len(decodes)) == (0, 2, 2)
    assert new_hash != old_hash and not np.allclose(new, old)
    expected, expected_geom = load_for_model(path.read_bytes(), prep, max_pixels=MAX_PIXELS)
    np.testing.assert_allclose(new, expected, atol=1e-6, rtol=0)
    assert geom == expected_geom


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "wrong-shape"])
def test_corrupt_entry_is_a_miss_and_is_rewritten(tmp_path, decodes, damage):
    path = write_jpeg(tmp_path / "a.jpg", seed=1)
    prep = Preprocessing(16, 16)
    cache = DecodedImageCache(tmp_path / "cache", prep, max_pixels=MAX_PIXELS)
    _, _, digest = cache.load(path)
    entry = cache.entry_path(digest)
    good = entry.read_bytes()
    if damage == "garbage":
        entry.write_bytes(b"not a zip at all" * 10)
    elif damage == "truncated":
        entry.write_bytes(good[: len(good) // 2])
    elif damage == "empty":
        entry.write_bytes(b"")
    else:
        with open(entry, "wb") as fh:
            np.savez(fh, pixels=np.zeros((8, 8, 3), np.uint8), geometry=np.zeros(8))

    array, _, _ = cache.load(path)
    assert cache.stats.misses == 2 and cache.stats.hits == 0 and cache.stats.corrupt == 1 and len(decodes) == 2
    expected, _ = load_for_model(path.read_bytes(), prep, max_pixels=MAX_PIXELS)
    np.testing.assert_allclose(array, expected, atol=1e-6, rtol=0)
    assert entry.read_bytes() == good  # rewritten
    cache.load(path)
    assert cache.stats.hits == 1 and len(decodes) == 2


def test_different_preprocessing_uses_different_entries(tmp_path, decodes):
    path = write_jpeg(tmp_path / "a.jpg", size=(80, 40), seed=5)
    folder = tmp_path / "cache"
    stretch = DecodedImageCache(folder, Preprocessing(32, 32), max_pixels=MAX_PIXELS)
    letterbox = DecodedImageCache(folder, Preprocessing(32, 32, resize_mode="letterbox"), max_pixels=MAX_PIXELS)
    padded = DecodedImageCache(folder, Preprocessing(32, 32, resize_mode="letterbox", pad_value=255),
                               max_pixels=MAX_PIXELS)
    bigger = DecodedImageCache(folder, Preprocessing(40, 40), max_pixels=MAX_PIXELS)
    results = [c.load(path) for c in (stretch, letterbox, padded, bigger)]
    assert [c.stats.misses for c in (stretch, letterbox, padded, bigger)] == [1, 1, 1, 1]
    assert len(decodes) == 4 and len({c.folder for c in (stretch, letterbox, padded, bigger)}) == 4
    assert not np.allclose(results[0][0], results[1][0])
    assert not np.allclose(results[1][0], results[2][0])
    assert results[2][0][0, 0].tolist() == [1.0, 1.0, 1.0]  # white padding
    assert results[1][0][0, 0].tolist() == [0.0, 0.0, 0.0]

    # pixel scaling is applied after loading: a model differing only in pixel_scale shares the entries
    symmetric = DecodedImageCache(folder, Preprocessing(32, 32, pixel_scale="symmetric"), max_pixels=MAX_PIXELS)
    array, _, _ = symmetric.load(path)
    assert symmetric.stats.hits == 1 and len(decodes) == 4
    expected, _ = load_for_model(path.read_bytes(), Preprocessing(32, 32, pixel_scale="symmetric"),
                                 max_pixels=MAX_PIXELS)
    np.testing.assert_allclose(array, expected, atol=1e-6, rtol=0)
    assert array.min() < -0.5


def test_load_many_in_order_with_reasons(tmp_path, decodes):
    good = [write_jpeg(tmp_path / f"g{i}.jpg", seed=i) for i in range(5)]
    text = tmp_path / "page.jpg"
    text.write_text("<html>404</html>")
    full = write_jpeg(tmp_path / "full.jpg", size=(120, 90), seed=9).read_bytes()
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(full[: len(full) // 2])
    paths = [good[0], tmp_path / "gone.jpg", good[1], text, good[2], trunc, good[3], good[4], good[0], None]
    prep = Preprocessing(24, 24)
    cache = DecodedImageCache(tmp_path / "cache", prep, max_pixels=MAX_PIXELS)

    out = cache.load_many(paths, threads=3)

    assert len(out) == len(paths)
    for path, (array, geom, digest, error) in zip(paths, out):
        if path in good:
            assert error is None and digest == content_hash(path.read_bytes())
            expected, expected_geom = load_for_model(path.read_bytes(), prep, max_pixels=MAX_PIXELS)
            np.testing.assert_allclose(array, expected, atol=1e-6, rtol=0)
            assert geom == expected_geom
        else:
            assert array is None and geom is None and error
    assert out[1][3].startswith("file not found") and out[1][2] is None
    assert out[3][3].startswith("not an image") and out[3][2] == content_hash(text.read_bytes())
    assert out[5][3].startswith("truncated image")
    assert out[9] == (None, None, None, "no image path")
    assert cache.stats.hits + cache.stats.misses == 8  # the missing file is neither
    assert cache.stats.errors == 3

    # a second epoch decodes nothing, bad images included (their reason is remembered)
    before = len(decodes)
    spent = cache.stats.decode_seconds
    again = cache.load_many(paths, threads=3)
    assert len(decodes) == before and cache.stats.decode_seconds == spent
    assert [r[3] for r in again] == [r[3] for r in out]
    for (a, *_), (b, *_) in zip(out, again):
        assert (a is None and b is None) or np.array_equal(a, b)


def test_too_many_pixels_is_not_remembered_and_is_checked_on_hits(tmp_path, decodes):
    path = write_jpeg(tmp_path / "a.jpg", size=(100, 100))
    prep = Preprocessing(16, 16)
    small = DecodedImageCache(tmp_path / "cache", prep, max_pixels=5000)
    with pytest.raises(ImageError, match="too many pixels"):
        small.load(path)
    large = DecodedImageCache(tmp_path / "cache", prep, max_pixels=MAX_PIXELS)
    large.load(path)  # not a remembered failure: decoded now
    assert large.stats.misses == 1 and len(decodes) == 2
    with pytest.raises(ImageError, match="too many pixels"):
        small.load(path)  # a hit, still refused under the lower limit
    assert small.stats.hits == 1 and len(decodes) == 2


def test_max_bytes(tmp_path):
    path = write_jpeg(tmp_path / "a.jpg", size=(100, 100))
    cache = DecodedImageCache(tmp_path / "cache", Preprocessing(16, 16), max_pixels=MAX_PIXELS, max_bytes=100)
    with pytest.raises(ImageError, match="file too large"):
        cache.load(path)


def test_concurrent_loads_of_the_same_new_image(tmp_path):
    path = write_jpeg(tmp_path / "a.jpg", size=(200, 150))
    prep = Preprocessing(32, 32)
    expected, _ = load_for_model(path.read_bytes(), prep, max_pixels=MAX_PIXELS)
    caches = [DecodedImageCache(tmp_path / "cache", prep, max_pixels=MAX_PIXELS) for _ in range(4)]
    results, barrier = [None] * 4, threading.Barrier(4)

    def run(k):
        barrier.wait()
        results[k] = [caches[k].load(path)[0] for _ in range(20)]

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for arrays in results:
        assert len(arrays) == 20
        for array in arrays:
            np.testing.assert_allclose(array, expected, atol=1e-6, rtol=0)
    assert sum(c.stats.corrupt for c in caches) == 0
    assert sum(c.stats.hits for c in caches) >= 4 * 19
    assert not list((tmp_path / "cache").rglob(".tmp-*"))
