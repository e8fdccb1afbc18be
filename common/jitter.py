"""Delays spread at random, so hundreds of nodes booting together do not retry in step."""

import os
import random

__all__ = ["jittered"]


def jittered(seconds: float, fraction: float, rng: random.Random | None = None) -> float:
    """``seconds`` moved by up to ±``fraction`` of itself; never negative, 0 stays 0.

    Without ``rng`` the spread comes from ``os.urandom``, so callers that must not share a
    seeded generator (many simulated nodes in one process) still differ.
    """
    if seconds <= 0:
        return 0.0
    unit = rng.random() if rng is not None else int.from_bytes(os.urandom(2), "big") / 0xFFFF
    return max(0.0, seconds * (1 + fraction * (2 * unit - 1)))
