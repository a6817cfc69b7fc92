"""The statistics of output drift, on plain values (no database, no model): a distribution summary of a model's
outputs, built whole from a small sample or streamed from any number of rows in bounded memory, and the drift of
one summary against a reference by the population stability index (PSI) and the Kolmogorov-Smirnov statistic.

A summary is JSON, the same whether it describes a reference (the outputs on a version's validation and holdout
images) or a score job (which may be the reference of the next job of an imported version):
    {"task": ..., "count": n,
     "labels": {class: share} and "mean_probabilities": {class: mean}   (classification),
     "numeric": {output: {"mean", "quantiles" (QUANTILES), "edges", "shares"}}   (regression, keypoints)}
where `edges` are the distinct interior deciles and `shares` the fraction of the values in each of the
len(edges) + 1 bins they make (a value equal to an edge falls in the bin above it).

Invariants: the drift of a classifier is the PSI of its predicted labels' shares over the reference's classes;
of a regression or keypoint model, the largest PSI of its outputs, each binned at the reference's deciles.
A streamed summary keeps, per output, a count per reference bin, a sum and a fixed-size reservoir sample (for its
own quantiles): its memory does not grow with the rows. Empty bins are floored at EPSILON so PSI stays finite.
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np

EPSILON = 1e-4
DECILES = tuple(i / 10 for i in range(1, 10))
QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
RESERVOIR_SIZE = 4096


# --------------------------------------------------------------------------------------------- the statistics


def psi(expected, actual, epsilon: float = EPSILON) -> float:
    """Population stability index of two vectors of bin shares (each normalized to sum to 1):
    sum over bins of (actual - expected) * ln(actual / expected), shares floored at `epsilon`."""
    e, a = _normalized(expected), _normalized(actual)
    e, a = np.maximum(e, epsilon), np.maximum(a, epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_from_shares(expected, actual) -> float:
    """The Kolmogorov-Smirnov statistic of two binned distributions over the same ordered bins: the largest gap
    between their cumulative shares (at the bin edges; a lower bound of the exact statistic)."""
    return float(np.max(np.abs(np.cumsum(_normalized(expected)) - np.cumsum(_normalized(actual))), initial=0.0))


def ks_statistic(x, y) -> float:
    """The exact two-sample Kolmogorov-Smirnov statistic of two samples of values."""
    x, y = np.sort(np.asarray(x, float)), np.sort(np.asarray(y, float))
    if not len(x) or not len(y):
        return 0.0
    points = np.concatenate([x, y])
    cdf_x = np.searchsorted(x, points, side="right") / len(x)
    cdf_y = np.searchsorted(y, points, side="right") / len(y)
    return float(np.max(np.abs(cdf_x - cdf_y)))


def _normalized(shares) -> np.ndarray:
    v = np.asarray(shares, dtype=np.float64)
    total = v.sum()
    return v / total if total > 0 else v


def quantile_edges(values) -> list[float]:
    """The distinct interior deciles of `values`: the bins a reference's shares are counted in."""
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return []
    return sorted({float(q) for q in np.quantile(values, DECILES)})


def bin_counts(values, edges) -> np.ndarray:
    """How many of `values` fall in each of the len(edges) + 1 bins (a value equal to an edge: the bin above)."""
    index = np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(values, dtype=np.float64), side="right")
    return np.bincount(index, minlength=len(edges) + 1)


def numeric_summary(values, mean: float | None = None) -> dict:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return {"mean": None, "quantiles": [], "edges": [], "shares": []}
    edges = quantile_edges(values)
    counts = bin_counts(values, edges)
    return {"mean": float(values.mean()) if mean is None else mean,
            "quantiles": [float(q) for q in np.quantile(values, QUANTILES)],
            "edges": edges, "shares": [float(c) / len(values) for c in counts]}


# --------------------------------------------------------------------------------------------- summaries


class Reservoir:
    """A uniform sample of at most `size` of the values offered (Algorithm R), with a fixed seed."""

    def __init__(self, size: int = RESERVOIR_SIZE, seed: int = 0):
        self.size, self.seen = size, 0
        self.values = np.empty(size, dtype=np.float64)
        self._rng = np.random.default_rng(seed)

    def offer(self, values) -> None:
        values = np.asarray(values, dtype=np.float64)
        free = max(0, min(self.size - self.seen, len(values)))
        self.values[self.seen:self.seen + free] = values[:free]
        rest = values[free:]
        if len(rest):
            positions = np.arange(self.seen + free, self.seen + len(values))
            slots = self._rng.integers(0, positions + 1)
            keep = slots < self.size
            self.values[slots[keep]] = rest[keep]  # a repeated slot keeps the later value, as one by one would
        self.seen += len(values)

    def sample(self) -> np.ndarray:
        return self.values[:min(self.seen, self.size)].copy()


