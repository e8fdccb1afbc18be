"""End-to-end tests: QEMU nodes booting in a throwaway network namespace."""
