"""The few things the benchmark reads from a Prometheus text exposition: counter sums and histogram
buckets, and quantiles of bucket deltas interpolated as PromQL's `histogram_quantile` does.

A hand-written line filter, not prometheus_client's parser: at 10,000 targets the exposition has
~100,000 lines and the benchmark only needs a handful of families from it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Buckets = dict[float, float]  # upper bound (`le`) -> cumulative count


def samples(text: str, name: str) -> Iterator[tuple[dict[str, str], float]]:
    """(labels, value) of every sample named exactly `name`."""
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        rest = line[len(name) :]
        if rest.startswith("{"):
            labels_text, _, value_text = rest[1:].rpartition("}")
            labels = dict(LABEL.findall(labels_text))
        elif rest.startswith(" "):
            labels, value_text = {}, rest
        else:
            continue  # a longer name with the same prefix
        yield labels, float(value_text.split()[0])


def total(text: str, name: str) -> float:
    """Sum of every sample of `name` (e.g. checks over all targets and results)."""
    return sum(value for _, value in samples(text, name))


def buckets(text: str, histogram: str) -> Buckets:
    """Cumulative bucket counts of an unlabelled histogram."""
    return {float(labels["le"]): value for labels, value in samples(text, histogram + "_bucket")}


def delta(after: Buckets, before: Buckets) -> Buckets:
    return {le: count - before.get(le, 0.0) for le, count in after.items()}


def count(hist: Buckets) -> float:
    return hist.get(math.inf, 0.0)


def quantile(q: float, hist: Buckets) -> float | None:
    """`histogram_quantile(q, ...)`: linear interpolation inside the bucket holding the rank, 0 as
    the lower edge of the first bucket, the highest finite bound if the rank is in `+Inf`."""
    n = count(hist)
    if n <= 0:
        return None
    rank = q * n
    lower, below = 0.0, 0.0
    finite = sorted(le for le in hist if le != math.inf)
    for le in finite:
        cumulative = hist[le]
        if cumulative >= rank:
            if cumulative == below:
                return le
            return lower + (le - lower) * (rank - below) / (cumulative - below)
        lower, below = le, cumulative
    return finite[-1] if finite else None


def share_at_most(bound: float, hist: Buckets) -> float | None:
    """Exact fraction of observations <= `bound` (when `bound` is a bucket boundary)."""
    n = count(hist)
    if n <= 0 or bound not in hist:
        return None
    return hist[bound] / n
