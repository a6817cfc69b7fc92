"""CatalogIndex: exact answers equal brute force, category filters hold for every kind, approximate kinds find most
true neighbours, add/exclude/save/load keep their promises, and bad input says what is wrong."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from shared.search.vector_index import BuildParams, CatalogIndex, IndexInputError, resolve_kind

DIM = 64
CATEGORIES = ["shoes", "bags", None]
NAMED = ["shoes", "bags"]  # a search with category None searches every category: None is no filter
# small data: IVF needs nprobe below its list count (at most n / 39), so it probes few lists here
PARAMS = {
    "exact": BuildParams(kind="exact"),
    "ivf": BuildParams(kind="ivf", nprobe=4),
    "hnsw": BuildParams(kind="hnsw", hnsw_m=16, ef_construction=64, ef_search=32),
}


def normalised(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def random_vectors(n: int, seed: int = 0) -> np.ndarray:
    return normalised(np.random.default_rng(seed).standard_normal((n, DIM)))


def clustered_vectors(n: int, clusters: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = normalised(rng.standard_normal((clusters, DIM)))
    return normalised(centres[rng.integers(0, clusters, n)] + 0.15 * rng.standard_normal((n, DIM)))


def items(n: int, start: int = 0) -> list[str]:
    return [f"item-{i}" for i in range(start, start + n)]


def categories_for(n: int) -> list[str | None]:
    return [CATEGORIES[i % len(CATEGORIES)] for i in range(n)]


def brute_force(vectors: np.ndarray, ids: list[str], queries: np.ndarray, k: int) -> list[list[str]]:
    order = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]
    return [[ids[i] for i in row] for row in order]


def hit_ids(rows) -> list[list[str]]:
    return [[hit.item_id for hit in row] for row in rows]


def recall(found: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


@pytest.fixture(scope="module")
def catalogs() -> dict[str, tuple[CatalogIndex, np.ndarray, list[str], list]]:
    """One index per kind over the same 2,000 random vectors in three categories (None among them)."""
    vectors, ids, cats = random_vectors(2000), items(2000), categories_for(2000)
    return {kind: (CatalogIndex.build(ids, cats, vectors, params), vectors, ids, cats)
            for kind, params in PARAMS.items()}


def test_an_exact_index_answers_as_brute_force_numpy_across_and_within_categories(catalogs):
    index, vectors, ids, cats = catalogs["exact"]
    queries = random_vectors(25, seed=1)
    hits = index.search(queries, 10)
    assert hit_ids(hits) == brute_force(vectors, ids, queries, 10)
    expected_scores = np.sort(queries @ vectors.T, axis=1)[:, ::-1][:, :10]
    np.testing.assert_allclose([[hit.score for hit in row] for row in hits], expected_scores, rtol=1e-5, atol=1e-5)
    for category in NAMED:
        rows = [i for i, c in enumerate(cats) if c == category]
        truth = brute_force(vectors[rows], [ids[i] for i in rows], queries, 10)
        assert hit_ids(index.search(queries, 10, category=category)) == truth


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_a_category_filter_never_returns_another_category_whatever_the_kind(catalogs, kind):
    index, _, _, _ = catalogs[kind]
    assert {entry["kind"] for entry in index.describe()["categories"]} == {kind}
    queries = random_vectors(30, seed=2)
    for category in NAMED:
        for row in index.search(queries, 10, category=category):
            assert len(row) == 10
            assert {hit.category for hit in row} == {category}
            assert all(hit.item_id.startswith("item-") for hit in row)


def test_a_category_not_in_the_index_gives_empty_lists(catalogs):
    index, _, _, _ = catalogs["hnsw"]
    assert index.search(random_vectors(3, seed=3), 5, category="hats") == [[], [], []]


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_find_nine_in_ten_true_neighbours_on_clustered_data(kind):
    both = clustered_vectors(2100)
    vectors, queries, ids = both[:2000], both[2000:], items(2000)  # queries: held out, from the same clusters
    index = CatalogIndex.build(ids, [None] * 2000, vectors, PARAMS[kind])
    assert index.describe()["categories"][0]["kind"] == kind
    assert recall(hit_ids(index.search(queries, 10)), brute_force(vectors, ids, queries, 10)) > 0.9


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_add_makes_new_items_findable_and_skips_ids_already_there(kind):
    vectors, ids = clustered_vectors(1200), items(1200)
    index = CatalogIndex.build(ids[:1000], [None] * 1000, vectors[:1000], PARAMS[kind])
    batch_ids = ids[1000:] + ids[:50] + ids[1000:1010]  # 200 new, 50 indexed, 10 repeated within the batch
    batch = np.concatenate([vectors[1000:], vectors[:50], vectors[1000:1010]])
    assert index.add(batch_ids, [None] * len(batch_ids), batch) == 200
    assert index.size == 1200 and index.contains("item-1100") and not index.contains("item-1200")
    top = index.search(vectors[1000:1200], 1)
    assert [row[0].item_id for row in top] == ids[1000:1200]
    assert index.add(ids[:10], [None] * 10, vectors[:10]) == 0
    found = [hit.item_id for row in index.search(vectors[:50], 1200) for hit in row]
    assert len(found) == 50 * 1200 and all(len(set(found[i:i + 1200])) == 1200 for i in range(0, len(found), 1200))


def test_add_of_a_new_category_makes_its_own_sub_index():
    vectors = random_vectors(700)
    index = CatalogIndex.build(items(600), ["a"] * 600, vectors[:600], BuildParams())
    assert index.add(items(100, 600), ["b"] * 100, vectors[600:]) == 100
    assert index.categories == ["a", "b"]
    hits = index.search(vectors[600:605], 3, category="b")
    assert [row[0].item_id for row in hits] == items(5, 600) and {h.category for r in hits for h in r} == {"b"}


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_exclude_removes_ids_asks_about_each_once_and_still_returns_k(kind, catalogs):
    index, vectors, ids, cats = catalogs[kind]
    queries = random_vectors(20, seed=7)
    asked: list[str] = []

    def exclude(candidates: list[str]) -> set[str]:
        asked.extend(candidates)
        return {item for item in candidates if int(item.split("-")[1]) % 4 != 0}  # three in four are "deleted"

    hits = index.search(queries, 10, exclude=exclude)
    assert len(asked) == len(set(asked))
    assert all(len(row) == 10 and all(int(hit.item_id.split("-")[1]) % 4 == 0 for hit in row) for row in hits)
    if kind == "exact":
        kept = [i for i in range(len(ids)) if i % 4 == 0]
        assert hit_ids(hits) == brute_force(vectors[kept], [ids[i] for i in kept], queries, 10)


def test_exclude_that_leaves_fewer_than_k_items_returns_all_that_are_left():
    vectors = random_vectors(30)
    index = CatalogIndex.build(items(30), ["a"] * 25 + ["b"] * 5, vectors, BuildParams())
    hits = index.search(vectors[:2], 4, category="b", exclude=lambda ids: {"item-25", "item-26", "item-27"})
    assert [sorted(hit.item_id for hit in row) for row in hits] == [["item-28", "item-29"]] * 2
    assert len(index.search(vectors[:1], 50)[0]) == 30  # k above the index's size: every item


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_save_and_load_give_identical_answers(kind, catalogs, tmp_path: Path):
    index, _, _, _ = catalogs[kind]
    folder = tmp_path / "catalog" / "v1"
    index.save(folder)
    index.save(folder)  # over an existing folder: replaced whole
    loaded = CatalogIndex.load(folder)
    assert loaded.describe() == index.describe() and loaded.params == index.params
    queries = random_vectors(20, seed=9)
    for category in [None, *NAMED, "hats"]:
        assert loaded.search(queries, 10, category=category) == index.search(queries, 10, category=category)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["v1"]  # no temporary folders left behind


def test_load_rejects_a_folder_whose_files_disagree(catalogs, tmp_path: Path):
    index, _, _, _ = catalogs["exact"]
    index.save(tmp_path / "v1")
    (tmp_path / "v1" / "sub-0000.ids.json").write_text('["one"]')
    with pytest.raises(ValueError, match="holds 667 vectors"):
        CatalogIndex.load(tmp_path / "v1")


def bad_calls():
    vectors = random_vectors(10)
    good = (items(10), [None] * 10, vectors)
    nan = vectors.copy()
    nan[3, 5] = np.nan
    return {
        "dimension": (lambda index: index.search(random_vectors(2)[:, :32], 5), "dimension 32; the index has"),
        "one-d query": (lambda index: index.search(vectors[0], 5), "use queries\\[None\\]"),
        "k zero": (lambda index: index.search(vectors[:1], 0), "k must be a whole number of at least 1"),
        "lengths": (lambda index: index.add(items(3), [None] * 2, vectors[:3]), "must have the same length"),
        "nan": (lambda index: CatalogIndex.build(*good[:2], nan, BuildParams()), "row 3 holds NaN or infinity"),
        "ints": (lambda index: index.add(items(2, 50), [None] * 2, np.ones((2, DIM), int)), "must hold floats"),
        "duplicate ids": (lambda index: CatalogIndex.build(["a", "b", "a"], [None] * 3, vectors[:3], BuildParams()),
                          "'a' appears more than once"),
        "id type": (lambda index: index.add([7], [None], vectors[:1]), "non-empty strings, not 7"),
        "category type": (lambda index: index.add(["x"], [3], vectors[:1]), "strings or None, not 3"),
        "unknown param": (lambda index: BuildParams(kind="exact", nprobes=3), "nprobes"),
        "bad kind": (lambda index: BuildParams.model_validate({"kind": "lsh"}), "kind"),
        "nprobe zero": (lambda index: BuildParams(nprobe=0), "nprobe"),
    }


@pytest.mark.parametrize("case", list(bad_calls()))
def test_bad_input_raises_value_error_saying_what_is_wrong(case):
    index = CatalogIndex.build(items(10), [None] * 10, random_vectors(10), BuildParams())
    call, message = bad_calls()[case]
    with pytest.raises(ValueError, match=message):
        call(index)
    assert index.size == 10


def test_index_input_errors_are_invalid_requests_naming_the_field():
    from shared.core.errors import InvalidRequest

    index = CatalogIndex.build(items(4), [None] * 4, random_vectors(4), BuildParams())
    with pytest.raises(InvalidRequest) as caught:
        index.search(random_vectors(1), -1)
    assert isinstance(caught.value, IndexInputError) and caught.value.details == {"field": "k"}


def test_kinds_resolve_by_size_and_small_ivf_sub_indexes_fall_back_to_exact():
    assert resolve_kind(19_999, BuildParams()) == ("exact", None)
    assert resolve_kind(20_000, BuildParams()) == ("hnsw", None)
    assert resolve_kind(100_000, BuildParams(approximate="ivf")) == ("ivf", 1265)  # about 4 * sqrt(n)
    assert resolve_kind(5_000, BuildParams(kind="ivf", nlist=1000)) == ("ivf", 128)  # at least 39 vectors a list
    assert resolve_kind(600, BuildParams(kind="ivf", nprobe=16)) == ("exact", None)  # 15 lists <= nprobe 16
    index = CatalogIndex.build(items(2000), ["big"] * 1950 + ["small"] * 50, random_vectors(2000), PARAMS["ivf"])
    assert [(c["category"], c["kind"]) for c in index.describe()["categories"]] == [("big", "ivf"), ("small", "exact")]


def test_progress_is_reported_up_to_the_total():
    seen: list[tuple[int, int]] = []
    CatalogIndex.build(items(20_000), [None] * 20_000, np.full((20_000, 4), 0.5, np.float32), BuildParams(),
                       progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (20_000, 20_000) and [d for d, _ in seen] == sorted(d for d, _ in seen) and len(seen) > 1


def test_searches_from_several_threads_agree_while_another_thread_adds(catalogs):
    index, vectors, ids, cats = catalogs["hnsw"]
    index = CatalogIndex.build(ids, cats, vectors, PARAMS["hnsw"])  # its own copy: this test adds to it
    queries = random_vectors(8, seed=11)
    expected = index.search(queries, 5, category="shoes")
    extra = random_vectors(600, seed=12)
    errors: list[BaseException] = []

    def searcher():
        try:
            for _ in range(30):
                assert index.search(queries, 5, category="shoes") == expected
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(4)]
    for t in threads:
        t.start()
    for start in range(0, 600, 100):
        index.add(items(100, 5000 + start), ["bags"] * 100, extra[start:start + 100])
    for t in threads:
        t.join()
    assert errors == [] and index.size == 2600


def test_a_batch_takes_faiss_blas_path_and_finds_what_single_queries_find():
    """Batches of 8 or more 1,280-wide queries are scanned as one BLAS product (faiss's threshold, which this module
    lowers from 128,000), single queries one at a time; both paths give brute force's answer."""
    import faiss

    from shared.search import vector_index

    dim, n = 1280, 3000
    assert faiss.cvar.distance_compute_blas_threshold == vector_index.BLAS_FROM_QUERIES_X_DIM <= 8 * dim
    rng = np.random.default_rng(7)
    vectors = normalised(np.abs(rng.standard_normal((n, dim))))  # post-ReLU-like: every cosine high, near ties
    queries = normalised(np.abs(rng.standard_normal((16, dim))))
    ids = items(n)
    index = CatalogIndex.build(ids, [None] * n, vectors, BuildParams(kind="exact"))
    batched = hit_ids(index.search(queries, 10))
    single = [hit_ids(index.search(queries[i:i + 1], 10))[0] for i in range(len(queries))]
    truth = brute_force(vectors, ids, queries, 10)
    assert recall(batched, truth) == 1.0 and recall(single, truth) == 1.0
    assert [set(row) for row in batched] == [set(row) for row in single]
