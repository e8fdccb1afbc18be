"""perceus.imagefmt.pack_tree against the pipelines people use, side by side in one run.

A seeded ~1 GiB tree shaped like an OS root (tens of thousands of small text-ish files:
configs, scripts, docs; a few hundred binary-ish shared libraries from kilobytes to
~100 MiB; symlinks, hard links, a deep directory hierarchy) is generated once per
session. Each round packs it three ways, in alternation so machine load hits all alike:

* ours: ``pack_tree(tree, file, level=3, threads=0)``, in this process;
* ``tar -cf - . | zstd -T0 -3 -q > out`` (same codec and level, all cores);
* Warewulf's method: ``find . | cpio -o -H newc --quiet | pigz > out``.

The ratios are medians over the rounds (pytest-benchmark also times ours); the peak
RSS of our packer is measured in a child process. Nothing asserts on timing: the
figures are printed at the end (bench/conftest.py, also under -q).
"""

import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from perceus.imagefmt.image import pack_tree, verify

ROUNDS = 3
SEED = 20240607
MiB = 1 << 20
N_TEXT_FILES = 45_000
N_LIBS = 960
BIG_LIBS_MIB = (24, 40, 64, 96)  # libLLVM-, locale-archive-, firmware-sized files

TAR_ZSTD = "tar -cf - . | zstd -T0 -3 -q > {out}"
CPIO_PIGZ = "find . | cpio -o -H newc --quiet | pigz > {out}"


# --------------------------------------------------------------------------- the tree


def _vocabulary(rng: random.Random) -> tuple[list[str], list[float]]:
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [13, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1]
    words = {"".join(rng.choices(letters, weights, k=rng.randint(2, 11))) for _ in range(30_000)}
    words = sorted(words)
    rng.shuffle(words)
    zipf = [1.0 / (i + 1) ** 1.05 for i in range(len(words))]
    return words, zipf


