"""The promotion gate's rule, on arrays only (NumPy and SciPy; no TensorFlow, no database): given the holdout's truth
and both models' answers in the user's units, decide whether the candidate replaces production, and say why.

The rule: promote only when (1) the gate metric improves by at least `min_improvement`, (2) a paired test on the same
holdout items finds the improvement significant at `confidence`, and (3) no guard got worse beyond its tolerance.
- The paired test (shared/core/vocab.GATE_TESTS): for accuracy, McNemar's exact test, one-sided: under "no
  difference" the items only the candidate gets right are Binomial(discordant pairs, 1/2). For every other metric,
  Wilcoxon's signed-rank test, one-sided, on the per-item losses behind the metric (absolute or squared error, point
  distance, log-loss).
- A holdout too small to show the required improvement at all is said so, with the smallest detectable difference:
  for McNemar, ceil(log2(1 / alpha)) discordant pairs all won by the candidate, over the holdout's size; for
  Wilcoxon, the one-sided normal bound z * sd(d) / sqrt(n) of the mean per-item loss difference.
- Guards (vocab.GUARDS_OF_TASK) are checked whatever the metric says; each one's figures, tolerance and verdict go
  into the decision.
Without a production version the candidate is promoted (nothing to compare with).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

from shared.core.vocab import DEFAULT_GATE_METRIC, GUARDS_OF_TASK, LOWER_IS_BETTER
from shared.schemas.training import Gate
from worker.training import evaluate

# --------------------------------------------------------------------------------------------- per-item figures


def item_errors(task: str, predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Regression: the mean absolute error over targets; keypoints: the mean distance of the points, in pixels."""
    err = np.asarray(predicted, np.float64) - np.asarray(truth, np.float64)
    err = err.reshape(len(err), -1)
    if task == "keypoints":
        return np.sqrt(err[:, 0::2] ** 2 + err[:, 1::2] ** 2).mean(1)
    return np.abs(err).mean(1)


