"""perceus vnfs configure: the VNFS config file, the console, the master and root's password."""

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from perceus.server import vnfsconfigure
from perceus.server.errors import InvalidRequest, PerceusError
from perceus.server.vnfsconfigure import (
    read_config,
    set_console,
    set_master,
    set_root_password,
    write_config,
)

ORIGINAL_CONFIG = """\
#!/bin/sh
# This config was created by Perceus:chroot2stateless.sh

# KEXEC: Which kexec version do you want to use?
KEXEC="kexec"

COMPRESSION=low
BACKUP=no   # bare values and trailing comments, as the original writes them

# KERNEL_ARGS: Supply any additional kernel arguments for the kexec'ed kernel.
#   console=ttyS0,115200 Send console information to the serial device
KERNEL_ARGS="ramdisk_blocksize=1024 console=tty0 quiet"
KERNEL='/boot/vmlinuz-6.1.0'
"""


def config_file(tmp_path: Path, text: str = ORIGINAL_CONFIG) -> Path:
    path = tmp_path / "config"
    path.write_text(text)
    return path


def test_read_config_understands_the_shell_subset(tmp_path: Path) -> None:
    values = read_config(config_file(tmp_path))
    assert values == {
        "KEXEC": "kexec",
        "COMPRESSION": "low",
        "BACKUP": "no",
        "KERNEL_ARGS": "ramdisk_blocksize=1024 console=tty0 quiet",
        "KERNEL": "/boot/vmlinuz-6.1.0",
    }


def test_quoting_escapes_and_last_assignment(tmp_path: Path) -> None:
    path = config_file(
        tmp_path,
        'A="say \\"hi\\" \\\\ \\$HOME"\nB=\'single $quoted\'\nC=a"b c"\'d\'\nD=\nE=x#y\nA="second"\n',
    )
    assert read_config(path) == {"A": "second", "B": "single $quoted", "C": "ab cd", "D": "", "E": "x#y"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("just some words\n", "malformed line"),
        ("KEY value\n", "malformed line"),
        ("KEY = two words\n", "unexpected text"),
        ("if [ -f /x ]; then\n", "malformed line"),
        ('KEY="open\n', "unterminated double quote"),
        ("KEY='open\n", "unterminated single quote"),
        ('KEY="$HOME/x"\n', "shell expansion"),
        ("KEY=`id`\n", "unquoted '`'"),
        ("KEY=a;reboot\n", "unquoted ';'"),
        ('KEY="a" trailing\n', "unexpected text"),
        ("KEY=~/x\n", "'~'"),
        ("KEY=abc\\\n", "line continuation"),
        ("9KEY=1\n", "malformed line"),
    ],
)
def test_malformed_config_names_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = config_file(tmp_path, "# first line is fine\nOK=1\n" + text)
    with pytest.raises(PerceusError, match=message) as info:
        read_config(path)
    assert info.value.where == f"{path}:3"


