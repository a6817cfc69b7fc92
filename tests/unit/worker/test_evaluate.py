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
