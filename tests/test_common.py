"""The primitives every room shares (perceus.common): atomic files, shell KEY="value" files,
percentiles, jittered delays, the pidfile."""

import os
import random
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from perceus.common import atomicfile, shellvars
from perceus.common.atomicfile import atomic_copy, atomic_write, beside, replace_tree, replacing
from perceus.common.daemonize import Pidfile
from perceus.common.jitter import jittered
from perceus.common.shellvars import ShellVarsError
from perceus.common.stats import percentile

# --- atomic files ---


class Boom(Exception):
    pass


def test_atomic_write_replaces_and_leaves_nothing_beside(tmp_path: Path) -> None:
    target = tmp_path / "file"
    atomic_write(target, "old\n")
    atomic_write(target, b"new\n", mode=0o600)
    assert target.read_bytes() == b"new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_a_failure_mid_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("old\n")
    with pytest.raises(Boom), replacing(target) as handle:
        handle.write(b"half of the n")
        raise Boom
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_a_failed_rename_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "file"
    target.write_text("old\n")

    def refuse(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError):
        atomic_write(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_the_mode_is_set_before_any_data(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    with replacing(target, mode=0o600) as handle:
        assert stat.S_IMODE(os.fstat(handle.fileno()).st_mode) == 0o600
        assert os.fstat(handle.fileno()).st_size == 0
        handle.write(b"key")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_like_takes_the_old_file_mode(tmp_path: Path) -> None:
    target = tmp_path / "config"
    target.write_text("a\n")
    target.chmod(0o640)
    atomic_write(target, "b\n", like=target.stat())
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_atomic_copy(tmp_path: Path) -> None:
    (tmp_path / "source").write_bytes(b"x" * 3_000_000)
    atomic_copy(tmp_path / "source", tmp_path / "copy", mode=0o600)
    assert (tmp_path / "copy").read_bytes() == b"x" * 3_000_000
    assert stat.S_IMODE((tmp_path / "copy").stat().st_mode) == 0o600


def test_beside_gives_a_path_with_the_mode_first_and_renames_it_in(tmp_path: Path) -> None:
    target = tmp_path / "image"
    target.write_text("old")
    with beside(target, 0o600) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        assert stat.S_IMODE(tmp.stat().st_mode) == 0o600 and tmp.stat().st_size == 0
        tmp.write_text("new")  # a tool writing by name
        tmp.chmod(0o666)  # ... and meddling with the mode
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["image"]


def test_beside_removes_its_temporary_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "image"
    target.write_text("old")
    with pytest.raises(Boom), beside(target) as tmp:
        tmp.write_text("half")
        raise Boom
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["image"]


def make_tree(path: Path, text: str) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "sub" / "file").write_text(text)
    return path


@pytest.mark.parametrize("can_exchange", [True, False])
def test_replace_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, can_exchange: bool) -> None:
    if not can_exchange:
        monkeypatch.setattr(atomicfile, "exchange", lambda a, b: False)
    target = tmp_path / "tree"
    replace_tree(make_tree(tmp_path / ".new1", "one"), target)  # nothing there yet
    assert (target / "sub" / "file").read_text() == "one"
    replace_tree(make_tree(tmp_path / ".new2", "two"), target)
    assert (target / "sub" / "file").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["tree"]


def test_replace_tree_puts_the_old_tree_back_if_the_new_one_cannot_go_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(atomicfile, "exchange", lambda a, b: False)
    target = make_tree(tmp_path / "tree", "old")
    with pytest.raises(FileNotFoundError):
        replace_tree(tmp_path / "missing", target)
    assert (target / "sub" / "file").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["tree"]


# --- shell KEY="value" files ---

NASTY = ['"', "\\", "$", "`", "'", " ", "\t", "#", "=", ";", "~", "é", "日本", "\u2028", "\x85", "\x0b", "a"]


def test_dump_then_parse_gives_back_any_value() -> None:
    rng = random.Random(10)
    for _ in range(300):
        values = {
            f"K{i}_{rng.randrange(1000)}": "".join(rng.choice(NASTY) for _ in range(rng.randrange(12)))
            for i in range(rng.randrange(1, 6))
        }
        text = shellvars.dump(values)
        assert shellvars.parse(text) == values
        assert shellvars.parse(shellvars.dump(values, equals=" = ")) == values


def test_what_dump_writes_is_what_sh_reads(tmp_path: Path) -> None:
    values = {"A": "say \"hi\" \\ $HOME `id` 'q'", "B": "  spaced  ", "C": "", "D": "ünï cödé #x"}
    script = shellvars.dump(values) + "".join(f'printf "%s\\0" "${key}"\n' for key in values)
    out = subprocess.run(["sh", "-c", script], capture_output=True, check=True).stdout
    assert out.decode().split("\0")[:-1] == list(values.values())


@pytest.mark.parametrize("bad", ["two\nlines", "cr\r", "nul\0"])
def test_newline_cr_and_nul_cannot_be_written(bad: str) -> None:
    with pytest.raises(ShellVarsError, match="newline, CR or NUL"):
        shellvars.dump({"KEY": bad})
    with pytest.raises(ShellVarsError):
        shellvars.quote(bad)
    with pytest.raises(ShellVarsError):
        shellvars.update("KEY=1\n", {"KEY": bad})


