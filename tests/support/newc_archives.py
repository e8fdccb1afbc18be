"""cpio newc archives built in memory for the reader's and the unpacker's tests."""

from perceus.common import newc


def archive(*entries: tuple[str | bytes, int, bytes], trailer: bool = True) -> bytes:
    """One entry per ``(name, mode, data)``, numbered inodes, a fixed mtime; TRAILER!!! unless told not."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate(entries, 1):
        newc.write_entry(out, name, mode=mode, data=data, ino=ino, mtime=1_000_000)
    if trailer:
        newc.write_trailer(out)
    return bytes(out)
