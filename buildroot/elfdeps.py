"""The shared libraries an ELF program needs, read from the files themselves (not ``ldd``).

``ldd`` runs the dynamic loader on the binary; reading ``PT_INTERP`` and ``DT_NEEDED`` with
pyelftools works for any architecture's files and never executes them. Names are resolved
the way the loader would for a Debian system: ``DT_RUNPATH``/``DT_RPATH`` (with
``$ORIGIN``), then the multiarch and plain library directories.
"""

import os
from collections.abc import Iterable
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

from perceus.buildroot.errors import BuildError

__all__ = ["ElfDepsError", "elf_info", "needed_closure"]

SEARCH_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/lib",
    "/lib",
)


class ElfDepsError(BuildError):
    """A file is not a usable ELF object, or a library it needs is nowhere to be found."""


def elf_info(path: Path) -> tuple[str | None, list[str], list[str]]:
    """(PT_INTERP or None, DT_NEEDED names, run paths with $ORIGIN expanded) of one ELF file."""
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            interp = None
            for segment in elf.iter_segments():
                if segment["p_type"] == "PT_INTERP":
                    interp = segment.get_interp_name()
            needed: list[str] = []
            runpaths: list[str] = []
            for section in elf.iter_sections():
                if not isinstance(section, DynamicSection):
                    continue
                for tag in section.iter_tags():
                    if tag.entry.d_tag == "DT_NEEDED":
                        needed.append(tag.needed)
                    elif tag.entry.d_tag == "DT_RUNPATH":
                        runpaths.extend(tag.runpath.split(":"))
                    elif tag.entry.d_tag == "DT_RPATH":
                        runpaths.extend(tag.rpath.split(":"))
    except (OSError, ELFError) as exc:
        raise ElfDepsError(f"not a readable ELF file ({exc})", path) from None
    origin = str(path.parent)
    runpaths = [p.replace("$ORIGIN", origin).replace("${ORIGIN}", origin) for p in runpaths if p]
    return interp, needed, runpaths


def _resolve(name: str, runpaths: Iterable[str], search: Iterable[str]) -> Path:
    for directory in (*runpaths, *search):
        candidate = Path(directory) / name
        if candidate.exists():
            return candidate
    raise ElfDepsError(f"library {name} not found (searched {', '.join((*runpaths, *search))})")


def needed_closure(programs: Iterable[Path], search: Iterable[str] = SEARCH_DIRS) -> list[Path]:
    """Every library (and the loader) the programs need, transitively, as paths on this host.

    Paths are as the loader would name them (``/lib64/ld-linux-x86-64.so.2``), not resolved:
    the caller mirrors their symlink chains into the image.
    """
    search = tuple(search)
    seen: set[str] = set()
    found: list[Path] = []
    queue = [Path(p) for p in programs]
    done: set[Path] = set()
    while queue:
        path = queue.pop(0)
        real = Path(os.path.realpath(path))
        if real in done:
            continue
        done.add(real)
        interp, needed, runpaths = elf_info(real)
        names = [interp] if interp else []
        for name in names:
            if name not in seen:
                seen.add(name)
                found.append(Path(name))
                queue.append(Path(name))
        for name in needed:
            if name in seen:
                continue
            seen.add(name)
            lib = _resolve(name, runpaths, search)
            found.append(lib)
            queue.append(lib)
    return found
