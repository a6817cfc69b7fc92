import os

import pytest

from shared.core.paths import OutsideDataRoots, resolve_inside


@pytest.fixture
def roots(tmp_path):
    a, b = tmp_path / "crawl", tmp_path / "uploads"
    (a / "2026-11-23").mkdir(parents=True)
    b.mkdir()
    (a / "2026-11-23" / "x.jpg").write_bytes(b"x")
    (b / "y.jpg").write_bytes(b"y")
    (tmp_path / "secret.txt").write_text("no")
    return (a.resolve(), b.resolve())


def test_relative_paths_are_tried_under_each_root(roots):
    assert resolve_inside(roots, "2026-11-23/x.jpg") == roots[0] / "2026-11-23" / "x.jpg"
    assert resolve_inside(roots, "y.jpg") == roots[1] / "y.jpg"


def test_absolute_path_inside_a_root(roots):
    assert resolve_inside(roots, str(roots[1] / "y.jpg")) == roots[1] / "y.jpg"


def test_missing_file_inside_a_root_resolves_for_a_clear_not_found(roots):
    assert resolve_inside(roots, "2026-11-23/missing.jpg") == roots[0] / "2026-11-23" / "missing.jpg"


@pytest.mark.parametrize("uri", ["0" * 300, "2026-11-23/" + "x" * 300 + ".jpg", "a/" * 2100])
def test_a_path_the_file_system_cannot_look_up_is_refused_not_raised(roots, uri):
    # found by schemathesis: a 300-character manifest name made Path.exists raise ENAMETOOLONG (a 500)
    with pytest.raises(OutsideDataRoots, match="cannot look up") as refused:
        resolve_inside(roots, uri)
    assert str(roots[0]) not in str(refused.value)


@pytest.mark.parametrize("uri", ["../secret.txt", "2026-11-23/../../secret.txt", "/etc/passwd",
                                 "s3://bucket/x.jpg", ""])
def test_escapes_are_refused(roots, uri):
    with pytest.raises(OutsideDataRoots):
        resolve_inside(roots, uri)


def test_symlink_out_of_a_root_is_refused(roots, tmp_path):
    os.symlink(tmp_path / "secret.txt", roots[0] / "link.jpg")
    with pytest.raises(OutsideDataRoots, match="outside the data roots"):
        resolve_inside(roots, "link.jpg")
