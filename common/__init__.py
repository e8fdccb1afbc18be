"""Primitives every room shares: standard library only, so stage one can carry them frozen.

Each job has one home here: the reason-and-path error, atomic file replacement, shell
``KEY="value"`` files, cpio newc (``newc``) and unpacking it safely (``unpack``), percentiles,
jittered delays, daemonising with a pidfile.
"""
