"""worker.training.evaluate: the holdout measures every metric a gate may name for its task
(shared/core/vocab.HOLDOUT_METRICS), and the gate's per-item losses agree with those metrics."""
from __future__ import annotations

import numpy as np
import pytest

from shared.core.vocab import HOLDOUT_METRICS
from worker.training import evaluate, gate


def _answers(task: str):
    if task == "classification":
        return np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), np.array([0, 1, 1])
    truth = np.array([[0.1, 0.2], [0.5, 0.4], [0.9, 0.7]])
    return truth + np.array([[0.05, -0.1], [0.2, 0.0], [-0.3, 0.1]]), truth


@pytest.mark.parametrize("task", sorted(HOLDOUT_METRICS))
def test_the_holdout_measures_every_metric_the_gate_may_compare(task):
    predicted, truth = _answers(task)
    measured = evaluate.holdout_metrics(task, predicted, truth, train_truth=None if task == "classification" else truth)
    assert set(HOLDOUT_METRICS[task]) <= set(measured)
    for metric in HOLDOUT_METRICS[task]:  # the paired test's per-item losses summarise to the metric compared
        losses = gate.item_losses(task, metric, predicted, truth)
        summary = {"accuracy": 1 - losses.mean(), "rmse": np.sqrt(losses.mean())}.get(metric, losses.mean())
        if metric != "r2":
            assert summary == pytest.approx(measured[metric])


def test_a_shadow_diff_gives_the_pairs_to_plot_and_the_agreement():
    production = np.array([[1.0, 5.0], [2.0, 6.0], [3.0, 7.0], [4.0, 8.0]])
    candidate = production + np.array([[0.1, 0.1], [3.0, 3.0], [0.0, 0.0], [-0.2, 0.0]])
    report = evaluate.shadow_diff("regression", ["a", "b", "c", "d"], candidate, production, large_change=1.0)
    assert report["pairs"] == {"production": [1.0, 2.0, 3.0, 4.0], "candidate": pytest.approx([1.1, 5.0, 3.0, 3.8])}
    assert report["agreement"] == 0.75 and report["largest_changes"][0]["id"] == "b"
    probabilities = lambda classes: np.eye(3)[classes]  # noqa: E731
    report = evaluate.shadow_diff("classification", ["a", "b", "c", "d"], probabilities([0, 1, 2, 2]),
                                  probabilities([0, 1, 1, 2]), class_names=["cat", "dog", "owl"])
    assert report["confusion"] == {"cat": {"cat": 1}, "dog": {"dog": 1, "owl": 1}, "owl": {"owl": 1}}
    assert report["agreement"] == 0.75
