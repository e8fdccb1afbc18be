"""``perceus module``: pack, import, list, activate, deactivate, delete, summary, states (guide 4.6)."""

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.support.instance import Instance

BUILTINS = ["groupfile", "hostname", "ipaddr", "masterauth", "modprobe", "passwdfile", "syncnodes"]


def tree_state(*roots: Path) -> dict:
    """Every path under the roots with its link target or content hash: 'nothing changed' is equality."""
    found = {}
    for root in roots:
        for directory, dirs, files in os.walk(root):
            for name in dirs + files:
                path = Path(directory) / name
                if path.is_symlink():
                    found[str(path)] = ("link", os.readlink(path))
                elif path.is_file():
                    found[str(path)] = (
                        "file",
                        hashlib.sha256(path.read_bytes()).hexdigest(),
                        path.stat().st_mode,
                    )
                else:
                    found[str(path)] = ("dir",)
    return found


def snapshot(perceus: Instance) -> dict:
    return tree_state(perceus.statedir / "modules", perceus.statedir / "nodescripts", perceus.sysconfdir)


def fails(perceus: Instance, *args: str, status: int, contains: str = "", input: str | None = None) -> None:
    """One error line, the status, and not one file changed."""
    before = snapshot(perceus)
    perceus.error(*args, status=status, contains=contains, input=input)
    assert snapshot(perceus) == before


def make_module(
    root: Path,
    name: str = "my-mod.1",
    version: str = "1.0",
    states: tuple[str, ...] = ("init/all",),
    hook: str | None = None,
    scripts: dict[str, str] | None = None,
) -> Path:
    """A module source directory: an executable init part, a plain ready part, an optional hook."""
    src = root / f"src-{name}-{version}"
    src.mkdir(parents=True)
    info = {"name": name, "version": version, "description": f"test module {name}", "states": list(states)}
    (src / "module.json").write_text(json.dumps(info | {"secret": False}))
    for rel, text in (
        scripts or {"init/50-mine": "#!/bin/sh\necho 'echo mine'\n", "ready/50-mine": "echo ready\n"}
    ).items():
        path = src / "nodescripts" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755 if text.startswith("#!") else 0o644)
    if hook is not None:
        (src / "activate").write_text(hook)
        (src / "activate").chmod(0o755)
    (src / "files").mkdir()
    (src / "files" / "data.txt").write_text("carried along\n")
    return src


HOOK = '#!/bin/sh\necho "$MODULE $MODULE_STATES" >> "$PERCEUS_SYSCONFDIR/hook.log"\necho "hook says hi"\n'


def packed(perceus: Instance, tmp_path: Path, **kwargs) -> Path:
    src = make_module(tmp_path, **kwargs)
    out = tmp_path / f"{kwargs.get('name', 'my-mod.1')}-{kwargs.get('version', '1.0')}.pmod"
    result = perceus.ok("module", "pack", str(src), str(out))
    assert "written to" in result.out and out.is_file()
    return out


def links(perceus: Instance, layer: str) -> dict[str, str]:
    directory = perceus.statedir / "nodescripts" / layer
    if not directory.is_dir():
        return {}
    return {p.name: os.readlink(p) for p in directory.iterdir() if p.is_symlink()}


def test_builtins_are_installed_at_init_and_not_active(perceus: Instance) -> None:
    assert perceus.ok("module", "list").lines == BUILTINS
    assert perceus.ok("-q", "module", "list").lines == BUILTINS
    assert json.loads(perceus.ok("module", "list", "--json").out) == BUILTINS
    assert links(perceus, "init/all") == {} and links(perceus, "ready/all") == {}
    states = perceus.ok("-q", "module", "states").lines
    assert [line.split() for line in states] == [["init/all", "-"], ["ready/all", "-"]]
    for name in BUILTINS:
        for script in (perceus.statedir / "modules" / name / "nodescripts").rglob("*"):
            if script.is_file():
                assert os.access(script, os.X_OK), script  # every built-in part runs on the master
    before = snapshot(perceus)
    result = perceus.ok("-y", "init")
    assert "Installed module" not in result.out
    assert snapshot(perceus) == before


