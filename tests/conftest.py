"""Fixtures every test may ask for: throwaway perceus instances, node databases of each backend
and in-process service instances (helpers live in tests/support).

The ``root`` mark (pytest.ini) says a test needs real root. A fixture whose set-up needs it
(a tree with device nodes or files of other owners, a tmpfs mount) asks for ``needs_root``,
and every test using that fixture, directly or through others, is marked ``root`` here; so
are the ``netns`` tests. A test that needs root itself carries ``@pytest.mark.root``.
"""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from perceus.server import config
from perceus.server.db import Database, open_database
from perceus.server.instance import Instance as ServerInstance
from perceus.server.paths import Paths

from tests.support.instance import Instance, environment
from tests.support.service_warnings import Warnings


@pytest.fixture(scope="session")
def needs_root() -> None:
    """Asked for by the fixtures that need root: it marks their tests ``root`` (see above)."""


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by mark
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "needs_root" in getattr(item, "fixturenames", ()) or item.get_closest_marker("netns"):
            item.add_marker(pytest.mark.root)


@pytest.fixture
def bare(tmp_path: Path) -> Instance:
    """An instance that has not been initialised yet."""
    return Instance(tmp_path, environment(tmp_path))


@pytest.fixture(scope="session")
def initialised_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``perceus init`` per session (key generation is slow); tests get copies of it."""
    root = tmp_path_factory.mktemp("template")
    Instance(root, environment(root)).ok(
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
    return Instance(root, environment(root))


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


@pytest.fixture
def warn() -> Warnings:
    return Warnings()
