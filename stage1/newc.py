"""A small cpio "newc" writer for the node-side DESTDIR staging directory.

Stage one appends this archive, uncompressed, to the initrd after the image and the
overlay, so files a nodescript leaves in DESTDIR land in the runtime root. Stdlib only
(imagefmt's writer is not in the initramfs). Owners are root:root, modes and mtimes kept.
"""

import os
import stat
from pathlib import Path
from typing import BinaryIO

__all__ = ["TRAILER", "write_tree"]

TRAILER = "TRAILER!!!"
_MAGIC = b"070701"


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


class _Writer:
    """Writes entries with consecutive inode numbers; counts the bytes written."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.ino = 0
        self.written = 0

    def _put(self, data: bytes) -> None:
        self.out.write(data)
        self.written += len(data)

    def entry(
        self, name: str, st_mode: int, mtime: int, data: bytes = b"", rdev: int = 0, nlink: int = 1
    ) -> None:
        self.ino += 1
        raw = name.encode("utf-8", "surrogateescape") + b"\0"
        fields = (
            self.ino, st_mode, 0, 0, nlink, max(0, min(mtime, 0xFFFFFFFF)), len(data),
            0, 0, os.major(rdev), os.minor(rdev), len(raw), 0,
        )  # fmt: skip
        header = _MAGIC + b"".join(b"%08X" % f for f in fields)
        self._put(header + raw + _pad(len(header) + len(raw)))
        if data:
            self._put(data + _pad(len(data)))

    def stream(self, name: str, st: os.stat_result, path: Path) -> None:
        """A regular file, copied in pieces (sizes are checked: a file that changes is an error)."""
        self.ino += 1
        raw = name.encode("utf-8", "surrogateescape") + b"\0"
        size = st.st_size
        fields = (
            self.ino, st.st_mode, 0, 0, 1, max(0, min(int(st.st_mtime), 0xFFFFFFFF)), size,
            0, 0, 0, 0, len(raw), 0,
        )  # fmt: skip
        header = _MAGIC + b"".join(b"%08X" % f for f in fields)
        self._put(header + raw + _pad(len(header) + len(raw)))
        left = size
        with open(path, "rb") as f:
            while left:
                piece = f.read(min(left, 1 << 20))
                if not piece:
                    raise OSError(f"{path}: file shrank while archiving it")
                self._put(piece)
                left -= len(piece)
        self._put(_pad(size))


def write_tree(out: BinaryIO, root: Path) -> int:
    """Archive everything under ``root`` (not root itself) as newc with a trailer; returns bytes.

    Writes nothing and returns 0 when ``root`` is empty. Entries are in sorted walk order, a
    directory before its contents; regular files, directories, symlinks, device nodes, FIFOs
    and sockets are kept (hard links become separate copies).
    """
    entries = _walk(root)
    if not entries:
        return 0
    w = _Writer(out)
    for rel, path, st in entries:
        if stat.S_ISREG(st.st_mode):
            w.stream(rel, st, path)
        elif stat.S_ISLNK(st.st_mode):
            w.entry(rel, st.st_mode, int(st.st_mtime), os.readlink(path).encode("utf-8", "surrogateescape"))
        elif stat.S_ISDIR(st.st_mode):
            w.entry(rel, st.st_mode, int(st.st_mtime), nlink=2)
        else:
            w.entry(rel, st.st_mode, int(st.st_mtime), rdev=st.st_rdev)
    w.entry(TRAILER, 0, 0)
    return w.written


def _walk(root: Path) -> list[tuple[str, Path, os.stat_result]]:
    found: list[tuple[str, Path, os.stat_result]] = []

    def visit(directory: Path, prefix: str) -> None:
        for name in sorted(os.listdir(directory)):
            path = directory / name
            st = os.lstat(path)
            rel = prefix + name
            found.append((rel, path, st))
            if stat.S_ISDIR(st.st_mode):
                visit(path, rel + "/")

    visit(root, "")
    return found
