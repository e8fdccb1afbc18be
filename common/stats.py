"""Latency figures as perceusd's status and the benchmarks report them."""

import math
from collections.abc import Collection

__all__ = ["percentile"]


def percentile(values: Collection[float], p: float) -> float:
    """The p-th percentile of ``values`` by nearest rank (a value that was measured); 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]
