"""Primitives every room shares: standard library only, so stage one can carry them frozen.

Each job has one home here: the reason-and-path error, atomic file replacement, shell
``KEY="value"`` files, cpio newc, percentiles, jittered delays, daemonising with a pidfile.
"""