def test_pack_import_activate_round_trip(perceus: Instance, tmp_path: Path) -> None:
    pmod = packed(perceus, tmp_path, hook=HOOK)
    assert pmod.read_bytes()[:8] == b"\x89PCAP\r\n\x1a"
    result = perceus.ok("module", "import", str(pmod))
    assert "Module 'my-mod.1' (version 1.0) has been imported" in result.out
    assert "my-mod.1" in perceus.ok("module", "list").lines
    installed = perceus.statedir / "modules" / "my-mod.1"
    assert (installed / "files" / "data.txt").read_text() == "carried along\n"
    assert os.access(installed / "nodescripts" / "init" / "50-mine", os.X_OK)
    assert not os.access(installed / "nodescripts" / "ready" / "50-mine", os.X_OK)

    result = perceus.ok("module", "activate", "my-mod.1")  # the module's default: init/all
    assert "hook says hi" in result.out and "Module 'my-mod.1' is active at init/all" in result.out
    link = perceus.statedir / "nodescripts" / "init" / "all" / "50-mine"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert link.resolve() == (installed / "nodescripts" / "init" / "50-mine").resolve()
    assert link.resolve().is_relative_to(perceus.statedir.resolve())
    assert (perceus.sysconfdir / "hook.log").read_text() == "my-mod.1 init/all\n"

    before = snapshot(perceus)
    perceus.ok("module", "activate", "my-mod.1", "init/all")  # idempotent: no change, no hook
    assert snapshot(perceus) == before

    odd = ["ready/group/gpu-a_b.1", "init/node/n00.x-1_2", "init/vnfs/centos-7.1_x86"]
    result = perceus.ok("module", "activate", "my-mod.1", *odd)
    for state in odd:
        assert f"active at {state}" in result.out
        assert links(perceus, state.split("/", 1)[0] + "/" + state.split("/", 1)[1]) == {
            "50-mine": os.readlink(perceus.statedir / "nodescripts" / state / "50-mine")
        }
    assert (perceus.sysconfdir / "hook.log").read_text().splitlines()[-1] == "my-mod.1 " + " ".join(odd)

    summary = perceus.ok("module", "summary").lines
    assert summary[0].split()[:3] == ["Module", "Version", "Active"] and set(summary[1]) == {"-"}
    row = next(line for line in summary if line.startswith("my-mod.1"))
    assert row.split()[:2] == ["my-mod.1", "1.0"] and "test module my-mod.1" in row
    assert "init/all" in row and "ready/group/gpu-a_b.1" in row and "init/vnfs/centos-7.1_x86" in row
    assert not perceus.ok("-q", "module", "summary").lines[0].startswith("Module")
    info = {m["name"]: m for m in json.loads(perceus.ok("module", "summary", "--json").out)}
    assert info["my-mod.1"]["active"] == [
        "init/all",
        "init/node/n00.x-1_2",
        "init/vnfs/centos-7.1_x86",
        "ready/group/gpu-a_b.1",
    ]
    assert info["masterauth"]["secret"] is True and info["hostname"]["active"] == []

    states = dict(line.split(None, 1) for line in perceus.ok("-q", "module", "states").lines)
    assert states == {
        "init/all": "my-mod.1",
        "init/node/n00.x-1_2": "my-mod.1",
        "init/vnfs/centos-7.1_x86": "my-mod.1",
        "ready/all": "-",
        "ready/group/gpu-a_b.1": "my-mod.1",
    }
    perceus.ok("module", "activate", "hostname")
    assert json.loads(perceus.ok("module", "states", "--json").out)["init/all"] == ["hostname", "my-mod.1"]

    result = perceus.ok("module", "deactivate", "my-mod.1", "init/vnfs/centos-7.1_x86")
    assert "no longer active at init/vnfs/centos-7.1_x86" in result.out
    assert links(perceus, "init/vnfs/centos-7.1_x86") == {} and "50-mine" in links(perceus, "init/all")
    result = perceus.ok("module", "deactivate", "my-mod.1")
    assert result.out.count("no longer active") == 3
    assert links(perceus, "init/all") == {
        "10-hostname": "../../../modules/hostname/nodescripts/init/10-hostname"
    }
    assert "not active anywhere" in perceus.ok("module", "deactivate", "my-mod.1").out

    perceus.ok("module", "activate", "my-mod.1", "ready/all")
    result = perceus.ok("-y", "module", "delete", "my-mod.1")
    assert "Module 'my-mod.1' has been deleted" in result.out
    assert "my-mod.1" not in perceus.ok("module", "list").lines
    assert links(perceus, "ready/all") == {} and not installed.exists()
    assert [p.name for p in (perceus.statedir / "modules").iterdir() if p.name.startswith(".")] == [".lock"]