class StreamingSummary:
    """A summary of a model's outputs built from rows offered in batches, in bounded memory (see the module's
    docstring); `reference`, when given, says at which edges to count each numeric output for `drift`."""

    def __init__(self, task: str, reference: dict | None = None, reservoir_size: int = RESERVOIR_SIZE):
        self.task, self.count, self.reservoir_size = task, 0, reservoir_size
        self.labels: Counter = Counter()
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.reservoirs: dict[str, Reservoir] = {}
        self.edges = {name: out["edges"] for name, out in ((reference or {}).get("numeric") or {}).items()}
        self.binned: dict[str, np.ndarray] = {}

    def add(self, rows: list[dict]) -> None:
        """One batch of output rows (as shared/models/outputs.interpret makes them)."""
        self.count += len(rows)
        if self.task == "classification":
            self.labels.update(str(r.get("label")) for r in rows)
            for name in {k for r in rows for k in r if k.startswith("p:")}:
                self._add_sum(name[2:], np.array([r.get(name, 0.0) for r in rows], dtype=np.float64))
            return
        for name in {k for r in rows for k in r}:
            values = np.array([r[name] for r in rows if isinstance(r.get(name), (int, float))], dtype=np.float64)
            values = values[np.isfinite(values)]
            self._add_sum(name, values)
            self.reservoirs.setdefault(name, Reservoir(self.reservoir_size, seed=len(self.reservoirs))).offer(values)
            if name in self.edges:
                counts = bin_counts(values, self.edges[name])
                self.binned[name] = self.binned.get(name, 0) + counts

    def _add_sum(self, name: str, values: np.ndarray) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(values.sum())
        self.counts[name] = self.counts.get(name, 0) + len(values)

    def means(self) -> dict[str, float]:
        return {name: self.sums[name] / self.counts[name] for name in sorted(self.sums) if self.counts[name]}

    def summary(self) -> dict:
        if self.task == "classification":
            total = sum(self.labels.values())
            return {"task": self.task, "count": self.count,
                    "labels": {k: v / total for k, v in sorted(self.labels.items())} if total else {},
                    "mean_probabilities": self.means()}
        means = self.means()
        return {"task": self.task, "count": self.count,
                "numeric": {name: numeric_summary(r.sample(), means.get(name))
                            for name, r in sorted(self.reservoirs.items())}}

    def bin_shares(self, name: str) -> list[float] | None:
        """The exact shares of an output's values in the reference's bins (None: not counted)."""
        counts = self.binned.get(name)
        if counts is None or not np.sum(counts):
            return None
        return [float(c) / float(np.sum(counts)) for c in counts]


def summarize(task: str, rows: list[dict]) -> dict:
    """The summary of all `rows` at once (a reference: a few thousand rows at most)."""
    streamed = StreamingSummary(task, reservoir_size=max(1, len(rows)))
    streamed.add(rows)
    return streamed.summary()


# --------------------------------------------------------------------------------------------- drift


def drift(reference: dict, streamed: StreamingSummary) -> dict:
    """{"statistic": "psi", "value", "outputs": {name: detail}}: the drift of what `streamed` saw (counted at the
    reference's edges) against `reference`; value None when there is nothing to compare."""
    if streamed.task == "classification":
        return _classification_drift(reference, streamed.summary())
    outputs = {}
    for name, ref in sorted((reference.get("numeric") or {}).items()):
        shares = streamed.bin_shares(name)
        if shares is None or not ref.get("shares"):
            continue
        sample = streamed.reservoirs[name].sample()
        outputs[name] = {"psi": _rounded(psi(ref["shares"], shares)), "ks": _rounded(ks_from_shares(ref["shares"],
                                                                                                    shares)),
                         "reference_mean": ref.get("mean"), "mean": streamed.means().get(name),
                         "reference_quantiles": ref.get("quantiles"),
                         "quantiles": [float(q) for q in np.quantile(sample, QUANTILES)] if len(sample) else []}
    value = max((o["psi"] for o in outputs.values()), default=None)
    return {"statistic": "psi", "value": value, "outputs": outputs}


def _classification_drift(reference: dict, summary: dict) -> dict:
    ref_shares, shares = reference.get("labels") or {}, summary.get("labels") or {}
    if not ref_shares or not shares:
        return {"statistic": "psi", "value": None, "outputs": {}}
    classes = sorted(set(ref_shares) | set(shares))
    expected, actual = [ref_shares.get(c, 0.0) for c in classes], [shares.get(c, 0.0) for c in classes]
    ref_means, means = reference.get("mean_probabilities") or {}, summary.get("mean_probabilities") or {}
    per_class = {c: {"reference_share": ref_shares.get(c, 0.0), "share": shares.get(c, 0.0),
                     "reference_mean_probability": ref_means.get(c), "mean_probability": means.get(c)}
                 for c in classes}
    return {"statistic": "psi", "value": _rounded(psi(expected, actual)), "outputs": {"label": per_class}}


def _rounded(value: float) -> float:
    return round(value, 6) if math.isfinite(value) else value
