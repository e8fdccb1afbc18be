"""The per-node overlay: the second archive a node unpacks after its image.

It holds what the master made for this one node: the files master-side nodescripts left
in the session's DESTDIR (regular files, directories and symlinks, modes kept),
``/etc/perceus/node.conf`` (who the node is and which master to call back), and the
master's SSH host keys (so every node presents the same host identity) when the node
may have them. Everything is root:root. It is one zstd frame of one cpio newc archive,
built by :func:`perceus.imagefmt.image.build_archive`.

Directories the image already has are never emitted, neither DESTDIR's own nor implied
parents: unpacking a directory entry resets the existing directory's mode, and a
nodescript's ``mkdir -p $DESTDIR/root/.ssh`` must not make the node's /root 0755.

Everything here is synchronous and touches files: perceusd runs it in a worker thread.
"""

import logging
import os
import stat
from collections.abc import Collection, Mapping
from pathlib import Path

from perceus.common import shellvars
from perceus.common.shellvars import ShellVarsError
from perceus.imagefmt import image
from perceus.server.errors import PerceusError

log = logging.getLogger(__name__)

NODE_CONF = "etc/perceus/node.conf"
MAX_OVERLAY = 64 << 20  # bytes of file data one node's overlay may carry (it is held in memory)
NODE_CONF_KEYS = (
    "NODENAME",
    "NODEID",
    "GROUPNAME",
    "VNFS",
    "VNFS_SHA256",
    "MASTERS",
    "PROVISIOND_INTERVAL",
)

Entries = dict[str, tuple[bytes, int]]


def node_conf(values: Mapping[str, str]) -> bytes:
    """``/etc/perceus/node.conf``: ``KEY="value"`` lines, sourceable by sh, read by provisiond."""
    try:
        body = shellvars.dump({key: str(values.get(key, "")) for key in NODE_CONF_KEYS})
    except ShellVarsError as exc:
        raise PerceusError(exc.reason, "node.conf") from None
    return ("# Written by perceusd for this node; provisiond and syncnodes read it.\n" + body).encode()


def ssh_host_keys(ssh_dir: Path) -> Entries:
    """The master's SSH host keys as ``etc/ssh/`` entries: private keys 0600, public 0644."""
    found: Entries = {}
    try:
        names = sorted(os.listdir(ssh_dir))
    except FileNotFoundError:
        return found
    except OSError as exc:
        raise PerceusError(f"cannot read the SSH host keys: {exc.strerror}", str(ssh_dir)) from exc
    for name in names:
        if not name.startswith("ssh_host_") or not (name.endswith("_key") or name.endswith("_key.pub")):
            continue
        path = ssh_dir / name
        try:
            if not stat.S_ISREG(path.lstat().st_mode):
                continue
            data = path.read_bytes()
        except OSError as exc:
            raise PerceusError(f"cannot read an SSH host key: {exc.strerror}", str(path)) from exc
        found[f"etc/ssh/{name}"] = (data, 0o644 if name.endswith(".pub") else 0o600)
    return found


def collect_destdir(destdir: Path, image_dirs: Collection[str], max_bytes: int = MAX_OVERLAY) -> Entries:
    """What master-side nodescripts left in ``destdir``, as build_archive entries.

    Symlinks are recorded, never followed; FIFOs, sockets and devices are left out with a
    warning; directories the image has are left out (their mode stays the image's).
    """
    found: Entries = {}
    total = 0
    root = Path(destdir)
    for current, dirs, files in os.walk(root, followlinks=False):
        for name in sorted(dirs) + sorted(files):
            path = Path(current, name)
            rel = path.relative_to(root).as_posix()
            try:
                info = path.lstat()
                if stat.S_ISDIR(info.st_mode):
                    if rel not in image_dirs:
                        found[rel] = (b"", stat.S_IFDIR | stat.S_IMODE(info.st_mode))
                elif stat.S_ISLNK(info.st_mode):
                    found[rel] = (os.fsencode(os.readlink(path)), stat.S_IFLNK | 0o777)
                elif stat.S_ISREG(info.st_mode):
                    total += info.st_size
                    if total > max_bytes:
                        raise PerceusError(f"the node's overlay is larger than {max_bytes} bytes", str(path))
                    found[rel] = (path.read_bytes(), stat.S_IMODE(info.st_mode))
                else:
                    log.warning("overlay: leaving out %s: not a file, directory or symlink", path)
            except OSError as exc:
                raise PerceusError(f"cannot read a DESTDIR file: {exc.strerror}", str(path)) from exc
    return found


def build(
    destdir: Path | None,
    conf: Mapping[str, str],
    image_dirs: Collection[str],
    ssh_dir: Path | None = None,
) -> bytes:
    """The overlay archive for one node: DESTDIR's contents, node.conf and (given ``ssh_dir``)
    the SSH host keys; perceusd's own files win over DESTDIR's of the same name."""
    entries = collect_destdir(destdir, image_dirs) if destdir is not None else {}
    if ssh_dir is not None:
        entries.update(ssh_host_keys(ssh_dir))
    entries[NODE_CONF] = (node_conf(conf), 0o644)
    try:
        return image.build_archive(entries, existing_dirs=image_dirs)
    except image.ImageError as exc:
        raise PerceusError(f"cannot build the node's overlay: {exc}", str(destdir or "")) from exc


def image_directories(image_path: Path, chunks: list[image.Chunk]) -> frozenset[str]:
    """The directories of an image file (see :func:`perceus.imagefmt.image.archive_directories`)."""
    try:
        with open(image_path, "rb") as src:
            return image.archive_directories(src, chunks)
    except OSError as exc:
        raise PerceusError(f"cannot read the image: {exc.strerror}", str(image_path)) from exc
    except image.ImageError as exc:
        raise PerceusError(f"cannot list the image's directories: {exc}", str(image_path)) from exc