def test_delete_asks_first(perceus: Instance) -> None:
    perceus.ok("module", "activate", "hostname")
    fails(perceus, "module", "delete", "hostname", status=1, contains="not confirmed", input="no\n")
    result = perceus.ok("module", "delete", "hostname", input="yes\n")
    assert "Are you sure you wish to delete 1 modules?" in result.err and "init/all" in result.err
    assert links(perceus, "init/all") == {}
    fails(perceus, "-y", "module", "delete", "hostname", status=1, contains="no module named 'hostname'")
    (perceus.statedir / "modules" / "ipaddr" / "module.json").write_text("{broken")
    perceus.error("module", "summary", status=1, contains="bad module.json")
    perceus.ok("-y", "module", "delete", "ipaddr")  # a broken module can still be removed
    assert "ipaddr" not in perceus.ok("module", "list").lines


def test_import_refuses_what_is_not_a_good_module(perceus: Instance, tmp_path: Path) -> None:
    pmod = packed(perceus, tmp_path)
    fails(perceus, "module", "import", str(tmp_path / "missing.pmod"), status=1, contains="no such file")
    junk = tmp_path / "junk.pmod"
    junk.write_bytes(b"not a capsule at all" * 10)
    fails(perceus, "module", "import", str(junk), status=1, contains="not a capsule")

    data = bytearray(pmod.read_bytes())
    spot = data.index(b"echo 'echo mine'")
    data[spot] ^= 0x20
    tampered = tmp_path / "tampered.pmod"
    tampered.write_bytes(bytes(data))
    fails(perceus, "module", "import", str(tampered), status=1, contains="sha256")
    cut = tmp_path / "cut.pmod"
    cut.write_bytes(pmod.read_bytes()[:-10])
    fails(perceus, "module", "import", str(cut), status=1, contains="truncated")

    perceus.ok("module", "import", str(pmod))
    fails(perceus, "module", "import", str(pmod), status=1, contains="already imported")
    leftovers = [p.name for p in (perceus.statedir / "modules").iterdir() if p.name.startswith(".")]
    assert leftovers == [".lock"]


def test_import_force_replaces_and_relinks(perceus: Instance, tmp_path: Path) -> None:
    perceus.ok("module", "import", str(packed(perceus, tmp_path)))
    perceus.ok("module", "activate", "my-mod.1", "init/all", "init/group/io")
    v2 = packed(
        perceus,
        tmp_path,
        version="2.0",
        scripts={"init/60-new": "#!/bin/sh\necho 'echo new'\n", "ready/50-mine": "echo ready\n"},
    )
    perceus.ok("module", "import", "--force", str(v2))
    assert links(perceus, "init/all") == {"60-new": "../../../modules/my-mod.1/nodescripts/init/60-new"}
    assert set(links(perceus, "init/group/io")) == {"60-new"}
    summary = json.loads(perceus.ok("module", "summary", "--json").out)
    assert next(m for m in summary if m["name"] == "my-mod.1")["version"] == "2.0"