def test_config_size_is_bounded(tmp_path: Path) -> None:
    path = config_file(tmp_path, "# x\n" * (vnfsconfigure.MAX_FILE_BYTES // 4 + 1))
    with pytest.raises(PerceusError, match="larger than"):
        read_config(path)


def test_missing_config_and_symlinked_config_are_errors(tmp_path: Path) -> None:
    with pytest.raises(PerceusError, match="not found"):
        read_config(tmp_path / "config")
    (tmp_path / "elsewhere").write_text("A=1\n")
    (tmp_path / "config").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PerceusError, match="cannot read"):
        read_config(tmp_path / "config")


def test_write_config_keeps_comments_order_and_mode(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    path.chmod(0o640)
    write_config(path, {"COMPRESSION": 'high "max" $x', "NEWKEY": "new value"})
    text = path.read_text()
    lines = text.splitlines()
    assert lines[0] == "#!/bin/sh"
    assert "# KEXEC: Which kexec version do you want to use?" in lines
    assert 'COMPRESSION="high \\"max\\" \\$x"' in lines
    assert lines[-1] == 'NEWKEY="new value"'
    assert "BACKUP=no   # bare values and trailing comments, as the original writes them" in lines
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    values = read_config(path)
    assert values["COMPRESSION"] == 'high "max" $x'
    assert values["NEWKEY"] == "new value"
    assert values["KEXEC"] == "kexec"
    assert [p.name for p in tmp_path.iterdir()] == ["config"]  # no temporary file left behind


def test_write_config_keeps_a_trailing_comment_of_a_rewritten_key(tmp_path: Path) -> None:
    path = config_file(tmp_path, "BACKUP=no  # keep me\n")
    write_config(path, {"BACKUP": "yes"})
    assert path.read_text() == 'BACKUP="yes"  # keep me\n'


def test_spaces_around_equals_are_read_and_kept(tmp_path: Path) -> None:
    """The capsule writer's ``KEY = "value"`` style (perceus.conf's) is understood too."""
    path = config_file(tmp_path, '# made by the capsule writer\nKERNEL_ARGS = "quiet"\nARCH = "x86_64"\n')
    assert read_config(path) == {"KERNEL_ARGS": "quiet", "ARCH": "x86_64"}
    set_console(path, "ttyS0,115200")
    set_master(path, "10.0.0.1")
    assert path.read_text() == (
        '# made by the capsule writer\nKERNEL_ARGS = "quiet console=ttyS0,115200"\nARCH = "x86_64"\n'
        'MASTER = "10.0.0.1"\n'
    )


def test_write_config_creates_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "config"
    write_config(path, {"MASTER": "10.0.0.1"})
    assert path.read_text() == 'MASTER="10.0.0.1"\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


@pytest.mark.parametrize(
    ("key", "value"), [("BAD KEY", "x"), ("1A", "x"), ("A", "two\nlines"), ("A", "nul\0")]
)
def test_write_config_refuses_bad_keys_and_values(tmp_path: Path, key: str, value: str) -> None:
    path = config_file(tmp_path)
    before = path.read_bytes()
    with pytest.raises(InvalidRequest):
        write_config(path, {key: value})
    assert path.read_bytes() == before


def test_write_config_refuses_to_rewrite_a_malformed_file(tmp_path: Path) -> None:
    path = config_file(tmp_path, "A=1\nnot an assignment\n")
    with pytest.raises(PerceusError, match=":2"):
        write_config(path, {"A": "2"})
    assert path.read_text() == "A=1\nnot an assignment\n"


def test_set_console_replaces_the_console_argument(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    assert set_console(path, "ttyS0,115200") == "ttyS0,115200"
    assert read_config(path)["KERNEL_ARGS"] == "ramdisk_blocksize=1024 console=ttyS0,115200 quiet"
    set_console(path, "tty0")
    assert read_config(path)["KERNEL_ARGS"] == "ramdisk_blocksize=1024 console=tty0 quiet"


def test_set_console_collapses_several_and_adds_serial_speed(tmp_path: Path) -> None:
    path = config_file(tmp_path, 'KERNEL_ARGS="console=tty0 quiet console=ttyS1,9600"\n')
    assert set_console(path, "ttyS1") == "ttyS1,115200"
    assert read_config(path)["KERNEL_ARGS"] == "console=ttyS1,115200 quiet"


def test_set_console_adds_kernel_args_when_missing(tmp_path: Path) -> None:
    path = config_file(tmp_path, "# nothing yet\n")
    set_console(path, "hvc0")
    assert path.read_text() == '# nothing yet\nKERNEL_ARGS="console=hvc0"\n'


@pytest.mark.parametrize(
    "console", ["ttyS0 quiet", 'ttyS0"', "ttyS0'", "", "console=ttyS0", "ttyS0,115200 init=/bin/sh", "-tty"]
)
def test_set_console_refuses_unsafe_values(tmp_path: Path, console: str) -> None:
    path = config_file(tmp_path)
    before = path.read_bytes()
    with pytest.raises(InvalidRequest, match="not a console device"):
        set_console(path, console)
    assert path.read_bytes() == before


def test_set_master_sets_every_name_of_the_master(tmp_path: Path) -> None:
    path = config_file(tmp_path, 'MASTERIP="10.0.0.1"\nKERNEL_ARGS="quiet masterip=10.0.0.1"\n')
    set_master(path, "10.9.8.7")
    assert read_config(path) == {
        "MASTERIP": "10.9.8.7",
        "KERNEL_ARGS": "quiet masterip=10.9.8.7",
        "MASTER": "10.9.8.7",
    }


def test_set_master_adds_master_only(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    set_master(path, "master.cluster")
    values = read_config(path)
    assert values["MASTER"] == "master.cluster"
    assert "MASTERIP" not in values
    assert values["KERNEL_ARGS"] == "ramdisk_blocksize=1024 console=tty0 quiet"
    set_master(path, "fd00::1")
    assert read_config(path)["MASTER"] == "fd00::1"


@pytest.mark.parametrize("address", ["", "10.0.0.1 evil", "a;b", '"x"', "-host", "host_name"])
def test_set_master_refuses_bad_addresses(tmp_path: Path, address: str) -> None:
    path = config_file(tmp_path)
    before = path.read_bytes()
    with pytest.raises(InvalidRequest, match="not an IP address or host name"):
        set_master(path, address)
    assert path.read_bytes() == before


SHADOW = """\
root:*:19000:0:99999:7:::
daemon:*:19000:0:99999:7:::
user:$6$abc$def:19000:0:99999:7:::
"""


def vnfs_root(tmp_path: Path, shadow: str | None = SHADOW, mode: int = 0o640) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    if shadow is not None:
        (root / "etc/shadow").write_text(shadow)
        (root / "etc/shadow").chmod(mode)
    return root


def verify(password: str, hashed: str) -> bool:
    """Recompute the hash with the same salt, independently of the code under test."""
    salt = hashed.split("$")[2]
    proc = subprocess.run(
        ["openssl", "passwd", "-6", "-salt", salt, "-stdin"],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return proc.stdout.strip() == hashed


def root_fields(root: Path) -> list[str]:
    lines = (root / "etc/shadow").read_text().splitlines()
    return next(line for line in lines if line.startswith("root:")).split(":")


@pytest.mark.root  # the shadow file's owner (root, group 42) must be kept
def test_set_root_password_writes_a_sha512_hash(tmp_path: Path) -> None:
    root = vnfs_root(tmp_path)
    os.chown(root / "etc/shadow", 0, 42)
    set_root_password(root, "s3cret pass")
    fields = root_fields(root)
    assert fields[1].startswith("$6$")
    assert verify("s3cret pass", fields[1])
    assert not verify("other", fields[1])
    assert int(fields[2]) in (int(time.time() // 86400), int(time.time() // 86400) - 1)
    assert fields[3:] == ["0", "99999", "7", "", "", ""]
    lines = (root / "etc/shadow").read_text().splitlines()
    assert lines[1:] == SHADOW.splitlines()[1:]  # the other accounts are untouched
    info = (root / "etc/shadow").stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o640, 0, 42)
    assert sorted(p.name for p in (root / "etc").iterdir()) == ["shadow"]


def test_set_root_password_keeps_mode_0600(tmp_path: Path) -> None:
    root = vnfs_root(tmp_path, mode=0o600)
    set_root_password(root, "pw")
    assert stat.S_IMODE((root / "etc/shadow").stat().st_mode) == 0o600


def test_set_root_password_adds_a_missing_root_line(tmp_path: Path) -> None:
    root = vnfs_root(tmp_path, shadow="daemon:*:19000:0:99999:7:::\n")
    set_root_password(root, None, hashed="$6$salt$hashvalue")
    lines = (root / "etc/shadow").read_text().splitlines()
    assert lines[0].startswith("root:$6$salt$hashvalue:")
    assert lines[0].split(":")[3:] == ["0", "99999", "7", "", "", ""]
    assert lines[1] == "daemon:*:19000:0:99999:7:::"


def test_lock_keeps_the_hash_behind_a_bang(tmp_path: Path) -> None:
    root = vnfs_root(tmp_path)
    set_root_password(root, None, hashed="$6$salt$hashvalue")
    set_root_password(root, None, lock=True)
    assert root_fields(root)[1] == "!$6$salt$hashvalue"
    set_root_password(root, "", lock=True)  # locking twice changes nothing
    assert root_fields(root)[1] == "!$6$salt$hashvalue"


def test_lock_without_a_hash_is_a_bare_bang(tmp_path: Path) -> None:
    root = vnfs_root(tmp_path)  # root:* has no usable hash
    set_root_password(root, None, lock=True)
    assert root_fields(root)[1] == "!"


@pytest.mark.parametrize(
    ("password", "hashed", "message"),
    [
        (None, None, "empty root password"),
        ("", None, "empty root password"),
        ("two\nlines", None, "one line"),
        ("cr\r", None, "one line"),
        (None, "plaintext", "not a crypt hash"),
        (None, "$6$salt$hash:with:colons", "not a crypt hash"),
        (None, "$6$salt$hash\nroot::0:0:::::", "not a crypt hash"),
    ],
)
def test_bad_passwords_and_hashes_change_nothing(
    tmp_path: Path, password: str | None, hashed: str | None, message: str
) -> None:
    root = vnfs_root(tmp_path)
    with pytest.raises(InvalidRequest, match=message):
        set_root_password(root, password, hashed=hashed)
    assert (root / "etc/shadow").read_text() == SHADOW


@pytest.mark.parametrize(
    ("shadow", "message", "line"),
    [
        ("daemon:*:1:0:99999:7:::\nroot:x:1\n", "malformed shadow entry for root: 3 fields", 2),
        ("root:*:1:0:99999:7:::\nroot:*:1:0:99999:7:::\n", "root appears 2 times", None),
    ],
)
def test_malformed_shadow_is_refused(tmp_path: Path, shadow: str, message: str, line: int | None) -> None:
    root = vnfs_root(tmp_path, shadow=shadow)
    with pytest.raises(PerceusError, match=message) as info:
        set_root_password(root, "pw")
    if line is not None:
        assert info.value.where == f"{root / 'etc/shadow'}:{line}"
    assert (root / "etc/shadow").read_text() == shadow


def test_missing_or_symlinked_shadow_is_refused(tmp_path: Path) -> None:
    root = vnfs_root(tmp_path, shadow=None)
    with pytest.raises(PerceusError, match="shadow file not found"):
        set_root_password(root, "pw")
    (root / "etc/shadow").symlink_to("/etc/shadow")  # must never reach the master's own file
    with pytest.raises(PerceusError, match="cannot read shadow file"):
        set_root_password(root, "pw")