def item_losses(task: str, metric: str, predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per holdout item, the loss whose mean the metric summarises (lower is better for every one)."""
    if metric == "accuracy":
        return (predicted.argmax(1) != truth).astype(np.float64)
    if metric == "log_loss":
        return -np.log(np.clip(predicted, 1e-7, 1)[np.arange(len(truth)), truth])
    if metric == "pixel_error":
        return item_errors("keypoints", predicted, truth)
    err = (np.asarray(predicted, np.float64) - truth).reshape(len(truth), -1)
    return np.abs(err).mean(1) if metric == "mae" else (err ** 2).mean(1)  # rmse, r2: squared error


def class_recalls(predicted: np.ndarray, truth: np.ndarray) -> dict[int, float]:
    """Recall of each class present in the holdout's truth."""
    picked = predicted.argmax(1)
    return {int(k): float((picked[truth == k] == k).mean()) for k in np.unique(truth)}


# --------------------------------------------------------------------------------------------- paired tests


def min_discordant_pairs(alpha: float) -> int:
    """The fewest discordant pairs that can reach significance: all n won by the candidate has p = 0.5 ** n."""
    return max(1, math.ceil(math.log2(1 / alpha) - 1e-12))


def mcnemar(candidate_right: np.ndarray, production_right: np.ndarray, alpha: float) -> dict:
    """McNemar's exact test, one-sided (is the candidate right more often?), on paired right/wrong answers."""
    b = int((candidate_right & ~production_right).sum())
    c = int((~candidate_right & production_right).sum())
    n, size = b + c, len(candidate_right)
    p = float(stats.binomtest(b, n, 0.5, alternative="greater").pvalue) if n else 1.0
    wins_needed = next((k for k in range((n + 1) // 2, n + 1)
                        if stats.binomtest(k, n, 0.5, alternative="greater").pvalue <= alpha), None) if n else None
    fewest = min_discordant_pairs(alpha)
    return {"name": "mcnemar_exact", "n": size, "candidate_only_right": b, "production_only_right": c,
            "p_value": p, "alpha": alpha, "significant": p <= alpha, "min_discordant_pairs": fewest,
            "candidate_wins_needed": wins_needed,
            "smallest_detectable_difference": fewest / size if size else None}


def wilcoxon(candidate_loss: np.ndarray, production_loss: np.ndarray, alpha: float) -> dict:
    """Wilcoxon's signed-rank test, one-sided (are the candidate's per-item losses lower?); zero differences are
    dropped (they say nothing about which is better)."""
    d = np.asarray(production_loss, np.float64) - np.asarray(candidate_loss, np.float64)
    nonzero = int(np.count_nonzero(d))
    p = float(stats.wilcoxon(d, alternative="greater", zero_method="wilcox").pvalue) if nonzero else 1.0
    z = float(stats.norm.ppf(1 - alpha))
    sdd = z * float(d.std(ddof=1)) / math.sqrt(len(d)) if len(d) > 1 else None
    return {"name": "wilcoxon_signed_rank", "n": int(len(d)), "candidate_better": int((d > 0).sum()),
            "production_better": int((d < 0).sum()), "p_value": p, "alpha": alpha, "significant": p <= alpha,
            "min_nonzero_pairs": min_discordant_pairs(alpha), "smallest_detectable_difference": sdd,
            "difference_unit": "mean per-item loss"}


def paired_test(task: str, metric: str, truth, candidate, production, alpha: float) -> dict:
    if metric == "accuracy":
        return mcnemar(candidate.argmax(1) == truth, production.argmax(1) == truth, alpha)
    return wilcoxon(item_losses(task, metric, candidate, truth), item_losses(task, metric, production, truth), alpha)


def too_small(test: dict, production, truth, min_improvement: float) -> str | None:
    """Why the holdout cannot show the required improvement whatever the candidate does, or None."""
    n, fewest = test["n"], test.get("min_discordant_pairs") or test.get("min_nonzero_pairs")
    alpha = test["alpha"]
    if n < fewest:
        return (f"the holdout has {n} items; a paired test at {1 - alpha:.0%} needs at least {fewest} items that "
                "differ, all in the candidate's favour")
    if test["name"] != "mcnemar_exact":
        return None
    room = int((production.argmax(1) != truth).sum())  # items the candidate could win
    needed = max(fewest, math.ceil(min_improvement * n - 1e-9))
    if room < needed:
        return (f"production misses only {room} of {n} holdout items; showing the improvement needs at least "
                f"{needed} won by the candidate (smallest detectable difference {fewest / n:.4g} at "
                f"{1 - alpha:.0%}): the holdout is too small")
    return None


# --------------------------------------------------------------------------------------------- guards


def _guard(name: str, production: float | None, candidate: float | None, tolerance: float, rule: str,
           passed: bool) -> dict:
    return {"name": name, "production": production, "candidate": candidate, "tolerance": tolerance, "rule": rule,
            "passed": bool(passed)}


def _rise_guard(name: str, production: float, candidate: float, tolerance: float) -> dict:
    return _guard(name, production, candidate, tolerance, f"candidate <= production x (1 + {tolerance:g})",
                  candidate <= production * (1 + tolerance) + 1e-12)


def guard_checks(task: str, guards, truth, candidate, production, shadow: dict | None) -> list[dict]:
    """Each guard of the task that has a tolerance: its figures, tolerance and verdict."""
    out = []
    for name in GUARDS_OF_TASK[task]:
        tolerance = getattr(guards, name)
        if tolerance is None:
            continue
        if name == "log_loss":
            c, p = (float(item_losses(task, "log_loss", m, truth).mean()) for m in (candidate, production))
            out.append(_rise_guard(name, p, c, tolerance))
        elif name == "worst_class_recall":
            c, p = (min(class_recalls(m, truth).values()) for m in (candidate, production))
            out.append(_guard(name, p, c, tolerance, f"candidate >= production - {tolerance:g}",
                              c >= p - tolerance - 1e-12))
        elif name == "error_p90":
            c, p = (float(np.percentile(item_errors(task, m, truth), 90)) for m in (candidate, production))
            out.append(_rise_guard(name, p, c, tolerance))
        elif shadow and shadow.get("large_change_share") is not None:  # shadow_large_changes
            # the catalog may change as much as the holdout did (where the change is measured as better), no more
            share, expected = shadow["large_change_share"], holdout_change_share(task, truth, candidate, production)
            out.append(_guard(name, expected, share, tolerance, f"shadow share <= holdout share + {tolerance:g}",
                              share <= expected + tolerance + 1e-12))
    return out


def holdout_change_share(task: str, truth, candidate, production) -> float:
    """The share of holdout items whose answer changes as much as the shadow diff calls large."""
    if task == "classification":
        return float((candidate.argmax(1) != production.argmax(1)).mean())
    change = np.abs(np.asarray(candidate, np.float64) - production).reshape(len(truth), -1).mean(1)
    return float((change > large_change_threshold(task, production, truth)).mean())


def large_change_threshold(task: str, production, truth) -> float | None:
    """What counts as a large change in the shadow diff of a regression or keypoint model: more than production's
    own 90th-percentile holdout error (a classifier's large change is a changed class)."""
    if task == "classification" or not len(truth):
        return None
    return float(np.percentile(item_errors(task, production, truth), 90))


# --------------------------------------------------------------------------------------------- the decision


def decide(task: str, gate: Gate, truth, candidate, production=None, shadow: dict | None = None) -> dict:
    """The gate's decision over both models' holdout answers (user units; production None: no production yet)."""
    metric = gate.metric or DEFAULT_GATE_METRIC[task]
    head = {"metric": metric, "min_improvement": gate.min_improvement, "confidence": gate.confidence}
    if production is None:
        return {"decision": "promoted", **head, "reason": "no production version yet"}
    cand_m, prod_m = (evaluate.holdout_metrics(task, m, truth) for m in (candidate, production))
    if cand_m.get(metric) is None or prod_m.get(metric) is None:
        return {"decision": "kept", **head, "reason": f"{metric} cannot be measured on this holdout"}
    improvement = (prod_m[metric] - cand_m[metric]) if LOWER_IS_BETTER[metric] else (cand_m[metric] - prod_m[metric])
    test = paired_test(task, metric, truth, candidate, production, 1 - gate.confidence)
    small = too_small(test, production, truth, gate.min_improvement)
    guards = guard_checks(task, gate.guards, truth, candidate, production, shadow)
    failed = [g for g in guards if not g["passed"]]
    enough = improvement >= gate.min_improvement and improvement > 0
    promote = enough and test["significant"] and not failed and small is None
    change = (f"{metric} {prod_m[metric]:.6g} -> {cand_m[metric]:.6g} (improvement {improvement:.4g}, "
              f"required {gate.min_improvement:.4g})")
    return {"decision": "promoted" if promote else "kept", **head, "improvement": float(improvement),
            "test": test, "holdout_too_small": small, "guards": guards,
            "reason": explain(promote, change, test, small, enough, failed, guards)}


def _test_words(test: dict) -> str:
    level = f"{1 - test['alpha']:.0%}"
    if test["name"] == "mcnemar_exact":
        detail = (f"McNemar exact: the candidate alone right on {test['candidate_only_right']} items, production "
                  f"alone on {test['production_only_right']}, p={test['p_value']:.3g}")
        if test["candidate_wins_needed"] is not None and not test["significant"]:
            detail += f"; significance needs {test['candidate_wins_needed']} of those"
    else:
        detail = (f"Wilcoxon signed-rank on per-item losses: candidate better on {test['candidate_better']} items, "
                  f"production on {test['production_better']}, p={test['p_value']:.3g}")
    verdict = "significant" if test["significant"] else "not significant"
    return f"the difference is {verdict} at {level} ({detail})"


def _guard_words(g: dict) -> str:
    before = f"{g['production']:.4g} -> " if g["production"] is not None else ""
    return f"{g['name']} {before}{g['candidate']:.4g} (tolerance: {g['rule']})"


def explain(promote: bool, change: str, test: dict, small: str | None, enough: bool, failed: list,
            guards: list) -> str:
    """The decision in words: what changed, what the test says, and each guard at fault (or that all held)."""
    parts = [change, _test_words(test)]
    if small:
        parts.append(small)
    if not enough:
        parts.append("the improvement is below the required minimum")
    parts += [f"guard {_guard_words(g)} failed" for g in failed]
    if not failed and guards:
        parts.append("guards held: " + ", ".join(g["name"] for g in guards))
    return ("promoted: " if promote else "kept: ") + "; ".join(parts)
