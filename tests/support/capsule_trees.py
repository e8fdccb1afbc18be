"""Trees to pack into capsules, and capsules damaged on purpose with a still-valid header.

* :func:`make_tree` builds a tiny busybox root tree, :func:`rich_tree` the same with every kind
  of file, owner and mode a VNFS round trip must keep;
* :func:`rewrite_manifest` and :func:`reseal` change a capsule and re-seal its header, so only
  the part under test can object;
* :func:`listing` and :func:`snapshot` are what a tree holds, to compare an unpacked tree with
  its source (:func:`snapshot` also keeps mtimes and hard links).
"""

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

from perceus.capsule.format import HEADER_SIZE, Header

BUSYBOX = Path("/bin/busybox")


def make_tree(root: Path, *, filler: int = 0, device: bool = True) -> Path:
    """A tiny busybox root tree: /bin/busybox, applet links, an os-release, a nodescript-worthy mix."""
    (root / "bin").mkdir(parents=True)
    (root / "sbin").mkdir()
    (root / "etc").mkdir()
    (root / "dev").mkdir()
    (root / "proc").mkdir()
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in ("sh", "echo", "mount", "poweroff", "cat"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "sbin" / "init").symlink_to("/bin/busybox")
    (root / "etc" / "os-release").write_text('ID=debian\nVERSION_ID="12"\n')
    (root / "etc" / "motd").write_text("hello from the image\n")
    (root / "etc" / "secret").write_text("root only\n")
    os.chmod(root / "etc" / "secret", 0o600)
    os.link(root / "etc" / "motd", root / "etc" / "motd.hardlink")
    if device:
        os.mknod(root / "dev" / "console", stat.S_IFCHR | 0o600, os.makedev(5, 1))
    for i in range(filler):
        (root / "etc" / f"filler{i:02d}").write_bytes(os.urandom(40_000))
    return root


def rewrite_manifest(path: Path, mutate) -> None:
    """Change a capsule's manifest and re-seal the header, so only the schema can object."""
    data = bytearray(path.read_bytes())
    header = Header.parse(bytes(data[:HEADER_SIZE]), len(data))
    manifest = json.loads(data[header.manifest_offset : header.manifest_offset + header.manifest_length])
    result = mutate(manifest)
    raw = result if isinstance(result, bytes) else json.dumps(manifest).encode()
    reseal(path, bytes(data[: header.manifest_offset]) + raw, header.manifest_offset, len(raw))


def reseal(path: Path, data: bytes, manifest_offset: int, manifest_length: int, **fields) -> None:
    """Write data with a correct header (CRC, manifest sha256, length) over its first 80 bytes."""
    manifest = data[manifest_offset : manifest_offset + manifest_length]
    header = Header(
        version=fields.get("version", 1),
        flags=fields.get("flags", 0),
        manifest_offset=manifest_offset,
        manifest_length=manifest_length,
        file_length=len(data),
        manifest_sha256=hashlib.sha256(manifest).digest(),
    )
    path.write_bytes(header.build() + data[HEADER_SIZE:])


def listing(root: Path) -> dict[str, tuple]:
    """What a tree holds: type, permissions, owner, content or link target, per relative path."""
    result = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            st = path.lstat()
            if stat.S_ISREG(st.st_mode):
                body = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode):
                body = (os.major(st.st_rdev), os.minor(st.st_rdev))
            else:
                body = None
            result[str(path.relative_to(root))] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                body,
            )
    return result


def snapshot(root: Path) -> dict:
    """Everything a round trip must keep: type, mode, owner, content/target/device, mtime, links."""
    result, inodes = {}, {}
    for directory, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = Path(directory, name)
            st = path.lstat()
            if stat.S_ISREG(st.st_mode):
                body = path.read_bytes()
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, []).append(str(path.relative_to(root)))
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                body = st.st_rdev
            else:
                body = None
            result[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, int(st.st_mtime), body)
    result["<hardlinks>"] = sorted(sorted(group) for group in inodes.values())
    return result


def rich_tree(root: Path) -> Path:
    """make_tree plus a foreign owner, sticky, setuid, a FIFO, a block device, a shadow file
    and a distinct mtime on every path."""
    make_tree(root)
    (root / "usr/share/doc/pkg").mkdir(parents=True)
    (root / "usr/share/doc/pkg/README").write_text("documentation\n")
    (root / "srv").mkdir()
    (root / "srv/owned").write_text("owned by 1234\n")
    os.chown(root / "srv/owned", 1234, 4321)
    os.chmod(root / "srv", 0o1777)
    (root / "bin/suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "bin/suid", 0o4755)
    os.mkfifo(root / "srv/fifo")
    os.mknod(root / "dev/sda", stat.S_IFBLK | 0o660, os.makedev(8, 0))
    (root / "etc/fstab").write_text("proc /proc proc defaults 0 0\n")
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n")
    os.chmod(root / "etc/shadow", 0o640)
    for i, path in enumerate(sorted(root.rglob("*"), reverse=True)):
        os.utime(path, (1_600_000_000 + i, 1_600_000_000 + i), follow_symlinks=False)
    os.utime(root, (1_600_000_000, 1_600_000_000))
    return root
