"""The one manifest reader (shared/images/manifests.py): every kind, bounded pieces, errors naming the field."""
import gzip

import pandas as pd
import pytest

from shared.core.errors import InvalidRequest
from shared.images.manifests import iter_manifest, read_columns


def _write(path, frame):
    name = path.name
    if name.endswith(".parquet"):
        frame.to_parquet(path)
    elif name.endswith(".csv.gz"):
        with gzip.open(path, "wt") as out:
            frame.to_csv(out, index=False)
    else:
        frame.to_csv(path, index=False, sep="\t" if name.endswith(".tsv") else ",")


@pytest.mark.parametrize("name", ["items.csv", "items.csv.gz", "items.tsv", "items.parquet", "ITEMS.CSV"])
def test_every_manifest_kind_gives_the_same_items(tmp_path, name):
    frame = pd.DataFrame({"id": [f"sku-{i}" for i in range(12)], "image": [f"img/{i}.jpg" for i in range(12)],
                          "views": range(12)})
    _write(tmp_path / name, frame)
    items = [item for piece in iter_manifest(tmp_path / name, "id", "image") for item in piece]
    assert items == [(f"sku-{i}", str(tmp_path / "img" / f"{i}.jpg")) for i in range(12)]


def test_pieces_are_bounded(tmp_path):
    _write(tmp_path / "m.csv", pd.DataFrame({"image": [f"{i}.jpg" for i in range(25)]}))
    sizes = [len(piece) for piece in read_columns(tmp_path / "m.csv", [("image_column", "image")], field="path",
                                                  rows=10)]
    assert sizes == [10, 10, 5]


@pytest.mark.parametrize("content, field, text", [
    (b"id,photo\na,b.jpg\n", "image_column", "manifest m.csv has no column 'image'; it has id, photo"),
    (b"image,photo\na,b.jpg\n", "id_column", "has no column 'id'"),
    (b"", "manifest", "manifest m.csv is empty"),
    (b'id,image\n"unterminated,a.jpg\n', "manifest", "cannot read the manifest m.csv"),
])
def test_bad_manifests_name_the_field_at_fault(tmp_path, content, field, text):
    (tmp_path / "m.csv").write_bytes(content)
    with pytest.raises(InvalidRequest) as err:
        list(iter_manifest(tmp_path / "m.csv", "id", "image"))
    assert err.value.details.get("field") == field
    assert text in err.value.message
    assert str(tmp_path) not in err.value.message


def test_an_unknown_kind_or_a_broken_parquet_file_is_refused_without_the_server_path(tmp_path):
    (tmp_path / "m.txt").write_text("id,image\na,b.jpg\n")
    with pytest.raises(InvalidRequest, match="a manifest must be a .csv, .csv.gz, .tsv or .parquet file: m.txt"):
        list(iter_manifest(tmp_path / "m.txt", "id", "image"))
    (tmp_path / "m.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InvalidRequest) as err:
        list(iter_manifest(tmp_path / "m.parquet", "id", "image"))
    assert "cannot read the manifest m.parquet" in err.value.message and str(tmp_path) not in err.value.message


@pytest.mark.parametrize("name", ["items.csv", "items.parquet"])
def test_an_embed_manifest_gives_each_item_its_category_and_empty_cells_none(tmp_path, name):
    frame = pd.DataFrame({"id": ["a", "b", "c"], "image": ["a.jpg", "b.jpg", "c.jpg"], "kind": ["shoe", None, "hat"]})
    _write(tmp_path / name, frame)
    items = [item for piece in iter_manifest(tmp_path / name, "id", "image", "kind") for item in piece]
    assert items == [("a", str(tmp_path / "a.jpg"), "shoe"), ("b", str(tmp_path / "b.jpg"), None),
                     ("c", str(tmp_path / "c.jpg"), "hat")]


def test_a_category_column_is_optional_unless_required(tmp_path):
    _write(tmp_path / "m.csv", pd.DataFrame({"id": ["a"], "image": ["a.jpg"]}))
    items = [i for piece in iter_manifest(tmp_path / "m.csv", "id", "image", "category", category_required=False)
             for i in piece]
    assert items == [("a", str(tmp_path / "a.jpg"), None)]
    with pytest.raises(InvalidRequest) as err:
        list(iter_manifest(tmp_path / "m.csv", "id", "image", "category"))
    assert err.value.details["field"] == "category_column" and "no column 'category'" in err.value.message
