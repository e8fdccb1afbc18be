"""The compiled hot path: Cython and cffi modules with no dependency on the rest of perceus."""
