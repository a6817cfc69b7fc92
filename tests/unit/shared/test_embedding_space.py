"""Embedding space names (shared/models/embedding_space.py) and stored vectors (shared/models/vectors.py)."""
import numpy as np
import pytest

from shared.core.errors import InvalidRequest
from shared.models.embedding_space import EmbeddingSpace, parse_space, space_name
from shared.models.vectors import l2_normalize, vector_bytes, vectors_from_bytes


@pytest.mark.parametrize("space, parts", [
    ("catalog-embedder@3", EmbeddingSpace("catalog-embedder", 3, None, True)),
    ("category-model@2#dense_1", EmbeddingSpace("category-model", 2, "dense_1", True)),
    ("category-model@2#dense_1~raw", EmbeddingSpace("category-model", 2, "dense_1", False)),
    ("m.v2@2147483647~raw", EmbeddingSpace("m.v2", 2147483647, None, False)),
])
def test_a_space_name_parses_back_to_its_parts_and_its_parts_name_it(space, parts):
    assert parse_space(space) == parts
    assert space_name(parts.model, parts.version, parts.layer, parts.normalize) == space == parts.name
    assert parts.model_ref == f"{parts.model}@{parts.version}"


@pytest.mark.parametrize("space", [
    "", "model", "model@", "model@x", "model@0", "model@2147483648", "model@3#", "model@3#a/b", "model@3/raw",
    "model@3~RAW", "model@3#dense~raw~raw", ".hidden@1", "a@1#-layer", "m@3#" + "x" * 151, "m@1\n",
])
def test_a_malformed_space_is_refused_naming_the_field(space):
    with pytest.raises(InvalidRequest) as err:
        parse_space(space)
    assert err.value.details["field"] == "space"


def test_a_layer_a_space_cannot_hold_is_refused_when_naming_it():
    with pytest.raises(InvalidRequest) as err:
        space_name("m", 1, "block/conv", True)
    assert err.value.details["field"] == "layer"


def test_l2_normalisation_gives_unit_rows_and_reports_rows_without_a_direction():
    rows = np.array([[3.0, 4.0], [0.0, 0.0], [1e-20, 0.0], [np.nan, 1.0], [-2.0, 0.0]], dtype=np.float32)
    scaled, ok = l2_normalize(rows)
    assert ok.tolist() == [True, False, False, False, True]
    np.testing.assert_allclose(scaled[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(scaled[4], [-1.0, 0.0])
    assert scaled.dtype == np.float32 and scaled[1].tolist() == [0.0, 0.0]  # a zero row is left as it is
    np.testing.assert_allclose(np.linalg.norm(scaled[ok], axis=1), 1.0, atol=1e-6)


def test_stored_vectors_are_float32_little_endian_and_read_back_exactly():
    vectors = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    blobs = [vector_bytes(v) for v in vectors]
    assert blobs[0] == vectors[0].astype("<f4").tobytes() and len(blobs[0]) == 20
    assert np.array_equal(vectors_from_bytes(blobs, 5), vectors)
    with pytest.raises(ValueError, match="not 4 float32"):
        vectors_from_bytes(blobs, 4)