def _text_pool(rng: random.Random, size: int) -> bytes:
    """Lines shaped like configs, shell/C code and prose, of Zipf-distributed words."""
    words, zipf = _vocabulary(rng)
    pick = rng.choices(words, zipf, k=size // 6)
    out, total, i = [], 0, 0
    while total < size and i + 12 < len(pick):
        style = rng.random()
        w = pick[i : i + 12]
        i += rng.randint(3, 12)
        if style < 0.25:
            line = f"{w[0]}_{w[1]} = {w[2]}{rng.randint(0, 999)}\n"
        elif style < 0.35:
            line = f"# {' '.join(w[: rng.randint(4, 11)])}\n"
        elif style < 0.45:
            line = f"{' ' * 4 * rng.randint(0, 3)}{w[0]}({w[1]}, {w[2]}->{w[3]});\n"
        elif style < 0.55:
            line = f"{' ' * 4 * rng.randint(0, 2)}if [ -f /etc/{w[0]}/{w[1]} ]; then {w[2]} --{w[3]}; fi\n"
        elif style < 0.6:
            line = "\n"
        else:
            line = " ".join(w[: rng.randint(5, 12)]).capitalize() + ".\n"
        out.append(line)
        total += len(line)
    return "".join(out).encode()[:size]


def _binary_pool(rng: random.Random, text: bytes) -> dict[str, bytes]:
    """Sections a shared library is made of, each with its own compressibility."""
    # .text: instruction-like snippets (x86 opcode-heavy byte mix) reused with noise
    table = bytes([0] * 50 + [0xFF] * 10 + [0x48] * 12 + [0x89] * 10 + [0x8B] * 10 + [0xE8] * 8 + [0x0F] * 8
                  + [0x85] * 6 + [0xC3] * 4 + [0x24] * 6 + [0x44] * 6 + [0x83] * 6 + [0x74] * 4
                  + list(rng.randbytes(116)))  # fmt: skip
    snippets = [rng.randbytes(rng.randint(8, 64)).translate(table) for _ in range(4000)]
    code = bytearray()
    while len(code) < 24 * MiB:
        code += rng.choice(snippets)
        code += rng.randbytes(rng.randint(1, 12)).translate(table)
    # .rela/.symtab: fixed-size records with increasing addresses
    records = bytearray()
    addr = 0x1000
    for _ in range(300_000):
        addr += rng.choice((8, 8, 16, 24, 48))
        records += struct.pack("<QQq", addr, (rng.randrange(4000) << 32) | 7, rng.choice((0, 0, 8, -8, 16)))
    # .dynstr: NUL-separated names; .rodata/.gnu_debugdata-like: already compressed bytes
    strings = text[: 6 * MiB].replace(b" ", b"\0").replace(b"\n", b"\0")
    return {
        "code": bytes(code),
        "records": bytes(records),
        "strings": strings,
        "random": rng.randbytes(8 * MiB),
    }


def _library(rng: random.Random, pool: dict[str, bytes], size: int) -> bytes:
    mix = (("code", 0.5), ("records", 0.14), ("strings", 0.14), ("random", 0.1), ("zeros", 0.12))
    out = bytearray(b"\x7fELF\x02\x01\x01\0" + bytes(8) + struct.pack("<HHI", 3, 62, 1))
    while len(out) < size:
        kind = rng.choices([k for k, _ in mix], [w for _, w in mix])[0]
        n = min(size - len(out), rng.randint(4 << 10, 256 << 10))
        if kind == "zeros":
            out += bytes(n)
        else:
            src = pool[kind]
            start = rng.randrange(0, len(src) - n)
            out += src[start : start + n]
    return bytes(out[:size])


def generate_tree(root: Path, seed: int = SEED) -> dict:
    """The OS-shaped tree; returns its statistics."""
    rng = random.Random(seed)
    text = _text_pool(rng, 32 * MiB)
    pool = _binary_pool(rng, text)
    stats = {"files": 0, "bytes": 0, "dirs": 0, "symlinks": 0, "hardlinks": 0}

    def write(path: Path, data: bytes, mode: int = 0o644) -> None:
        path.write_bytes(data)
        if mode != 0o644:
            os.chmod(path, mode)
        stats["files"] += 1
        stats["bytes"] += len(data)

    top = [
        "etc", "usr/share/doc", "usr/share/man/man1", "usr/share/locale", "usr/include", "usr/lib/python3",
        "usr/share/perl5", "usr/share/i18n", "var/lib/dpkg/info", "usr/bin", "usr/sbin", "opt/app/etc",
    ]  # fmt: skip
    stems = ("pkg", "lib", "mod", "x", "conf")
    dirs = []
    for t in top:
        for _ in range(rng.randint(40, 400)):
            depth = rng.choice((1, 1, 2, 2, 3))
            dirs.append(Path(t, *(f"{rng.choice(stems)}{rng.randrange(10_000)}" for _ in range(depth))))
    dirs = sorted(set(dirs))
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)

    exts = (".conf", ".sh", ".py", ".h", ".txt", ".pm", ".html", "", ".list", ".service")
    for i in range(N_TEXT_FILES):
        d = root / rng.choice(dirs)
        size = min(int(rng.lognormvariate(8.0, 1.1)), 400_000)  # median ~3 KiB
        start = rng.randrange(0, len(text) - size - 1)
        header = f"# {d.name} file {i}\n".encode()
        mode = 0o755 if rng.random() < 0.1 else 0o644
        write(d / f"f{i}{rng.choice(exts)}", header + text[start : start + size], mode)

    libdir = root / "usr/lib/x86_64-linux-gnu"
    libdir.mkdir(parents=True)
    for i in range(N_LIBS):
        size = min(int(rng.lognormvariate(12.55, 1.2)), 24 * MiB)  # median ~280 KiB
        real = libdir / f"libgen{i}.so.{i % 7}.{i % 3}.0"
        write(real, _library(rng, pool, size), 0o755)
        os.symlink(real.name, libdir / f"libgen{i}.so.{i % 7}")
        stats["symlinks"] += 1
    for i, mib in enumerate(BIG_LIBS_MIB):
        write(libdir / f"libhuge{i}.so.1", _library(rng, pool, mib * MiB), 0o755)
    bindir = root / "usr/bin"
    for i in range(60):  # busybox-/git-style hard-linked executables
        target = bindir / f"multi{i % 6}"
        if not target.exists():
            write(target, _library(rng, pool, 200_000 + i * 1000), 0o755)
        else:
            os.link(target, bindir / f"alias{i}")
            stats["hardlinks"] += 1
    for i in range(400):
        os.symlink(f"../share/doc/link{i}", root / "usr/sbin" / f"s{i}")
        stats["symlinks"] += 1
    stats["dirs"] = sum(len(ds) for _, ds, _ in os.walk(root))
    return stats


