"""shared/models/drift.py: PSI and KS with known values, summaries streamed in bounded memory."""
import math

import numpy as np
import pytest

from shared.models import drift


def test_psi_of_equal_shares_is_zero_and_of_known_shares_is_the_textbook_value():
    assert drift.psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    expected = 0.4 * math.log(0.9 / 0.5) + (-0.4) * math.log(0.1 / 0.5)
    assert drift.psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(expected)
    assert drift.psi([1, 1], [9, 1]) == pytest.approx(expected)  # counts are normalized to shares


def test_psi_stays_finite_when_a_bin_is_empty():
    value = drift.psi([0.5, 0.5], [1.0, 0.0])
    assert math.isfinite(value)
    assert value == pytest.approx(0.5 * math.log(1 / 0.5) + (1e-4 - 0.5) * math.log(1e-4 / 0.5))


def test_ks_statistics_with_known_values():
    assert drift.ks_statistic([1, 2, 3], [4, 5, 6]) == 1.0
    assert drift.ks_statistic([1, 2, 3], [1, 2, 3]) == 0.0
    assert drift.ks_statistic([1, 2, 3, 4], [3, 4, 5, 6]) == 0.5
    assert drift.ks_from_shares([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.4)
    assert drift.ks_from_shares([0.25] * 4, [0.25] * 4) == 0.0


def test_quantile_edges_are_distinct_deciles_and_values_on_an_edge_fall_in_the_bin_above():
    assert drift.quantile_edges(np.arange(11)) == [float(i) for i in range(1, 10)]
    assert drift.quantile_edges([1.0] * 5 + [2.0] * 5) == [1.0, 1.5, 2.0]
    assert list(drift.bin_counts([0, 1, 1.5, 2, 3], [1.0, 2.0])) == [1, 2, 2]


def test_a_reservoir_keeps_a_fixed_size_uniform_sample_of_a_million_values():
    reservoir = drift.Reservoir(size=1000, seed=3)
    for start in range(0, 1_000_000, 10_000):
        reservoir.offer(np.arange(start, start + 10_000, dtype=float))
    sample = reservoir.sample()
    assert reservoir.seen == 1_000_000 and len(sample) == 1000 and reservoir.values.shape == (1000,)
    assert len(set(sample)) == 1000
    assert abs(np.median(sample) - 500_000) < 60_000  # a uniform sample, not the first or last thousand


def test_a_streamed_summary_counts_the_references_bins_exactly_in_bounded_memory():
    rng = np.random.default_rng(0)
    reference = drift.summarize("regression", [{"value": v} for v in rng.normal(0, 1, 2000)])
    streamed = drift.StreamingSummary("regression", reference, reservoir_size=256)
    values = rng.normal(0, 1, 50_000)
    for start in range(0, len(values), 1000):
        streamed.add([{"value": v} for v in values[start:start + 1000]])
    counts = drift.bin_counts(values, reference["numeric"]["value"]["edges"])
    assert streamed.bin_shares("value") == pytest.approx(list(counts / len(values)))
    assert streamed.reservoirs["value"].values.shape == (256,) and streamed.count == 50_000
    assert streamed.means()["value"] == pytest.approx(values.mean())
    summary = streamed.summary()["numeric"]["value"]
    assert len(summary["shares"]) == len(summary["edges"]) + 1 and sum(summary["shares"]) == pytest.approx(1)


def test_regression_drift_is_small_on_the_same_distribution_and_large_on_a_shifted_one():
    rng = np.random.default_rng(1)
    reference = drift.summarize("regression", [{"a": v, "b": v * 2} for v in rng.normal(0, 1, 3000)])

    def measured(shift):
        streamed = drift.StreamingSummary("regression", reference)
        streamed.add([{"a": v + shift, "b": v * 2} for v in rng.normal(0, 1, 5000)])
        return drift.drift(reference, streamed)

    same, shifted = measured(0.0), measured(1.0)
    assert same["statistic"] == "psi" and same["value"] < 0.05
    assert shifted["value"] > 0.5 and shifted["value"] == shifted["outputs"]["a"]["psi"]
    assert shifted["outputs"]["b"]["psi"] < 0.05 and shifted["outputs"]["a"]["ks"] > 0.3


def test_classification_drift_is_the_psi_of_the_predicted_labels_shares():
    def rows(labels):
        return [{"label": c, "confidence": 0.9, "p:a": 0.9 if c == "a" else 0.1, "p:b": 0.1 if c == "a" else 0.9}
                for c in labels]

    reference = drift.summarize("classification", rows("ab" * 50))
    assert reference["labels"] == {"a": 0.5, "b": 0.5}
    assert reference["mean_probabilities"] == pytest.approx({"a": 0.5, "b": 0.5})
    streamed = drift.StreamingSummary("classification", reference)
    streamed.add(rows("a" * 90 + "b" * 10))
    measured = drift.drift(reference, streamed)
    assert measured["value"] == pytest.approx(drift.psi([0.5, 0.5], [0.9, 0.1]), abs=1e-6)
    assert measured["outputs"]["label"]["a"] == {"reference_share": 0.5, "share": 0.9,
                                                 "reference_mean_probability": pytest.approx(0.5),
                                                 "mean_probability": pytest.approx(0.82)}


def test_a_classifier_predicting_a_class_the_reference_never_saw_drifts():
    reference = drift.summarize("classification", [{"label": "a"}] * 5 + [{"label": "b"}] * 5)
    streamed = drift.StreamingSummary("classification", reference)
    streamed.add([{"label": "c"}] * 10)
    assert drift.drift(reference, streamed)["value"] > 5