@pytest.mark.parametrize("key", ["", "1A", "BAD KEY", "A-B", "A" * 300])
def test_bad_keys_are_refused(key: str) -> None:
    with pytest.raises(ShellVarsError, match="not a shell variable name"):
        shellvars.dump({key: "x"})


def test_update_keeps_comments_order_export_and_spacing() -> None:
    text = (
        "#!/bin/sh\n"
        "# a comment\n"
        "\n"
        "export PATH_X=/bin   # trailing\n"
        '  KERNEL_ARGS = "quiet"\n'
        "export x=1\n"
        "OTHER='kept as is'\n"
    )
    updated = shellvars.update(
        text, {"PATH_X": "/usr/bin", "KERNEL_ARGS": "console=ttyS0", "x": "2", "NEW": "n"}
    )
    assert updated == (
        "#!/bin/sh\n"
        "# a comment\n"
        "\n"
        'export PATH_X="/usr/bin"   # trailing\n'
        '  KERNEL_ARGS = "console=ttyS0"\n'
        'export x="2"\n'
        "OTHER='kept as is'\n"
        'NEW="n"\n'
    )
    assert shellvars.parse(updated) == {"PATH_X": "/usr/bin", "KERNEL_ARGS": "console=ttyS0", "x": "2",
                                        "OTHER": "kept as is", "NEW": "n"}  # fmt: skip


def test_update_appends_in_the_files_own_style() -> None:
    assert shellvars.update('A = "1"\n', {"B": "2"}) == 'A = "1"\nB = "2"\n'
    assert shellvars.update("", {"B": "2"}) == 'B="2"\n'


def test_crlf_lines_are_read() -> None:
    assert shellvars.parse('A="1"\r\nB=2\r\n') == {"A": "1", "B": "2"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("just words\n", "malformed line"),
        ('KEY="open\n', "unterminated double quote"),
        ("KEY='open\n", "unterminated single quote"),
        ('KEY="$HOME"\n', "shell expansion"),
        ("KEY=`id`\n", "unquoted '`'"),
        ("KEY=a;b\n", "unquoted ';'"),
        ('KEY="a" more\n', "unexpected text"),
        ("KEY=~/x\n", "'~'"),
        ("KEY=abc\\\n", "line continuation"),
        ("KEY=a\0b\n", "NUL"),
    ],
)
def test_malformed_lines_are_refused_with_their_number(text: str, message: str) -> None:
    with pytest.raises(ShellVarsError, match=message) as info:
        shellvars.parse("# fine\nOK=1\n" + text, "node.conf")
    assert info.value.path == "node.conf:3"
    with pytest.raises(ShellVarsError) as info:
        shellvars.parse("\n\n" + text)
    assert info.value.path == "line 3"


def test_oversized_text_is_refused() -> None:
    with pytest.raises(ShellVarsError, match="larger than"):
        shellvars.parse("#\n" * (shellvars.MAX_TEXT // 2 + 1))
    with pytest.raises(ShellVarsError, match="line longer than"):
        shellvars.parse("A=" + "x" * shellvars.MAX_LINE)


# --- percentile ---


def test_percentile_nearest_rank() -> None:
    assert percentile([], 50) == 0.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([5.0], 0) == 5.0
    assert percentile([1.0, 2.0], 100) == 2.0


# --- jitter ---


@pytest.mark.parametrize("rng", [None, random.Random(1)])
def test_jitter_stays_within_its_spread(rng: random.Random | None) -> None:
    seen = {jittered(10.0, 0.2, rng) for _ in range(500)}
    assert all(8.0 <= x <= 12.0 for x in seen)
    assert len(seen) > 100  # it does spread
    assert min(seen) < 9.0 and max(seen) > 11.0


def test_jitter_of_nothing_is_nothing_and_never_negative() -> None:
    assert jittered(0, 0.5) == 0.0
    assert jittered(-3, 0.5, random.Random(2)) == 0.0
    assert all(jittered(1.0, 1.5, random.Random(seed)) >= 0.0 for seed in range(200))
    assert jittered(7.0, 0.0, random.Random(3)) == 7.0


def test_jitter_with_a_seeded_generator_repeats() -> None:
    assert [jittered(5.0, 0.1, random.Random(4)) for _ in range(3)] == [
        jittered(5.0, 0.1, random.Random(4))
    ] * 3


# --- pidfile ---


def test_pidfile_names_this_process_and_removes_only_its_own(tmp_path: Path) -> None:
    pidfile = Pidfile(tmp_path / "run" / "prog.pid", "python")
    assert pidfile.holder() is None
    pidfile.write()
    assert pidfile.path.read_text() == f"{os.getpid()}\n"
    assert pidfile.holder() == os.getpid()  # this test runs under python
    assert Pidfile(pidfile.path, "no-such-daemon").holder() is None  # a pid recycled by another program
    pidfile.remove()
    assert not pidfile.path.exists()

    pidfile.path.write_text("1\n")  # another process's file
    pidfile.remove()
    assert pidfile.path.read_text() == "1\n"


def test_a_stale_pidfile_has_no_holder(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = int(proc.stdout)  # exited and reaped
    path = tmp_path / "prog.pid"
    path.write_text(f"{dead}\n")
    assert Pidfile(path, "python").holder() is None
    path.write_text("not a pid\n")
    assert Pidfile(path, "python").holder() is None
