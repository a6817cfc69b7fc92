"""worker.training.evaluate: the holdout measures every metric a gate may name for its task
(shared/core/vocab.HOLDOUT_METRICS), and the gate decides by the vocabulary's direction."""
from __future__ import annotations

import numpy as np
import pytest

from shared.core.vocab import DEFAULT_GATE_METRIC, HOLDOUT_METRICS, LOWER_IS_BETTER
from worker.training import evaluate


def _holdout(task: str) -> dict:
    if task == "classification":
        return evaluate.holdout_metrics(task, np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), np.array([0, 1, 1]))
    truth = np.array([[0.1, 0.2], [0.5, 0.4], [0.9, 0.7]])
    return evaluate.holdout_metrics(task, truth + 0.05, truth, train_truth=truth)


@pytest.mark.parametrize("task", sorted(HOLDOUT_METRICS))
def test_the_holdout_measures_every_metric_the_gate_may_compare(task):
    measured = _holdout(task)
    assert set(HOLDOUT_METRICS[task]) <= set(measured)
    for metric in HOLDOUT_METRICS[task]:
        better = measured[metric] + (-0.01 if LOWER_IS_BETTER[metric] else 0.01)
        assert evaluate.gate(task, {metric: better}, measured, metric, 0.0)["decision"] == "promoted"
    assert evaluate.gate(task, measured, None, None, 0.0)["metric"] == DEFAULT_GATE_METRIC[task]
