"""Plain accumulators the monitor updates per check and `/metrics` reads at scrape time.

One `observe` is a bisect and two additions: far cheaper than a labelled prometheus_client
child, and nothing here does I/O.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field

CHECK_DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
SCHEDULE_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """A Prometheus-style histogram: per-bucket counts (not cumulative) plus sum and count."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # last slot is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left puts a value equal to a bound in that bound's bucket (`le` is inclusive).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, cumulative count) pairs, ending with (+Inf, count)."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


@dataclass(slots=True)
class HistogramsByLabel:
    """One histogram per label value (the app), created on first use."""

    bounds: Sequence[float]
    by_label: dict[str, Histogram] = field(default_factory=dict)

    def observe(self, label: str, value: float) -> None:
        hist = self.by_label.get(label)
        if hist is None:
            hist = self.by_label[label] = Histogram(self.bounds)
        hist.observe(value)

    def retain(self, labels: set[str]) -> None:
        """Forget label values no longer in use, so their series disappear."""
        for label in [k for k in self.by_label if k not in labels]:
            del self.by_label[label]
