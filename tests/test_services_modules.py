"""The module workflows called in-process: activation and deactivation plans, hooks, delete, summary."""

import json
import os
from pathlib import Path

import pytest

from perceus.server.errors import InvalidRequest, PerceusError
from perceus.server.instance import Instance
from perceus.server.modules import Activation
from perceus.server.paths import Paths
from perceus.server.services import modules

HOOK = '#!/bin/sh\necho "$MODULE $MODULE_STATES" >> "$MODULEDIR/../hook.log"\necho "hook says hi"\n'


@pytest.fixture
def master(perceus):
    """The initialised instance (built-in modules installed, none active), opened in-process."""
    instance = Instance(Paths(perceus.sysconfdir, perceus.statedir))
    yield instance
    instance.close()


def layer(master: Instance, state: str) -> dict[str, str]:
    directory = master.paths.nodescripts_dir / state
    if not directory.is_dir():
        return {}
    return {p.name: os.readlink(p) for p in directory.iterdir() if p.is_symlink()}


def module_source(root: Path, name: str = "svc", hook: str | None = None) -> Path:
    src = root / f"src-{name}"
    (src / "nodescripts" / "init").mkdir(parents=True)
    info = {"name": name, "version": "1.0", "description": "a test", "states": ["init/all"], "secret": False}
    (src / "module.json").write_text(json.dumps(info))
    (src / "nodescripts" / "init" / "50-svc").write_text("#!/bin/sh\necho 'echo svc'\n")
    (src / "nodescripts" / "init" / "50-svc").chmod(0o755)
    if hook is not None:
        (src / "activate").write_text(hook)
        (src / "activate").chmod(0o755)
    return src


def test_activation_plan_changes_nothing_and_activation_is_idempotent(master: Instance) -> None:
    plan = modules.activation_plan(master, "hostname")
    link = master.paths.nodescripts_dir / "init" / "all" / "10-hostname"
    assert plan.activations == [Activation("init", "all")]
    assert plan.links == [(link, "../../../modules/hostname/nodescripts/init/10-hostname")]
    assert not link.is_symlink()

    activated = modules.activate(master, "hostname")
    assert activated.plan.links == plan.links and activated.hook_output == ""
    assert layer(master, "init/all") == {link.name: plan.links[0][1]}
    assert modules.activation_plan(master, "hostname").links == []
    assert modules.activate(master, "hostname", ["init/all", "init/all"]).plan.links == []


def test_the_hook_runs_only_when_links_change(master: Instance, tmp_path: Path) -> None:
    pmod = modules.pack(module_source(tmp_path, hook=HOOK), tmp_path)
    assert pmod.path == tmp_path / "svc-1.0-1.noarch.pmod" and pmod.manifest.kind == "module"
    installed = modules.import_module(master, pmod.path)
    assert installed.name == "svc" and "svc" in modules.names(master)

    first = modules.activate(master, "svc", ["init/group/io"])
    assert first.hook_output == "hook says hi\n"
    log = master.paths.modules_dir / "hook.log"
    assert log.read_text() == "svc init/group/io\n"
    assert modules.activate(master, "svc", ["init/group/io"]).hook_output == ""
    assert log.read_text() == "svc init/group/io\n"


def test_a_failing_hook_leaves_no_link(master: Instance, tmp_path: Path) -> None:
    failing = '#!/bin/sh\necho "no way" >&2\nexit 3\n'
    modules.import_module(master, modules.pack(module_source(tmp_path, hook=failing), tmp_path).path)
    with pytest.raises(PerceusError, match="status 3: no way"):
        modules.activate(master, "svc", ["init/group/new"])
    assert not (master.paths.nodescripts_dir / "init" / "group").exists()


def test_deactivation_plan_then_deactivate(master: Instance) -> None:
    modules.activate(master, "hostname", ["init/all", "init/group/io"])
    plan = modules.deactivation_plan(master, "hostname", ["init/group/io"])
    assert plan.places == [Activation("init", "group", "io")] and len(plan.links) == 1
    assert "10-hostname" in layer(master, "init/group/io")  # planning removed nothing

    with pytest.raises(InvalidRequest, match="not active at ready/all"):
        modules.deactivation_plan(master, "hostname", ["ready/all"])
    assert modules.deactivate(master, "hostname", ["init/group/io"]).places == plan.places
    assert layer(master, "init/group/io") == {} and "10-hostname" in layer(master, "init/all")
    everywhere = modules.deactivate(master, "hostname")
    assert everywhere.places == [Activation("init", "all")] and layer(master, "init/all") == {}
    assert modules.deactivate(master, "hostname").places == []


def test_delete_plan_names_each_module_once_with_where_it_is_active(master: Instance) -> None:
    modules.activate(master, "hostname")
    plan = modules.delete_plan(master, ["hostname", "ipaddr", "hostname"])
    assert plan.names == ["hostname", "ipaddr"]
    assert plan.active == {"hostname": [Activation("init", "all")], "ipaddr": []}
    assert (master.paths.modules_dir / "hostname").is_dir()  # planning deleted nothing
    for name in plan.names:
        modules.remove(master, name)
    assert "hostname" not in modules.names(master) and layer(master, "init/all") == {}
    with pytest.raises(PerceusError, match="no module named 'hostname'"):
        modules.delete_plan(master, ["hostname"])


def test_summary_and_states(master: Instance) -> None:
    modules.activate(master, "hostname", ["init/all", "ready/group/io"])
    rows = {row.name: row for row in modules.summary(master)}
    assert rows["hostname"].active == [Activation("init", "all"), Activation("ready", "group", "io")]
    assert rows["masterauth"].secret is True and rows["ipaddr"].active == []
    assert modules.states(master) == {
        Activation("init", "all"): ["hostname"],
        Activation("ready", "all"): [],
        Activation("ready", "group", "io"): ["hostname"],
    }


def test_errors_name_no_command(master: Instance, tmp_path: Path) -> None:
    """The CLI names the command; a service names only real places, or nothing."""
    for call in (
        lambda: modules.activate(master, "nope"),
        lambda: modules.activate(master, "hostname", ["init"]),
        lambda: modules.activate(master, "syncnodes", ["init/all"]),
        lambda: modules.deactivate(master, "hostname", ["init/all"]),
    ):
        with pytest.raises(PerceusError) as info:
            call()
        assert info.value.where == "", info.value
    (master.paths.modules_dir / "ipaddr" / "module.json").write_text("{broken")
    with pytest.raises(PerceusError) as info:
        modules.summary(master)
    assert info.value.where == str(master.paths.modules_dir / "ipaddr" / "module.json")


def test_an_uninitialised_master_is_refused(tmp_path: Path) -> None:
    instance = Instance(Paths(tmp_path / "etc", tmp_path / "var"))
    with pytest.raises(PerceusError, match="not initialised"):
        modules.names(instance)
    assert not (tmp_path / "var").exists()
