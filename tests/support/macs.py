"""MAC addresses as ``perceus node import`` reads them, for tests that need many nodes."""


def macs(count: int, start: int = 0) -> str:
    """``count`` distinct locally administered MACs from ``start`` on, one a line."""
    return "".join(f"02:00:00:00:{(i >> 8) & 0xFF:02X}:{i & 0xFF:02X}\n" for i in range(start, start + count))