@pytest.mark.parametrize(
    "args, status, contains",
    [
        (["module", "activate", "nope"], 1, "no module named 'nope'"),
        (["module", "activate", "../etc"], 2, "not a module name"),
        (["module", "activate", "syncnodes", "init/all"], 1, "no scripts for state 'init'"),
        (["module", "activate", "hostname", "init"], 2, "not a state"),
        (["module", "activate", "hostname", "init/everything"], 2, "not a state"),
        (["module", "activate", "hostname", "init/group/a/b"], 2, "not a state"),
        (["module", "activate", "hostname", "init/group/.hidden"], 2, "not a name"),
        (["module", "activate", "hostname", "init/node/"], 2, "not a name"),
        (["module", "activate", "hostname", "init/all", "init/node/ok", "init/node/b@d"], 2, "not a name"),
        (["module", "deactivate", "hostname", "init/all"], 2, "not active at init/all"),
        (["module", "deactivate", "nope"], 1, "no module named"),
        (["module", "delete"], 2, "Missing argument"),
        (["module", "frobnicate"], 2, "No such command"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    perceus: Instance, args: list[str], status: int, contains: str
) -> None:
    fails(perceus, *args, status=status, contains=contains)


def test_activation_refuses_conflicts_and_failing_hooks(perceus: Instance, tmp_path: Path) -> None:
    site = perceus.statedir / "nodescripts" / "init" / "all" / "10-hostname"
    site.write_text("echo a site script of the same name\n")
    fails(perceus, "module", "activate", "hostname", status=1, contains="already exists (not a module link)")
    site.unlink()

    failing = '#!/bin/sh\necho "no way" >&2\nexit 3\n'
    perceus.ok("module", "import", str(packed(perceus, tmp_path, name="hooked", hook=failing)))
    fails(perceus, "module", "activate", "hooked", "init/group/new", status=1, contains="status 3: no way")
    assert not (perceus.statedir / "nodescripts" / "init" / "group").exists()

    clash = packed(perceus, tmp_path, name="other", scripts={"init/10-hostname": "echo clash\n"})
    perceus.ok("module", "import", str(clash))
    perceus.ok("module", "activate", "hostname")
    fails(perceus, "module", "activate", "other", status=1, contains="(module 'hostname')")


def test_uninitialised_master_and_pack_errors(bare: Instance, perceus: Instance, tmp_path: Path) -> None:
    bare.error("module", "list", status=1, contains="not initialised")
    src = make_module(tmp_path)
    out = tmp_path / "ok.pmod"
    bare.ok("module", "pack", str(src), str(out))  # packing needs no master
    fails(perceus, "module", "pack", str(src), str(out), status=1, contains="already exists")
    perceus.ok("module", "pack", "--force", str(src), str(out))
    (src / "module.json").write_text('{"name": "x"}')
    fails(perceus, "module", "pack", str(src), str(tmp_path / "x.pmod"), status=1, contains="lacks")
    assert not (tmp_path / "x.pmod").exists()
    (src / "module.json").write_text(
        json.dumps({"name": "x", "version": "1", "description": "", "states": ["ready/all"], "secret": False})
    )
    (src / "nodescripts" / "ready" / "50-mine").unlink()
    fails(perceus, "module", "pack", str(src), str(tmp_path / "x.pmod"), status=1, contains="no scripts")
    (src / "module.json").write_text(
        json.dumps({"name": "x y", "version": "1", "description": "", "states": [], "secret": False})
    )
    fails(perceus, "module", "pack", str(src), str(tmp_path / "x.pmod"), status=1, contains="not allowed")
    bare_dir = tmp_path / "empty"
    bare_dir.mkdir()
    fails(
        perceus, "module", "pack", str(bare_dir), str(tmp_path / "x.pmod"), status=1, contains="module.json"
    )


def test_vnfs_capsule_is_not_a_module(perceus: Instance, tmp_path: Path) -> None:
    from perceus import capsule

    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text("ID=test\nVERSION_ID=1\n")
    out = tmp_path / "t.vnfs"
    capsule.pack(root, out, capsule.Meta("t", "1.0", arch="x86_64", os="test-1"), kernel=False)
    fails(perceus, "module", "import", str(out), status=1, contains="not a module but a vnfs capsule")
