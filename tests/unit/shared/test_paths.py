import os

import pytest

from shared.core.paths import OutsideDataRoots, object_inside, object_root, resolve_inside, split_roots


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


def test_a_root_list_keeps_s3_uris_whole_though_colons_separate_its_entries():
    assert split_roots("/srv/crawl:s3://crawl-bucket/2026/::/srv/more:s3://b2") == [
        "/srv/crawl", "s3://crawl-bucket/2026/", "/srv/more", "s3://b2"]


@pytest.mark.parametrize("raw, normal", [("s3://crawl-bucket/2026", "s3://crawl-bucket/2026/"),
                                         ("S3://crawl-bucket//2026/x/", "s3://crawl-bucket/2026/x/"),
                                         ("s3://crawl-bucket", "s3://crawl-bucket/"),
                                         ("gs://crawl-bucket/2026", "gs://crawl-bucket/2026/")])
def test_an_object_root_is_a_folder_prefix(raw, normal):
    assert object_root(raw) == normal


@pytest.mark.parametrize("raw", ["ftp://bucket/x", "s3://Bad_Bucket/x", "s3:///x", "s3://bucket/a/../b"])
def test_an_unusable_object_root_is_refused(raw):
    with pytest.raises(ValueError):
        object_root(raw)


PREFIXES = ("s3://crawl-bucket/2026/", "s3://other-bucket/")


@pytest.mark.parametrize("uri", ["s3://crawl-bucket/2026/a.jpg", "s3://crawl-bucket/2026/x/y z.jpg",
                                 "s3://other-bucket/anything/b.png"])
def test_an_object_under_an_allowed_prefix_is_read(uri):
    assert object_inside(PREFIXES, uri) == uri


@pytest.mark.parametrize("uri, reason", [
    ("s3://crawl-bucket/2025/a.jpg", "outside the data roots"),
    ("s3://crawl-bucket/2026-old/a.jpg", "outside the data roots"),  # a prefix is a folder, not a string start
    ("s3://third-bucket/2026/a.jpg", "outside the data roots"),
    ("s3://crawl-bucket/2026/../2025/a.jpg", "'..'"),
    ("s3://crawl-bucket/2026/./a.jpg", "'..'"),
    ("s3://crawl-bucket/2026/", "no key"),
    ("s3://crawl-bucket", "no key"),
])
def test_an_object_outside_the_allowed_prefixes_is_refused(uri, reason):
    with pytest.raises(OutsideDataRoots, match=reason.replace(".", r"\.")):
        object_inside(PREFIXES, uri)


def test_no_object_is_read_when_no_prefix_is_allowed():
    with pytest.raises(OutsideDataRoots, match="outside the data roots"):
        object_inside((), "s3://crawl-bucket/2026/a.jpg")
