"""The self-describing zstd container behind ``.vnfs`` capsules and ``.pmod`` modules."""
