"""worker.training.gate: the paired tests against known values, the smallest detectable difference, the guards and
the decision's words; no TensorFlow. A gate that went back to a bare difference of one metric fails here."""
from __future__ import annotations

import math

import numpy as np
import pytest

from shared.schemas.training import Gate
from worker.training import gate


def right(n: int, wrong: set[int]) -> np.ndarray:
    return np.array([i not in wrong for i in range(n)])


@pytest.mark.parametrize("b, c, p", [(5, 0, 1 / 32), (1, 0, 0.5), (0, 3, 1.0), (10, 2, 79 / 4096),
                                     (6, 5, 0.5), (20, 6, 0.0046777)])
def test_mcnemar_p_values_are_the_one_sided_binomial_tail_of_the_discordant_pairs(b, c, p):
    n = 300
    cand = right(n, set(range(b, b + c)))  # the candidate misses items b..b+c-1
    prod = right(n, set(range(b)))  # production misses items 0..b-1
    test = gate.mcnemar(cand, prod, 0.05)
    assert (test["candidate_only_right"], test["production_only_right"]) == (b, c)
    expected = sum(math.comb(b + c, k) for k in range(b, b + c + 1)) / 2 ** (b + c)
    assert test["p_value"] == pytest.approx(expected) == pytest.approx(p, rel=1e-4)
    assert test["significant"] == (expected <= 0.05)


def test_mcnemar_says_how_many_of_the_discordant_pairs_significance_needs():
    test = gate.mcnemar(right(270, {0, 1, 2, 3, 4}), right(270, set(range(5, 11))), 0.05)
    assert (test["candidate_only_right"], test["production_only_right"]) == (6, 5)
    assert test["candidate_wins_needed"] == 9  # P(X >= 9 | 11, 1/2) = 0.0327; P(X >= 8) = 0.113
    assert not test["significant"]


@pytest.mark.parametrize("alpha, pairs", [(0.05, 5), (0.01, 7), (0.5, 1), (0.03125, 5), (0.001, 10)])
def test_the_fewest_discordant_pairs_that_can_be_significant(alpha, pairs):
    assert gate.min_discordant_pairs(alpha) == pairs
    assert 0.5 ** pairs <= alpha < 0.5 ** (pairs - 1) or pairs == 1


def test_the_smallest_detectable_difference_is_the_fewest_pairs_over_the_holdout():
    test = gate.mcnemar(right(270, set()), right(270, set()), 0.05)
    assert test["smallest_detectable_difference"] == pytest.approx(5 / 270)
    assert test["p_value"] == 1.0 and test["candidate_wins_needed"] is None


def probabilities(labels: np.ndarray, predicted: np.ndarray, confidence: float = 0.9, classes: int = 3) -> np.ndarray:
    out = np.full((len(labels), classes), (1 - confidence) / (classes - 1))
    out[np.arange(len(labels)), predicted] = confidence
    return out


def classification_case(n: int, production_wrong: set[int], candidate_wrong: set[int], **probs):
    truth = np.arange(n) % 3
    wrong = (truth + 1) % 3

    def answers(missed, confidence=0.9):
        picked = np.where([i in missed for i in range(n)], wrong, truth)
        return probabilities(truth, picked, confidence)
    return truth, answers(candidate_wrong, probs.get("candidate", 0.9)), answers(production_wrong)


def test_a_candidate_one_item_better_on_270_is_kept_as_not_significant():
    truth, cand, prod = classification_case(270, set(range(20)), set(range(1, 20)))
    decision = gate.decide("classification", Gate(), truth, cand, prod)
    assert decision["improvement"] == pytest.approx(1 / 270)  # a bare difference would promote this
    assert decision["decision"] == "kept" and not decision["test"]["significant"]
    assert decision["test"]["p_value"] == pytest.approx(0.5)
    assert "not significant at 95%" in decision["reason"] and "McNemar" in decision["reason"]


def test_a_clearly_better_candidate_is_promoted_with_every_guard_held():
    truth, cand, prod = classification_case(270, set(range(40)), set(range(5)))
    decision = gate.decide("classification", Gate(min_improvement=0.05), truth, cand, prod,
                           shadow={"large_change_share": 0.13})
    assert decision["decision"] == "promoted", decision["reason"]
    assert decision["test"]["p_value"] < 1e-9
    assert [g["name"] for g in decision["guards"]] == ["log_loss", "worst_class_recall", "shadow_large_changes"]
    assert all(g["passed"] for g in decision["guards"]) and "guards held" in decision["reason"]


def test_equal_accuracy_with_a_much_worse_log_loss_is_kept_naming_the_guard():
    truth, _, prod = classification_case(270, set(range(20)), set())
    _, cand, _ = classification_case(270, set(range(20)), set(range(20)), candidate=0.4)
    decision = gate.decide("classification", Gate(), truth, cand, prod)
    [log_loss] = [g for g in decision["guards"] if g["name"] == "log_loss"]
    assert not log_loss["passed"] and log_loss["candidate"] > 2 * log_loss["production"]
    assert decision["decision"] == "kept" and "guard log_loss" in decision["reason"]


