"""Reading an item's bytes and hashing them in the same pass (shared.images.imaging.read_and_hash)."""
import hashlib
import os

import pytest

from shared.images.imaging import ImageError, read_and_hash


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 * (1 << 20) + 7])
def test_bytes_and_hash_equal_a_plain_read_at_every_block_boundary(tmp_path, size):
    payload = os.urandom(size)
    path = tmp_path / "item.jpg"
    path.write_bytes(payload)
    data, digest = read_and_hash(path, max_bytes=None)
    assert bytes(data) == payload
    assert digest == hashlib.sha256(payload).hexdigest()


def test_a_file_over_the_limit_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(b"x" * 101)
    with pytest.raises(ImageError, match="file too large: 101 bytes > limit 100"):
        read_and_hash(path, max_bytes=100)
    assert bytes(read_and_hash(path, max_bytes=101)[0]) == b"x" * 101


@pytest.mark.parametrize("make, reason", [
    (lambda p: None, "file not found: shown.jpg"),
    (lambda p: p.mkdir(), "not a file: shown.jpg"),
])
def test_unreadable_paths_name_the_problem_and_the_path_as_given(tmp_path, make, reason):
    path = tmp_path / "x.jpg"
    make(path)
    with pytest.raises(ImageError, match=reason):
        read_and_hash(path, max_bytes=None, shown="shown.jpg")
