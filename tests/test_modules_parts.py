"""Modules inside perceusd's assembly, secret_filter, and the code the built-in scripts share."""

import importlib.machinery
import importlib.util
import json
import os
import re
from pathlib import Path
from types import ModuleType

import pytest

from perceus.native import nodeset
from perceus.server.errors import PerceusError
from perceus.server.modules import BUILTIN_DIR, Activation, ModuleInfo, secret_filter
from perceus.server.nodescripts import NodeContext, assemble
from perceus.server.paths import Paths
from perceus.server.selection import expand_patterns

from tests.support.instance import Instance

MARK = "# perceus nodescript part: "
PYTHON_SCRIPTS = sorted(
    p for p in BUILTIN_DIR.glob("*/nodescripts/*/*") if p.read_text().startswith("#!/usr/bin/env python3")
)


def load_script(path: Path) -> ModuleType:
    """A built-in script as a Python module (its main() is not run)."""
    loader = importlib.machinery.SourceFileLoader(f"builtin_{path.name.replace('-', '_')}", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def context(perceus: Instance, state: str = "init", **changes) -> NodeContext:
    values = dict(
        state=state,
        nodename="n0005",
        nodeid="00:11:22:33:44:55",
        vnfs="centos-7.1",
        enabled=1,
        debug=0,
        groupname="compute",
        ipaddr="10.0.0.5",
        statedir=perceus.statedir,
        vnfsmaster="10.0.0.1",
        vnfsmethod="http",
        vnfsprefix="",
    )
    return NodeContext(**(values | changes))


def parts(script: bytes) -> list[str]:
    return [line[len(MARK) :] for line in script.decode().splitlines() if line.startswith(MARK)]


def test_activated_modules_take_part_in_the_assembly_in_order(
    perceus: Instance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERCEUS_SYSCONFDIR", str(perceus.sysconfdir))
    monkeypatch.setenv("PERCEUS_STATEDIR", str(perceus.statedir))
    (perceus.sysconfdir / "modules").mkdir()
    (perceus.sysconfdir / "modules" / "modprobe").write_text("n*  loop max_loop=8\n")
    perceus.ok("module", "activate", "hostname")
    perceus.ok("module", "activate", "modprobe", "init/group/compute")
    site = perceus.statedir / "nodescripts" / "init" / "all" / "07-site"
    site.write_text("echo site\n")
    nodescripts, vnfs = perceus.statedir / "nodescripts", perceus.statedir / "vnfs"

    destdir = tmp_path / "overlay"
    destdir.mkdir()
    script = assemble(context(perceus), nodescripts, vnfs, destdir=destdir)
    assert [Path(p).name for p in parts(script)] == ["05-modprobe", "07-site", "10-hostname"]
    text = script.decode()
    assert (
        text.index("modprobe loop max_loop=8") < text.index("echo site") < text.index('hostname "$NODENAME"')
    )
    assert (destdir / "etc/hostname").read_text() == "n0005\n"
    assert (destdir / "etc/modprobe.d/perceus.conf").read_text() == "options loop max_loop=8\n"

    other = assemble(context(perceus, groupname="io"), nodescripts, vnfs, destdir=tmp_path)
    assert [Path(p).name for p in parts(other)] == ["07-site", "10-hostname"]
    ready = assemble(context(perceus, state="ready"), nodescripts, vnfs, destdir=tmp_path)
    assert parts(ready) == []


def test_secret_modules_are_skipped_for_unauthenticated_nodes(
    perceus: Instance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERCEUS_SYSCONFDIR", str(perceus.sysconfdir))
    passwd, group = tmp_path / "passwd", tmp_path / "group"
    passwd.write_text("root:x:0:0:root:/root:/bin/sh\n")
    group.write_text("root:x:0:\n")
    (perceus.sysconfdir / "modules" / "masterauth").mkdir(parents=True)
    (perceus.sysconfdir / "modules" / "masterauth" / "config").write_text(
        f"passwd = {passwd}\ngroup = {group}\n"
    )
    perceus.ok("module", "activate", "masterauth")
    perceus.ok("module", "activate", "hostname")
    nodescripts, vnfs = perceus.statedir / "nodescripts", perceus.statedir / "vnfs"
    paths = Paths(perceus.sysconfdir, perceus.statedir)

    full = tmp_path / "full"
    full.mkdir()
    names = [Path(p).name for p in parts(assemble(context(perceus), nodescripts, vnfs, destdir=full))]
    assert names == ["10-hostname", "30-masterauth"] and (full / "etc/passwd").is_file()
    withheld = tmp_path / "withheld"
    withheld.mkdir()
    script = assemble(context(perceus), nodescripts, vnfs, destdir=withheld, skip=secret_filter(paths))
    assert [Path(p).name for p in parts(script)] == ["10-hostname"] and not (withheld / "etc/passwd").exists()
    ready = assemble(
        context(perceus, state="ready"), nodescripts, vnfs, destdir=tmp_path, skip=secret_filter(paths)
    )
    assert parts(ready) == []


def test_secret_filter(perceus: Instance, tmp_path: Path) -> None:
    paths = Paths(perceus.sysconfdir, perceus.statedir)
    is_secret = secret_filter(paths)
    modules = perceus.statedir / "modules"
    assert is_secret(modules / "masterauth" / "nodescripts" / "init" / "30-masterauth")
    assert is_secret(modules / "passwdfile" / "nodescripts" / "ready" / "31-passwdfile")
    assert not is_secret(modules / "hostname" / "nodescripts" / "init" / "10-hostname")
    assert not is_secret(modules / "groupfile" / "nodescripts" / "init" / "32-groupfile")
    assert not is_secret(perceus.statedir / "nodescripts" / "init" / "all" / "site")
    assert not is_secret(tmp_path / "elsewhere")
    info = modules / "hostname" / "module.json"
    data = json.loads(info.read_text())
    info.write_text(json.dumps(data | {"secret": True}))
    assert is_secret(modules / "hostname" / "nodescripts" / "init" / "10-hostname")  # re-read when changed
    info.write_text("{broken")
    assert is_secret(modules / "hostname" / "nodescripts" / "init" / "10-hostname")  # in doubt: withheld


def test_module_json_and_states_are_parsed_strictly() -> None:
    good = {"name": "a-b_c.1", "version": "1.0", "description": "d", "states": ["init/all"], "secret": False}
    info = ModuleInfo.parse(json.dumps(good).encode(), "x")
    assert info.states == (Activation("init", "all"),) and json.loads(info.to_json()) == good
    for change, message in (
        ({"secret": "yes"}, "secret must be true or false"),
        ({"states": "init/all"}, "states must be a list"),
        ({"states": ["init/some"]}, "not a state"),
        ({"name": ".hidden"}, "name '.hidden' is not allowed"),
        ({"version": "1 0"}, "version '1 0' is not allowed"),
        ({"extra": 1}, "unknown key 'extra'"),
        ({"description": "two\nlines"}, "one line"),
    ):
        with pytest.raises(PerceusError, match=re.escape(message)):
            ModuleInfo.parse(json.dumps(good | change).encode(), "x")
    assert str(Activation.parse("ready/group/a.b-c_d")) == "ready/group/a.b-c_d"
    assert Activation.parse("init/node/n1").directory(Path("/s")) == Path("/s/init/node/n1")


def shared_block(path: Path, start: str, end: str) -> str:
    text = path.read_text()
    return text[text.index(start) : text.index(end)]


def test_the_built_in_scripts_share_one_copy_of_their_helpers() -> None:
    assert len(PYTHON_SCRIPTS) == 6
    with_delivery = [p for p in PYTHON_SCRIPTS if "def deliver" in p.read_text()]
    assert {p.parent.parent.parent.name for p in with_delivery} == {
        "masterauth",
        "passwdfile",
        "groupfile",
        "ipaddr",
        "modprobe",
    }
    start, end = "# -- shared by perceus's built-in modules", "# -- end of the shared part"
    delivery = {shared_block(p, start, end) for p in with_delivery}
    assert len(delivery) == 1
    patterns = [p for p in PYTHON_SCRIPTS if "# -- node patterns" in p.read_text()]
    assert {p.parent.parent.parent.name for p in patterns} == {"ipaddr", "modprobe"}
    assert len({shared_block(p, "# -- node patterns", "# -- end of node patterns") for p in patterns}) == 1
    for path in PYTHON_SCRIPTS:  # master-side scripts cannot rely on the perceus package
        assert not re.search(r"^\s*(import|from)\s+perceus", path.read_text(), re.M), path


PATTERNS = [
    "n0005",
    "n00[00-15]",
    "n[1-3]",
    "n1[8-12]",
    "n00[99-199]",
    "n[001-3]",
    "n[1-2]0",
    "r[1-2]-n[01-03]",
    "n[0-10/3]",
    "a,b,n[1-2]",
    "n[08-10]",
    "x[1-2]y[3-4]z",
    "n[1,3,5-7]",
    "n[ 1 - 3 ]",
    "n[9-10]x5[1-2]",
    "gpu-a_b.[1-2]",
    "n[0000-4095]",
]


@pytest.mark.parametrize("script", ["ipaddr", "modprobe"])
def test_node_patterns_expand_as_perceus_does(script: str) -> None:
    module = load_script(
        BUILTIN_DIR
        / script
        / "nodescripts"
        / "init"
        / os.listdir(BUILTIN_DIR / script / "nodescripts" / "init")[0]
    )
    for pattern in PATTERNS:
        assert sorted(set(module.expand(pattern))) == sorted(nodeset.expand(pattern)), pattern
    for pattern in ("n*", "n00[01-03]*", "io?,n[1-2]"):
        assert sorted(set(module.expand(pattern))) == sorted(expand_patterns(pattern)), pattern
    for bad in (
        "n[1-2][3-4]",
        "n[",
        "n]",
        "n[2-1]",
        "n[a-b]",
        "n[1-3/0]",
        "n[1-2]5[3-4]",
        "n[]",
        "a,,b",
        "n[[1]]",
    ):
        with pytest.raises(ValueError):
            module.expand(bad)
        with pytest.raises(nodeset.NodeSetError):
            nodeset.expand(bad)
    with pytest.raises(ValueError, match="more than"):
        module.expand("n[0-9999999]")
    match = module.matcher("n00[00-15],io*")
    assert [match(n) for n in ("n0000", "n0015", "n0016", "io12", "xio1")] == [True, True, False, True, False]
