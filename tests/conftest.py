"""Each test gets a throwaway perceus instance: its own sysconfdir, statedir and HOME."""

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from perceus.server import config
from perceus.server.db import Database, open_database
from perceus.server.instance import Instance as ServerInstance
from perceus.server.paths import Paths

BIN = Path(sys.executable).parent


@dataclass
class Result:
    status: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


@dataclass
class Instance:
    """A perceus instance in temporary directories, driven through the real command."""

    root: Path
    env: dict

    @property
    def sysconfdir(self) -> Path:
        return Path(self.env["PERCEUS_SYSCONFDIR"])

    @property
    def statedir(self) -> Path:
        return Path(self.env["PERCEUS_STATEDIR"])

    @property
    def database(self) -> Path:
        return self.statedir / "database" / "perceus.db"

    def run(self, *args: str, input: str | None = None, command: str = "perceus") -> Result:
        proc = subprocess.run(
            [str(BIN / command), *args],
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, input: str | None = None) -> Result:
        result = self.run(*args, input=input)
        assert result.status == 0, f"perceus {' '.join(args)} failed: {result.err}"
        return result

    def snapshot(self) -> tuple:
        """Everything the database holds, to prove a failed command changed nothing."""
        if not self.database.exists():
            return ()
        with sqlite3.connect(self.database) as conn:
            return tuple(
                tuple(conn.execute(f"SELECT * FROM {table} ORDER BY 1")) for table in ("nodes", "groups")
            )

    def sql(self, statement: str, *params) -> list:
        with sqlite3.connect(self.database) as conn:
            return list(conn.execute(statement, params))

    def write_conf(self, name: str, text: str) -> None:
        (self.sysconfdir / name).write_text(text)

    def error(self, *args: str, status: int, contains: str = "", input: str | None = None) -> Result:
        """Run a command that must fail: one error line, the given status, nothing changed."""
        before = self.snapshot()
        result = self.run(*args, input=input)
        assert result.status == status, (result.status, result.err)
        errors = [line for line in result.err.splitlines() if line.startswith("perceus: error: ")]
        assert len(errors) == 1, result.err
        assert "Traceback" not in result.err
        assert contains in errors[0], errors[0]
        assert self.snapshot() == before
        return result


def _environment(root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERCEUS_")}
    env.update(
        PERCEUS_SYSCONFDIR=str(root / "etc"),
        PERCEUS_STATEDIR=str(root / "var"),
        HOME=str(root / "home"),
        PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}",
    )
    (root / "home").mkdir(parents=True, exist_ok=True)
    return env


@pytest.fixture
def bare(tmp_path: Path) -> Instance:
    """An instance that has not been initialised yet."""
    return Instance(tmp_path, _environment(tmp_path))


@pytest.fixture(scope="session")
def initialised_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``perceus init`` per session (key generation is slow); tests get copies of it."""
    root = tmp_path_factory.mktemp("template")
    Instance(root, _environment(root)).ok(
        "-y", "init", "--master-device", "lo", "--transfer-master", "127.0.0.1"
    )
    return root


@pytest.fixture
def perceus(tmp_path: Path, initialised_template: Path) -> Instance:
    """An initialised instance with the shipped defaults."""
    root = tmp_path / "instance"
    shutil.copytree(initialised_template, root, symlinks=True)
    for link in ("vnfs", "nodescripts"):  # the convenience links point into the template: re-aim them
        path = root / "etc" / link
        path.unlink()
        path.symlink_to(root / "var" / link)
    return Instance(root, _environment(root))


@pytest.fixture
def net(perceus: Instance, tmp_path: Path) -> Instance:
    """An instance (master device lo, 127.0.0.1/8) whose run and exports paths are private."""
    perceus.env["PERCEUS_RUNDIR"] = str(tmp_path / "run")
    perceus.env["PERCEUS_EXPORTS_FILE"] = str(tmp_path / "exports.d" / "perceus.exports")
    return perceus


@pytest.fixture
def stage1(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in kernel and initramfs, for commands that only copy them (the TFTP tree)."""
    kernel, initramfs = tmp_path / "vmlinuz-test", tmp_path / "initramfs-test.img"
    kernel.write_bytes(b"kernel " * 1000)
    initramfs.write_bytes(os.urandom(300_000))
    return kernel, initramfs


# The node database backends the database tests run against: what perceus.conf says to
# choose each. A new backend runs the whole suite by adding its line here.
DATABASE_BACKENDS = {"sqlite": "database type = sqlite\n"}


@pytest.fixture(params=sorted(DATABASE_BACKENDS))
def database_settings(request: pytest.FixtureRequest, tmp_path: Path) -> config.Settings:
    """Settings of a fresh instance whose perceus.conf chooses one backend (each in turn)."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "perceus.conf").write_text(DATABASE_BACKENDS[request.param])
    return config.Settings.load(Paths(etc, tmp_path / "var"))


@pytest.fixture
def database(database_settings: config.Settings) -> Iterator[Database]:
    """An empty node database of each backend."""
    db = open_database(database_settings)
    yield db
    db.close()


@pytest.fixture
def server_instance(tmp_path: Path) -> Iterator[ServerInstance]:
    """An initialised instance (master device lo) for in-process service tests: its two
    configuration files; the state tree and database appear on first use."""
    paths = Paths(tmp_path / "etc", tmp_path / "var")
    paths.sysconfdir.mkdir(parents=True)
    paths.perceus_conf.write_text(
        config.render(
            config.PERCEUS_KEYS, {"master network device": "lo", "vnfs transfer master": "127.0.0.1"}
        )
    )
    paths.defaults_conf.write_text(config.render(config.DEFAULTS_KEYS))
    instance = ServerInstance(paths)
    yield instance
    instance.close()


class Warnings(list):
    """A services' ``warn`` that keeps the (what, where) pairs it is given."""

    def __call__(self, what: str, where: str | None) -> None:
        self.append((what, where))


@pytest.fixture
def warn() -> Warnings:
    return Warnings()
