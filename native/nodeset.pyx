# cython: language_level=3
"""Placeholder: replaced by the real implementation."""


class NodeSetError(ValueError):
    pass


def expand(expr):
    return [expr]


def fold(names):
    return ",".join(sorted(set(names)))


def count(expr):
    return len(expand(expr))