@pytest.fixture(scope="session")
def os_tree(tmp_path_factory) -> Iterator[tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("bench-pack") / "root"
    root.mkdir()
    started = time.perf_counter()
    stats = generate_tree(root)
    os.sync()  # written back now, not while the packers are timed
    stats["generate_s"] = time.perf_counter() - started
    yield root, stats
    shutil.rmtree(root, ignore_errors=True)  # 1 GiB: not left behind in pytest's kept temp dirs


# --------------------------------------------------------------------------- the runs


def _shell(command: str, root: Path, out: Path) -> float:
    os.sync()  # each run starts with no dirty pages of the previous one being written back
    started = time.perf_counter()
    subprocess.run(["sh", "-c", command.format(out=out)], cwd=root, check=True)
    return time.perf_counter() - started


def test_pack_side_by_side(benchmark, os_tree, tmp_path, record_property):
    root, stats = os_tree
    ours_out, tar_out, cpio_out = tmp_path / "ours.img", tmp_path / "tar.zst", tmp_path / "cpio.gz"
    times: dict[str, list[float]] = {"ours": [], "tar": [], "cpio": []}
    results, sizes = {}, {}

    def run_ours():
        os.sync()
        started = time.perf_counter()
        with open(ours_out, "wb") as f:
            results["ours"] = pack_tree(root, f, level=3, threads=0)
        times["ours"].append(time.perf_counter() - started)

    def run_others():  # pedantic's setup: untimed by pytest-benchmark, timed by us
        for path in (ours_out, tar_out, cpio_out):
            path.unlink(missing_ok=True)
        times["tar"].append(_shell(TAR_ZSTD, root, tar_out))
        times["cpio"].append(_shell(CPIO_PIGZ, root, cpio_out))
        sizes["tar"], sizes["cpio"] = tar_out.stat().st_size, cpio_out.stat().st_size
        tar_out.unlink()  # each packer writes beside none of the others' output
        cpio_out.unlink()

    benchmark.group = "pack-1GiB-os-tree"
    benchmark.pedantic(run_ours, setup=run_others, rounds=ROUNDS, iterations=1)

    result = results["ours"]
    with open(ours_out, "rb") as f:
        verify(f, result.chunks)
    assert result.entries == stats["files"] + stats["dirs"] + stats["symlinks"] + stats["hardlinks"] + 1
    ours, tar, cpio = (statistics.median(times[k]) for k in ("ours", "tar", "cpio"))
    size_ratio = result.csize / sizes["tar"]
    gib = result.usize / (1 << 30)
    lines = [
        f"pack tree: {stats['files']} files, {stats['dirs']} dirs, {stats['symlinks']} symlinks, "
        f"{stats['hardlinks']} hard links, {stats['bytes'] / MiB:.0f} MiB of data "
        f"(archive {gib:.2f} GiB, {len(result.chunks)} chunks; generated in {stats['generate_s']:.0f} s)",
        f"pack ratio vs tar|zstd -T0 -3: {tar / ours:.2f}x faster, size {size_ratio:.3f}x "
        f"(median {ours:.2f} s vs {tar:.2f} s; {result.csize / MiB:.1f} MiB vs "
        f"{sizes['tar'] / MiB:.1f} MiB; {ROUNDS} rounds side by side)",
        f"pack ratio vs find|cpio|pigz: {cpio / ours:.1f}x faster "
        f"(median {ours:.2f} s vs {cpio:.2f} s; {sizes['cpio'] / MiB:.1f} MiB)",
    ]
    benchmark.extra_info.update(
        ours_median_s=ours,
        tar_zstd_median_s=tar,
        cpio_pigz_median_s=cpio,
        size_vs_tar_zstd=round(size_ratio, 4),
        ours_csize=result.csize,
        tar_zstd_size=sizes["tar"],
        cpio_pigz_size=sizes["cpio"],
    )
    for line in lines:
        record_property("ratio_line", line)
    ours_out.unlink()


RSS_CHILD = """
import resource, subprocess, sys
code = '''
import sys
from perceus.imagefmt.image import pack_tree
with open(sys.argv[2], "wb") as f:
    pack_tree(sys.argv[1], f, level=3, threads=0)
'''
subprocess.run([sys.executable, "-c", code, sys.argv[1], sys.argv[2]], check=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def test_pack_peak_rss(os_tree, tmp_path, record_property):
    """Peak RSS of a process running pack_tree on the tree (interpreter included), taken
    with getrusage(RUSAGE_CHILDREN) in a fresh parent that has no other child."""
    root, _ = os_tree

    def peak(script: str, out: Path) -> float:
        proc = subprocess.run(
            [sys.executable, "-c", script, str(root), str(out)], check=True, capture_output=True, text=True
        )
        return int(proc.stdout.split()[-1]) / 1024

    packing = peak(RSS_CHILD, tmp_path / "img")
    idle = peak(RSS_CHILD.replace("pack_tree(", "(lambda *a, **k: 0)("), tmp_path / "img0")
    record_property(
        "ratio_line",
        f"pack peak RSS: {packing:.0f} MB (the interpreter with perceus imported: {idle:.0f} MB)",
    )


def test_generated_tree_is_os_shaped(os_tree):
    """The tree is what the figures claim: ~1 GiB, tens of thousands of small files."""
    root, stats = os_tree
    assert stats["files"] > 40_000
    assert 0.9 * (1 << 30) < stats["bytes"] < 1.25 * (1 << 30)
    sample = sorted((root / "etc").rglob("*"))[:50]
    texts = [p.read_bytes() for p in sample if p.is_file()]
    assert texts and all(t.isascii() for t in texts)
    # neither random nor trivially compressible
    blob = b"".join(texts)
    ratio = len(blob) / len(zstandard.ZstdCompressor(level=3).compress(blob))
    assert 1.5 < ratio < 8