def test_a_significant_gain_is_still_kept_when_one_class_collapses():
    n = 300
    truth, _, prod = classification_case(n, set(range(60)), set())  # each class's recall 0.8
    cand_wrong = {i for i in range(n) if truth[i] == 2 and i < 90}  # every other class right, class 2 at 0.7
    _, cand, _ = classification_case(n, set(), cand_wrong)
    decision = gate.decide("classification", Gate(guards={"log_loss": None}), truth, cand, prod)
    assert decision["test"]["significant"]
    [recall] = decision["guards"]
    assert recall["name"] == "worst_class_recall" and not recall["passed"]
    assert (recall["production"], recall["candidate"]) == pytest.approx((0.8, 0.7))
    assert decision["decision"] == "kept" and "worst_class_recall" in decision["reason"]


def test_a_holdout_where_production_misses_too_few_items_says_it_is_too_small():
    truth, cand, prod = classification_case(270, {0, 1, 2}, set())
    decision = gate.decide("classification", Gate(), truth, cand, prod)
    assert decision["decision"] == "kept"
    assert "misses only 3 of 270" in decision["holdout_too_small"]
    assert "smallest detectable difference 0.01852" in decision["reason"]


def regression_case(n: int, candidate_noise: float, production_noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0, 100, (n, 1))
    return truth, truth + rng.normal(0, candidate_noise, (n, 1)), truth + rng.normal(0, production_noise, (n, 1))


def test_wilcoxon_on_per_item_errors_promotes_a_clearly_better_regressor():
    truth, cand, prod = regression_case(200, 2.0, 5.0)
    decision = gate.decide("regression", Gate(), truth, cand, prod)
    assert decision["test"]["name"] == "wilcoxon_signed_rank" and decision["test"]["p_value"] < 1e-6
    assert decision["decision"] == "promoted", decision["reason"]
    assert [g["name"] for g in decision["guards"]] == ["error_p90"]


def test_wilcoxon_p_value_matches_the_exact_distribution_on_a_small_sample():
    # differences 1..6 all in the candidate's favour: p = 1 / 2**6 (one of 64 equally likely sign patterns)
    test = gate.wilcoxon(np.zeros(6), np.arange(1, 7, dtype=float), 0.05)
    assert test["p_value"] == pytest.approx(1 / 64) and test["significant"]
    # all but the smallest in its favour: rank sum 20 of 21; P(W >= 20) = 2 / 64
    test = gate.wilcoxon(np.array([2, 0, 0, 0, 0, 0.0]), np.array([1, 2, 3, 4, 5, 6.0]), 0.05)
    assert test["p_value"] == pytest.approx(2 / 64)


def test_a_regressor_barely_better_on_average_is_not_significant():
    truth, cand, prod = regression_case(60, 5.0, 5.0, seed=3)
    cand = cand - 0.001 * np.sign(cand - truth)  # a hair closer on every item: mae improves by 0.001
    decision = gate.decide("regression", Gate(confidence=0.99), truth, cand[::-1].copy(), prod)
    assert decision["decision"] == "kept" and "not significant" in decision["reason"]


def test_the_error_p90_guard_keeps_a_regressor_whose_tail_got_worse():
    rng = np.random.default_rng(1)
    truth = rng.uniform(0, 100, (400, 1))
    prod = truth + rng.normal(0, 3.0, truth.shape)
    cand = truth + 0.5 * (prod - truth)
    cand[:50] = truth[:50] + 30.0  # an eighth of the items far off: the tail
    decision = gate.decide("regression", Gate(metric="mae"), truth, cand, prod)
    [p90] = decision["guards"]
    assert not p90["passed"] and p90["candidate"] > 1.1 * p90["production"]
    assert decision["decision"] == "kept" and "guard error_p90" in decision["reason"]


def test_keypoint_errors_are_point_distances_and_a_tiny_holdout_is_said_to_be_too_small():
    truth = np.array([[0.0, 0.0, 10.0, 10.0]])
    assert gate.item_errors("keypoints", truth + np.array([[3.0, 4.0, 0.0, 0.0]]), truth) == pytest.approx([2.5])
    decision = gate.decide("keypoints", Gate(), np.repeat(truth, 3, 0), np.repeat(truth, 3, 0) + 1,
                           np.repeat(truth, 3, 0) + 2)
    assert decision["decision"] == "kept" and "holdout has 3 items" in decision["holdout_too_small"]


def test_the_shadow_guard_keeps_a_candidate_that_changes_too_many_answers():
    truth, cand, prod = regression_case(200, 1.0, 5.0)
    decision = gate.decide("regression", Gate(), truth, cand, prod, shadow={"large_change_share": 0.6})
    assert [g["passed"] for g in decision["guards"]] == [True, False]
    assert decision["decision"] == "kept" and "guard shadow_large_changes" in decision["reason"]
    assert gate.large_change_threshold("regression", prod, truth) == \
        pytest.approx(np.percentile(np.abs(prod - truth), 90))


def test_without_production_the_candidate_is_promoted():
    decision = gate.decide("classification", Gate(), None, None)
    assert decision["decision"] == "promoted" and decision["reason"] == "no production version yet"
