"""An initramfs described in memory, then written as one zstd-compressed cpio newc archive.

Building in memory (rather than in a staging directory) lets the tree hold what a build
host's filesystem may refuse — ``/dev/console``, root-owned modes — and lets every entry
be charged to a *part* (python, stdlib, modules, ...) for the size report. Host files are
mirrored with their symlink chains, so ``/lib64/ld-linux-x86-64.so.2`` in the image
resolves exactly as it does on the host.
"""

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import zstandard

from perceus.common.newc import write_entry, write_trailer

__all__ = ["Entry", "InitramfsTree"]

ZSTD_LEVEL = 19
# A 32 MiB window (level 19 alone uses 8 MiB) lets matches span the whole archive: 4% smaller.
# The kernel's unzstd accepts windows up to 128 MiB; booting allocates the window once.
WINDOW_LOG = 25
HOST_LAYOUT_LINKS = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}


@dataclass
class Entry:
    """One member: ``data`` is a file's bytes or a symlink's target; ``part`` names its budget line."""

    mode: int
    data: bytes = b""
    part: str = "base"
    rdev: tuple[int, int] = (0, 0)


@dataclass
class InitramfsTree:
    """Paths (no leading slash) to entries; parents are made as needed."""

    entries: dict[str, Entry] = field(default_factory=dict)

    @staticmethod
    def _key(path: str | PurePosixPath) -> str:
        key = str(PurePosixPath("/", path))[1:]
        if not key or ".." in key.split("/"):
            raise ValueError(f"bad path in the initramfs: {path!r}")
        return key

    def _parents(self, key: str, part: str) -> None:
        parent = PurePosixPath(key).parent
        chain = []
        while str(parent) not in (".", ""):
            chain.append(str(parent))
            parent = parent.parent
        for p in reversed(chain):
            entry = self.entries.get(p)
            if entry is None:
                self.entries[p] = Entry(stat.S_IFDIR | 0o755, part=part)
            elif not stat.S_ISDIR(entry.mode) and not stat.S_ISLNK(entry.mode):
                raise ValueError(f"{p} is a file in the initramfs, not a directory")

    def add_dir(self, path: str, mode: int = 0o755, part: str = "base") -> None:
        key = self._key(path)
        self._parents(key, part)
        self.entries.setdefault(key, Entry(stat.S_IFDIR | mode, part=part))

    def add_file(self, path: str, data: bytes, mode: int = 0o644, part: str = "base") -> None:
        key = self._key(path)
        self._parents(key, part)
        self.entries[key] = Entry(stat.S_IFREG | (mode & 0o7777), data, part)

    def add_symlink(self, path: str, target: str, part: str = "base") -> None:
        key = self._key(path)
        self._parents(key, part)
        self.entries[key] = Entry(stat.S_IFLNK | 0o777, target.encode(), part)

    def add_device(self, path: str, kind: int, major: int, minor: int, mode: int = 0o600) -> None:
        key = self._key(path)
        self._parents(key, "base")
        self.entries[key] = Entry(kind | mode, part="base", rdev=(major, minor))

    def host_layout(self) -> None:
        """Debian's merged /usr: /bin, /sbin, /lib and /lib64 are links into /usr."""
        for name, target in HOST_LAYOUT_LINKS.items():
            self.add_dir(target)
            self.add_symlink(name, target)

    def resolve(self, path: str) -> str:
        """``path`` with the tree's own directory symlinks followed (e.g. lib/x -> usr/lib/x)."""
        parts = self._key(path).split("/")
        out: list[str] = []
        for i, name in enumerate(parts):
            out.append(name)
            entry = self.entries.get("/".join(out))
            if entry is not None and stat.S_ISLNK(entry.mode) and i < len(parts) - 1:
                target = entry.data.decode()
                base = [] if target.startswith("/") else out[:-1]
                out = [*base, *[p for p in target.split("/") if p]]
        return "/".join(out)

    def mirror(self, host_path: str | Path, part: str) -> str:
        """Copy a host file into the same place, mirroring every symlink on the way; returns its key.

        Each path component that is a symlink on the host becomes the same symlink here
        (unless the tree already has it), so the file ends up at its real path and every
        name the host uses for it works the same way in the image.
        """
        pending = list(Path(os.path.abspath(host_path)).parts[1:])
        walked = Path("/")
        hops = 0
        while pending:
            name = pending.pop(0)
            if name in ("", "."):
                continue
            if name == "..":
                walked = walked.parent
                continue
            candidate = walked / name
            if candidate.is_symlink():
                hops += 1
                if hops > 40:
                    raise ValueError(f"{host_path}: too many levels of symbolic links")
                target = os.readlink(candidate)
                key = self.resolve(str(candidate))
                if key not in self.entries:
                    self.add_symlink(key, target, part)
                if target.startswith("/"):
                    walked = Path("/")
                pending = [*Path(target).parts[1 if target.startswith("/") else 0 :], *pending]
                continue
            walked = candidate
        st = walked.stat()
        key = self.resolve(str(walked))
        if stat.S_ISDIR(st.st_mode):
            self.add_dir(key, stat.S_IMODE(st.st_mode), part)
        else:
            self.add_file(key, walked.read_bytes(), stat.S_IMODE(st.st_mode), part)
        return key

    def part_sizes(self) -> dict[str, int]:
        """Uncompressed bytes per part (file data and symlink targets)."""
        sizes: dict[str, int] = {}
        for entry in self.entries.values():
            sizes[entry.part] = sizes.get(entry.part, 0) + len(entry.data)
        return sizes

    def cpio(self, parts: set[str] | None = None) -> bytes:
        """The newc archive (of only ``parts`` if given): parents before children, then a trailer."""
        out = bytearray()
        for ino, key in enumerate(sorted(self.entries), start=1):
            entry = self.entries[key]
            if parts is not None and entry.part not in parts:
                continue
            write_entry(
                out, key, mode=entry.mode, data=entry.data, ino=ino,
                nlink=2 if stat.S_ISDIR(entry.mode) else 1,
                rdevmajor=entry.rdev[0], rdevminor=entry.rdev[1],
            )  # fmt: skip
        write_trailer(out)
        return bytes(out)

    def compressed(self, parts: set[str] | None = None, level: int = ZSTD_LEVEL) -> bytes:
        """The archive as one zstd frame, as the kernel's initramfs unpacker reads it."""
        params = zstandard.ZstdCompressionParameters.from_level(
            level, window_log=WINDOW_LOG, write_checksum=True, write_content_size=True, threads=-1
        )
        return zstandard.ZstdCompressor(compression_params=params).compress(self.cpio(parts))
