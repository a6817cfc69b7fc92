"""Datasets: manifests, globs and crawler folders; deterministic splits; dataset checks; the HTTP endpoint."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

import shared.images.datasets as datasets
from shared.core.errors import InvalidRequest
from shared.images.datasets import SPLITS, DatasetSpec, assign_splits, check_dataset, load_dataset, split_of
from tests.helpers import write_jpeg


@pytest.fixture
def data(tmp_path):
    root = (tmp_path / "data").resolve()
    root.mkdir()
    return root


@pytest.fixture
def roots(data):
    return (data,)


def write_csv(path, rows: list[dict], sep=","):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False, sep=sep)
    return path


# ----------------------------------------------------------------------------------------------- manifests

@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_manifest_with_targets_and_default_ids(roots, data, suffix):
    folder = data / "crawl" / "day1"
    for i in range(3):
        write_jpeg(folder / "img" / f"p{i}.jpg", seed=i)
    frame = pd.DataFrame({"image": [f"img/p{i}.jpg" for i in range(3)], "views": ["10", "20.5", "3e2"],
                          "x": [0.1, 0.2, 0.3]})
    manifest = folder / f"items{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(manifest, engine="pyarrow")
    else:
        frame.to_csv(manifest, index=False, sep="\t" if suffix == ".tsv" else ",")

    out = load_dataset(roots, DatasetSpec(path=f"crawl/day1/items{suffix}", target_columns=["views", "x"]))

    assert out["item_id"].tolist() == ["img/p0.jpg", "img/p1.jpg", "img/p2.jpg"]
    assert out["path"].tolist() == [str(folder / "img" / f"p{i}.jpg") for i in range(3)]
    assert out["error"].isna().all()
    assert out["views"].dtype == np.float64 and out["views"].tolist() == [10.0, 20.5, 300.0]
    assert out["x"].tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert "label" not in out.columns


def test_id_and_label_columns_absolute_images_and_parquet_numbers(roots, data):
    img = write_jpeg(data / "photos" / "a.jpg")
    (data / "m").mkdir()
    pd.DataFrame({"sku": [101, 102], "photo": [str(img), "../photos/a.jpg"], "style": ["baroque", "cubism"]}
                 ).to_parquet(data / "m" / "list.parquet")
    out = load_dataset(roots, DatasetSpec(path=str(data / "m" / "list.parquet"), image_column="photo",
                                          id_column="sku", label_column="style"))
    assert out["item_id"].tolist() == ["101", "102"]
    assert out["path"].tolist() == [str(img), str(img)]
    assert out["label"].tolist() == ["baroque", "cubism"]


def test_paths_outside_the_roots_are_rows_with_an_error(roots, data, tmp_path):
    write_jpeg(tmp_path / "secret.jpg")
    write_jpeg(data / "ok.jpg")
    write_csv(data / "items.csv", [{"image": "ok.jpg"}, {"image": "../secret.jpg"}, {"image": "/etc/passwd"}])
    out = load_dataset(roots, DatasetSpec(path="items.csv"))
    assert len(out) == 3
    assert out.loc[0, "path"] == str(data / "ok.jpg") and out.loc[0, "error"] is None
    for i in (1, 2):
        assert out.loc[i, "path"] is None
        assert "outside the data roots" in out.loc[i, "error"]


def test_missing_image_files_are_not_an_error_when_loading(roots, data):
    write_csv(data / "items.csv", [{"image": "later.jpg"}])
    out = load_dataset(roots, DatasetSpec(path="items.csv"))
    assert out["path"].tolist() == [str(data / "later.jpg")] and out["error"].isna().all()


# ----------------------------------------------------------------------------------------------- crawler folders

def test_crawler_folder_both_layouts(roots, data):
    crawl = data / "crawl"
    # shoes: CSV next to the folder; bags: <bags>/bags.csv inside; hats: <hats>/items.csv inside
    for cat, n in (("shoes", 3), ("bags", 2), ("hats", 1)):
        for i in range(n):
            write_jpeg(crawl / cat / f"{cat}{i}.jpg", seed=i)
    write_csv(crawl / "shoes.csv", [{"image": f"shoes{i}.jpg", "views": i} for i in range(3)])
    write_csv(crawl / "bags" / "bags.csv", [{"image": f"bags{i}.jpg", "views": 10 + i} for i in range(2)])
    write_csv(crawl / "hats" / "items.csv", [{"image": "hats0.jpg", "views": 99}])
    (crawl / "empty").mkdir()  # a folder without a CSV is not a category

    out = load_dataset(roots, DatasetSpec(path="crawl", target_columns=["views"]))

    assert sorted(out["item_id"]) == sorted(["shoes/shoes0.jpg", "shoes/shoes1.jpg", "shoes/shoes2.jpg",
                                             "bags/bags0.jpg", "bags/bags1.jpg", "hats/hats0.jpg"])
    assert (out["label"] == out["category"]).all()
    by_id = out.set_index("item_id")
    assert by_id.loc["shoes/shoes1.jpg", "label"] == "shoes"
    assert by_id.loc["shoes/shoes1.jpg", "path"] == str(crawl / "shoes" / "shoes1.jpg")
    assert by_id.loc["bags/bags1.jpg", "path"] == str(crawl / "bags" / "bags1.jpg")
    assert by_id.loc["hats/hats0.jpg", "views"] == 99.0
    assert by_id.loc["bags/bags0.jpg", "category"] == "bags"


def test_crawler_csv_beside_folder_may_name_files_with_the_category_prefix(roots, data):
    crawl = data / "crawl"
    write_jpeg(crawl / "shoes" / "a.jpg")
    write_csv(crawl / "shoes.csv", [{"image": "shoes/a.jpg"}])
    out = load_dataset(roots, DatasetSpec(path="crawl"))
    assert out["item_id"].tolist() == ["shoes/a.jpg"]
    assert out["path"].tolist() == [str(crawl / "shoes" / "a.jpg")]


def test_crawler_category_with_both_csvs_reads_the_inner_one_only(roots, data):
    crawl = data / "crawl"
    write_jpeg(crawl / "shoes" / "a.jpg")
    write_jpeg(crawl / "shoes" / "b.jpg", seed=1)
    write_csv(crawl / "shoes" / "shoes.csv", [{"image": "a.jpg"}, {"image": "b.jpg"}])
    write_csv(crawl / "shoes.csv", [{"image": "a.jpg"}])
    out = load_dataset(roots, DatasetSpec(path="crawl"))
    assert out["item_id"].tolist() == ["shoes/a.jpg", "shoes/b.jpg"]
    assert out["manifest"].tolist() == [str(crawl / "shoes" / "shoes.csv")] * 2


def test_crawler_folder_with_label_column_keeps_category(roots, data):
    crawl = data / "crawl"
    write_jpeg(crawl / "shoes" / "a.jpg")
    write_csv(crawl / "shoes" / "shoes.csv", [{"image": "a.jpg", "style": "sporty"}])
    out = load_dataset(roots, DatasetSpec(path="crawl", label_column="style"))
    assert out["label"].tolist() == ["sporty"] and out["category"].tolist() == ["shoes"]


# ----------------------------------------------------------------------------------------------- globs

def test_glob_of_manifests_is_concatenated(roots, data):
    for day, n in (("2026-11-01", 2), ("2026-11-02", 3), ("2026-10-31", 4)):
        for i in range(n):
            write_jpeg(data / "crawl" / day / f"{i}.jpg", seed=i)
        write_csv(data / "crawl" / day / "items.csv",
                  [{"sku": f"{day}-{i}", "image": f"{i}.jpg", "views": i} for i in range(n)])
    out = load_dataset(roots, DatasetSpec(path="crawl/2026-11-*/items.csv", id_column="sku",
                                          target_columns=["views"]))
    assert out["item_id"].tolist() == ["2026-11-01-0", "2026-11-01-1",
                                       "2026-11-02-0", "2026-11-02-1", "2026-11-02-2"]
    assert out["path"].tolist()[2] == str(data / "crawl" / "2026-11-02" / "0.jpg")
    assert out["manifest"].nunique() == 2


def test_glob_of_plain_crawl_folders(roots, data):
    for day in ("2026-11-01", "2026-11-02"):
        write_jpeg(data / "crawl" / day / "a.jpg")
        write_csv(data / "crawl" / day / "items.csv", [{"image": "a.jpg", "views": 1}])
    out = load_dataset(roots, DatasetSpec(path="crawl/2026-11-*", target_columns=["views"]))
    assert out["path"].tolist() == [str(data / "crawl" / d / "a.jpg") for d in ("2026-11-01", "2026-11-02")]


def test_glob_absolute_pattern_and_links_out_of_the_roots(roots, data, tmp_path):
    write_csv(data / "a" / "items.csv", [{"image": "x.jpg"}])
    out = load_dataset(roots, DatasetSpec(path=str(data / "*" / "items.csv")))
    assert out["path"].tolist() == [str(data / "a" / "x.jpg")]
    write_csv(tmp_path / "elsewhere.csv", [{"image": "y.jpg"}])
    (data / "b").mkdir()
    (data / "b" / "items.csv").symlink_to(tmp_path / "elsewhere.csv")
    with pytest.raises(InvalidRequest) as err:
        load_dataset(roots, DatasetSpec(path="*/items.csv"))
    assert err.value.details["field"] == "path" and "outside the data roots" in err.value.message


def test_glob_matching_nothing(roots, data):
    with pytest.raises(InvalidRequest) as err:
        load_dataset(roots, DatasetSpec(path="crawl/2030-*/items.csv"))
    assert err.value.details["field"] == "path" and "nothing matches" in err.value.message


# ----------------------------------------------------------------------------------------------- spec errors

@pytest.mark.parametrize("spec_kw, field, text", [
    ({"path": "nope.csv"}, "path", "not found"),
    ({"path": "../outside.csv"}, "path", "outside the data roots"),
    ({"path": "items.csv", "image_column": "photo"}, "image_column", "no column 'photo'"),
    ({"path": "items.csv", "id_column": "sku"}, "id_column", "no column 'sku'"),
    ({"path": "items.csv", "label_column": "style"}, "label_column", "no column 'style'"),
    ({"path": "items.csv", "target_columns": ["views", "likes"]}, "target_columns", "no column 'likes'"),
    ({"path": "items.csv", "target_columns": ["name"]}, "target_columns", "not numeric: 'bob'"),
    ({"path": "items.csv", "target_columns": ["big"]}, "target_columns", "infinite"),
    ({"path": "header_only.csv"}, "path", "no rows"),
    ({"path": "holes.csv"}, "image_column", "empty 'image' values (rows 2)"),
    ({"path": "notes.txt"}, "path", "a manifest must be a .csv, .csv.gz, .tsv or .parquet file: notes.txt"),
    ({"path": "folder"}, "path", "not a crawler folder"),
    ({"path": "items.csv", "target_columns": ["views", "views"]}, "target_columns", "twice"),
])
def test_spec_errors_name_the_field(roots, data, tmp_path, spec_kw, field, text):
    (tmp_path / "outside.csv").write_text("image\na.jpg\n")
    write_csv(data / "items.csv", [{"image": "a.jpg", "views": 1, "name": "bob", "big": "inf"}])
    (data / "header_only.csv").write_text("image,views\n")
    (data / "holes.csv").write_text("image\na.jpg\n\"\"\nb.jpg\n")
    (data / "notes.txt").write_text("image\na.jpg\n")
    (data / "folder" / "sub").mkdir(parents=True)
    with pytest.raises(InvalidRequest) as err:
        load_dataset(roots, DatasetSpec(**spec_kw))
    assert err.value.details.get("field") == field
    assert text in err.value.message


def test_spec_is_json_serialisable():
    spec = DatasetSpec(path="crawl", target_columns=["views"], label_column="category")
    assert json.loads(json.dumps(spec.model_dump())) == {"path": "crawl", "image_column": "image", "id_column": None,
                                                    "target_columns": ["views"], "label_column": "category"}
    assert DatasetSpec(**json.loads(json.dumps(spec.to_dict()))) == spec


# ----------------------------------------------------------------------------------------------- splits

def test_split_matches_the_documented_hash():
    for item_id in ("sku-1", "shoes/a.jpg", "ü-ñ"):
        digest = hashlib.sha256(("pageviews\x00" + item_id).encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2 ** 64
        expected = "holdout" if u < 0.1 else "validation" if u < 0.3 else "train"
        assert split_of(item_id, salt="pageviews", validation=0.2, holdout=0.1) == expected


def test_splits_are_deterministic_and_fractions_are_roughly_right():
    ids = [f"sku-{i}" for i in range(5000)]
    first = [split_of(i, salt="pageviews") for i in ids]
    assert first == [split_of(i, salt="pageviews") for i in ids]
    counts = {s: first.count(s) / len(ids) for s in SPLITS}
    assert counts["holdout"] == pytest.approx(0.1, abs=0.02)
    assert counts["validation"] == pytest.approx(0.1, abs=0.02)
    assert counts["train"] == pytest.approx(0.8, abs=0.03)
    wide = [split_of(i, salt="pageviews", validation=0.25, holdout=0.25) for i in ids]
    assert wide.count("holdout") / len(ids) == pytest.approx(0.25, abs=0.03)
    # another salt (model name) gives another, independent assignment
    other = [split_of(i, salt="artstyle") for i in ids]
    assert sum(a != b for a, b in zip(first, other)) > 1000


def test_holdout_depends_only_on_salt_id_and_holdout_fraction():
    ids = [f"x{i}" for i in range(2000)]
    a = {i for i in ids if split_of(i, salt="m", validation=0.05, holdout=0.1) == "holdout"}
    b = {i for i in ids if split_of(i, salt="m", validation=0.3, holdout=0.1) == "holdout"}
    assert a == b and len(a) > 100


def test_assign_splits_is_stable_when_new_items_arrive():
    old = pd.DataFrame({"item_id": [f"sku-{i}" for i in range(1000)]})
    night1 = assign_splits(old, salt="pageviews")
    assert "split" not in old.columns  # a copy
    grown = pd.concat([pd.DataFrame({"item_id": [f"new-{i}" for i in range(500)]}), old.iloc[::-1]],
                      ignore_index=True)
    night2 = assign_splits(grown, salt="pageviews")
    before = dict(zip(night1["item_id"], night1["split"]))
    after = dict(zip(night2["item_id"], night2["split"]))
    assert all(after[i] == s for i, s in before.items())
    assert set(night1["split"]) == set(SPLITS)


@pytest.mark.parametrize("validation, holdout", [(-0.1, 0.1), (0.5, 0.5), (0.1, 1.0)])
def test_bad_fractions(validation, holdout):
    with pytest.raises(ValueError):
        split_of("a", salt="m", validation=validation, holdout=holdout)


# ----------------------------------------------------------------------------------------------- check_dataset

SALT = "pageviews"


def _name_in_other_split(prefix: str, than: str, same: bool = False) -> str:
    target = split_of(than, salt=SALT)
    for k in range(1000):
        name = f"{prefix}{k}.jpg"
        if (split_of(name, salt=SALT) == target) == same:
            return name
    raise AssertionError("no such name")


@pytest.fixture
def messy(roots, data, tmp_path):
    """A dataset with every problem the check looks for."""
    folder = data / "set"
    rows = []
    views = [1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 7, 8, 9, 20000]
    for i in range(6):
        write_jpeg(folder / f"g{i}.jpg", seed=i, size=(40 + i, 30))
        rows.append(f"g{i}.jpg")
    orig = write_jpeg(folder / "orig.jpg", seed=100)
    leak = _name_in_other_split("copy", "orig.jpg")
    (folder / leak).write_bytes(orig.read_bytes())
    orig2 = write_jpeg(folder / "orig2.jpg", seed=101)
    twin = _name_in_other_split("twin", "orig2.jpg", same=True)
    (folder / twin).write_bytes(orig2.read_bytes())
    rows += ["orig.jpg", leak, "orig2.jpg", twin]
    (folder / "notimage.jpg").write_text("<html>404 not found</html>")
    good = write_jpeg(tmp_path / "scratch.jpg", seed=7, size=(120, 90)).read_bytes()
    (folder / "trunc.jpg").write_bytes(good[: len(good) // 2])
    write_jpeg(tmp_path / "outside.jpg")
    rows += ["gone.jpg", "notimage.jpg", "trunc.jpg"]
    rows_all = rows + ["../../outside.jpg"]
    assert len(rows_all) == len(views)
    labels = ["a"] * 11 + ["b"] * 3
    score = list(np.linspace(-1, 1, len(views)))
    delta = [-5.0] + [1.0] * 12 + [1000.0]
    write_csv(folder / "items.csv", [{"image": r, "views": v, "score": s, "delta": d, "label": lab}
                                     for r, v, s, d, lab in zip(rows_all, views, score, delta, labels)])
    return {"spec": DatasetSpec(path="set/items.csv", target_columns=["views", "score", "delta"],
                                label_column="label"),
            "leak": leak, "twin": twin, "views": views, "labels": labels, "ids": rows_all}


def test_check_report(roots, messy):
    report = check_dataset(roots, messy["spec"], max_pixels=10 ** 7, salt=SALT, threads=3)
    json.dumps(report, allow_nan=False)  # strictly JSON-serialisable

    assert report["rows"] == 14
    missing = {e["item_id"]: e["reason"] for e in report["missing_files"]["examples"]}
    assert report["missing_files"]["count"] == 2
    assert missing["gone.jpg"] == "file not found"
    assert "outside the data roots" in missing["../../outside.jpg"]

    unreadable = {e["item_id"]: e["reason"] for e in report["unreadable_images"]["examples"]}
    assert report["unreadable_images"]["count"] == 2
    assert unreadable["notimage.jpg"].startswith("not an image")
    assert unreadable["trunc.jpg"].startswith("truncated image")
    assert report["checked"]["decoded"] == 12

    dup = report["duplicates"]
    assert dup["groups"] == 2 and dup["items"] == 4
    assert sorted(map(sorted, dup["examples"])) == sorted([sorted(["orig.jpg", messy["leak"]]),
                                                           sorted(["orig2.jpg", messy["twin"]])])
    cross = dup["cross_split"]
    assert cross["count"] == 1 and cross["items"] == 2
    leak_items = {e["item_id"]: e["split"] for e in cross["examples"][0]["items"]}
    assert set(leak_items) == {"orig.jpg", messy["leak"]}
    assert leak_items["orig.jpg"] != leak_items[messy["leak"]]
    assert leak_items["orig.jpg"] == split_of("orig.jpg", salt=SALT)
    assert any("different splits" in w for w in report["warnings"])
    assert dup["label_conflicts"]["count"] == 0

    views = np.asarray(messy["views"], dtype=float)
    t = report["targets"]["views"]
    assert t["count"] == 14 and t["missing"] == 0
    assert t["mean"] == pytest.approx(views.mean())
    assert t["std"] == pytest.approx(views.std(ddof=1))
    assert (t["min"], t["max"]) == (1.0, 20000.0)
    assert t["p50"] == pytest.approx(np.percentile(views, 50))
    assert t["p95"] == pytest.approx(np.percentile(views, 95))
    assert t["skew"] > 2 and t["log1p_advisable"] is True
    assert report["targets"]["score"]["log1p_advisable"] is False
    assert abs(report["targets"]["score"]["skew"]) < 0.5
    assert report["targets"]["delta"]["skew"] > 2
    assert report["targets"]["delta"]["log1p_advisable"] is False  # negative values

    classes = report["classes"]
    assert classes["count"] == 2
    assert classes["per_class"]["a"] == {"count": 11, "fraction": pytest.approx(11 / 14)}
    assert classes["per_class"]["b"]["count"] == 3
    assert classes["imbalance_ratio"] == pytest.approx(11 / 3)

    expected = {s: sum(split_of(i, salt=SALT) == s for i in messy["ids"]) for s in SPLITS}
    assert {s: report["splits"][s]["count"] for s in SPLITS} == expected
    assert sum(expected.values()) == 14


def test_check_report_image_sizes(roots, messy):
    report = check_dataset(roots, messy["spec"], max_pixels=10 ** 7, salt=SALT)
    assert report["image_sizes"]["width"]["min"] == 40
    assert report["image_sizes"]["width"]["max"] == 64  # orig.jpg and copies: write_jpeg's default 64x48
    assert report["image_sizes"]["height"]["min"] == 30


def test_check_too_many_pixels_is_unreadable(roots, messy):
    report = check_dataset(roots, messy["spec"], max_pixels=40 * 30, salt=SALT)
    reasons = {e["item_id"]: e["reason"] for e in report["unreadable_images"]["examples"]}
    assert "g0.jpg" not in reasons  # exactly at the limit
    assert reasons["g1.jpg"].startswith("too many pixels")


def test_check_sample_decodes_only_that_many(roots, messy, monkeypatch):
    calls = []
    real = datasets.decode_rgb

    def counting(data, **kw):
        calls.append(1)
        return real(data, **kw)

    monkeypatch.setattr(datasets, "decode_rgb", counting)
    report = check_dataset(roots, messy["spec"], max_pixels=10 ** 7, salt=SALT, sample=3)
    assert len(calls) <= 3 and report["checked"]["decoded"] == len(calls)
    assert report["missing_files"]["count"] == 2  # every file is still stat'ed
    again = check_dataset(roots, messy["spec"], max_pixels=10 ** 7, salt=SALT, sample=3)
    assert again == report  # the same sample each time

    calls.clear()
    full = check_dataset(roots, messy["spec"], max_pixels=10 ** 7, salt=SALT)
    assert len(calls) == 12 and full["checked"]["decoded"] == 12


def test_check_sample_must_be_positive(roots, messy):
    with pytest.raises(InvalidRequest) as err:
        check_dataset(roots, messy["spec"], max_pixels=10 ** 7, sample=0)
    assert err.value.details["field"] == "sample"


def test_check_crawler_folder_class_balance(roots, data):
    crawl = data / "crawl"
    for cat, n in (("shoes", 8), ("bags", 2)):
        for i in range(n):
            write_jpeg(crawl / cat / f"{i}.jpg", seed=100 * len(cat) + i)
        write_csv(crawl / cat / "items.csv", [{"image": f"{i}.jpg"} for i in range(n)])
    report = check_dataset(roots, DatasetSpec(path="crawl"), max_pixels=10 ** 7)
    assert report["classes"]["per_class"] == {"shoes": {"count": 8, "fraction": 0.8},
                                              "bags": {"count": 2, "fraction": 0.2}}
    assert report["classes"]["imbalance_ratio"] == 4.0
    assert report["duplicates"]["groups"] == 0 and report["missing_files"]["count"] == 0
    assert report["unreadable_images"]["count"] == 0 and report["warnings"] == []
    per_split = report["classes"]["per_split"]
    assert sum(n for s in SPLITS for n in per_split[s].values()) == 10

    # the same photo in two categories
    (crawl / "bags" / "0.jpg").write_bytes((crawl / "shoes" / "3.jpg").read_bytes())
    report = check_dataset(roots, DatasetSpec(path="crawl"), max_pixels=10 ** 7)
    conflicts = report["duplicates"]["label_conflicts"]
    assert conflicts["count"] == 1
    assert sorted(e["item_id"] for e in conflicts["examples"][0]) == ["bags/0.jpg", "shoes/3.jpg"]
    assert any("different labels" in w for w in report["warnings"])


# ----------------------------------------------------------------------------------------------- HTTP

@pytest.fixture
def client(monkeypatch, tmp_path, data):
    from shared.core.config import get_settings
    from web import api_datasets
    from web.app import create_app

    monkeypatch.setenv("IMGQ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IMGQ_DATA_ROOTS", str(data))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("BROKER_URL", raising=False)
    get_settings.cache_clear()
    from shared.core.migrate import upgrade
    from tests.helpers import authorized_client

    app = create_app(get_settings())
    upgrade(get_settings().database_url)
    if "datasets" not in app.blueprints:
        app.register_blueprint(api_datasets.bp)
    yield authorized_client(app, "train")
    get_settings.cache_clear()


def test_http_check(client, messy):
    resp = client.post("/api/v1/datasets/check", json={
        "path": "set/items.csv", "target_columns": ["views"], "label_column": "label", "salt": SALT})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["rows"] == 14
    assert body["duplicates"]["cross_split"]["count"] == 1
    assert body["missing_files"]["count"] == 2 and body["unreadable_images"]["count"] == 2
    assert body["targets"]["views"]["log1p_advisable"] is True
    assert body["classes"]["per_class"]["b"]["count"] == 3

    sampled = client.post("/api/v1/datasets/check", json={"path": "set/items.csv", "sample": 2}).get_json()
    assert sampled["checked"]["decoded"] <= 2 and sampled["checked"]["sample"] == 2


@pytest.mark.parametrize("body, status, field", [
    ({}, 400, "path"),
    ({"path": "set/items.csv", "colour": "red"}, 400, "colour"),
    ({"path": "set/items.csv", "sample": 0}, 400, "sample"),
    ({"path": "set/items.csv", "target_columns": "views"}, 400, "target_columns"),
    ({"path": "set/missing.csv"}, 400, "path"),
    ({"path": "../../etc/passwd"}, 400, "path"),
    ({"path": "set/items.csv", "image_column": "photo"}, 400, "image_column"),
    ({"path": "set/items.csv", "target_columns": ["likes"]}, 400, "target_columns"),
    ({"path": "set/items.csv", "label_column": "nope"}, 400, "label_column"),
])
def test_http_bad_requests(client, messy, body, status, field):
    resp = client.post("/api/v1/datasets/check", json=body)
    assert resp.status_code == status, resp.get_data(as_text=True)
    error = resp.get_json()["error"]
    assert error["message"]
    fields = {p["field"] for p in error["problems"]}
    assert any(f and f.split(".")[0] == field for f in fields), error


def test_http_not_json(client):
    resp = client.post("/api/v1/datasets/check", data="path=x", headers={"Content-Type": "text/plain"})
    assert resp.status_code == 400 and "application/json" in resp.get_json()["error"]["message"]
    resp = client.post("/api/v1/datasets/check", json=["set/items.csv"])
    assert resp.status_code == 400 and "JSON object" in resp.get_json()["error"]["message"]


def test_one_description_of_a_dataset_is_shared_by_train_requests_and_checks():
    from pydantic import ValidationError

    from shared.schemas.training import DatasetCheckRequest, DatasetRef

    for extended in (DatasetRef, DatasetCheckRequest):
        assert issubclass(extended, DatasetSpec)
        with pytest.raises(ValidationError, match="path"):
            extended(path="")
        with pytest.raises(ValidationError, match="extra"):
            extended(path="x.csv", image_colum="typo")
    ref = DatasetRef(path="crawl", target_columns=["views"], added_since_last_run=True)
    assert ref.only_dataset() == DatasetSpec(path="crawl", target_columns=["views"])
