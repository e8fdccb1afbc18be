"""The room rules in .importlinter: the tree keeps them, and a wrong import breaks them.

Each test lints a copy of the rooms laid out as the namespace package ``perceus/<room>``
(first on PYTHONPATH, so it shadows the editable install), never the working tree itself.
"""

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".importlinter"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def contracts() -> dict[str, str]:
    """Each contract's section name and its name, as lint-imports reports it."""
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    prefix = "importlinter:contract:"
    return {s.removeprefix(prefix): parser[s]["name"] for s in parser.sections() if s.startswith(prefix)}


def rooms() -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    packages = parser["importlinter"]["root_packages"].split()
    assert all(p.startswith("perceus.") for p in packages), packages
    return [p.removeprefix("perceus.") for p in packages]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The rooms' Python sources under ``tmp_path/perceus``, with the contracts beside them."""
    for room in rooms():
        shutil.copytree(
            ROOT / room,
            tmp_path / "perceus" / room,
            ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c", "*.pyc"),
        )
    shutil.copy(CONFIG, tmp_path / ".importlinter")
    return tmp_path


def lint(tree: Path) -> subprocess.CompletedProcess:
    """lint-imports as ``make lint`` runs it (the config found in the current directory)."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_rooms_keep_every_contract(tree: Path) -> None:
    result = lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(contracts())} kept, 0 broken." in result.stdout


def test_the_copy_is_what_gets_linted(tree: Path) -> None:
    """A scratch module in the copy shows up in the report: the working tree is not what ran."""
    (tree / "perceus" / "stage1" / "scratch.py").write_text("import perceus.server.errors\n")
    result = lint(tree)
    assert "perceus.stage1.scratch -> perceus.server.errors" in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("room", "source", "broken"),
    [
        ("stage1", "import perceus.server.errors\n", {"rooms", "server-protected"}),
        ("stage1", "from perceus.imagefmt import cpio\n", {"rooms"}),
        ("stage1", "import zstandard\n", {"stage1-libraries"}),
        ("common", "from perceus.native import sysio\n", {"rooms"}),
        ("common", "import construct\n", {"common-stdlib"}),
        ("native", "from perceus.common import errors\n", {"rooms"}),
        ("imagefmt", "from perceus.capsule import format\n", {"rooms"}),
        ("capsule", "from perceus.stage1 import cmdline\n", {"capsule-imports"}),
        ("capsule", "import click\n", {"below-server-libraries"}),
        ("buildroot", "import perceus.server.paths\n", {"rooms", "server-protected"}),
    ],
)
def test_a_wrong_import_breaks_its_contract(tree: Path, room: str, source: str, broken: set[str]) -> None:
    (tree / "perceus" / room / "scratch.py").write_text(source)
    result = lint(tree)
    assert result.returncode != 0, result.stdout
    names = contracts()
    report = " ".join(result.stdout.split())  # lint-imports wraps long contract names
    assert f"{len(names) - len(broken)} kept, {len(broken)} broken" in report, result.stdout
    for contract in broken:
        assert f"{names[contract]} BROKEN" in report, (contract, result.stdout)


def test_a_cycle_inside_a_room_breaks_the_no_cycles_contract(tree: Path) -> None:
    """Two modules of a room that import each other, one of them only inside a function."""
    stage1 = tree / "perceus" / "stage1"
    (stage1 / "scratch_a.py").write_text("from perceus.stage1 import scratch_b\n")
    (stage1 / "scratch_b.py").write_text("def later():\n    from perceus.stage1 import scratch_a\n")
    result = lint(tree)
    assert result.returncode != 0, result.stdout
    report = " ".join(result.stdout.split())
    assert f"{contracts()['no-cycles']} BROKEN" in report, result.stdout
    assert f"{len(contracts()) - 1} kept, 1 broken" in report, result.stdout
