"""Modules (guide 4.6) as workflows: import, pack, activate, deactivate, delete, and where each is active.

Activation and deactivation take the module store's lock, so two of them never
interleave; each has a plan step that changes nothing (what links would be made or
removed), which the apply step repeats under the lock.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from perceus import capsule
from perceus.server.errors import InvalidRequest
from perceus.server.instance import Instance
from perceus.server.modules import Activation, Link, Module, ModuleStore, links
from perceus.server.modules import pack as pack_directory
from perceus.server.paths import Paths
from perceus.server.services.capsules import Written

__all__ = [
    "Activated",
    "ActivationPlan",
    "DeactivationPlan",
    "ModuleDeletion",
    "ModuleSummary",
    "activate",
    "activation_plan",
    "active",
    "deactivate",
    "deactivation_plan",
    "delete_plan",
    "import_module",
    "names",
    "pack",
    "remove",
    "states",
    "store",
    "summary",
]


def store(instance: Instance) -> ModuleStore:
    """The instance's modules; an uninitialised master is an error before anything else."""
    instance.settings  # noqa: B018 - reading the configuration is the check
    return ModuleStore(instance.paths)


def import_module(instance: Instance, path: Path, force: bool = False) -> Module:
    """Install the module in a ``.pmod`` (inactive; where it was active, its links follow it)."""
    return store(instance).import_capsule(path, force, instance.warn)


def pack(source: Path, out: Path, force: bool = False) -> Written:
    """Pack a module directory into a ``.pmod`` (``out`` a file, or a directory to name it in)."""
    manifest = pack_directory(source, out, force)
    return Written(manifest, capsule.output_path(out, manifest))


def names(instance: Instance) -> list[str]:
    return store(instance).names()


def active(paths: Paths) -> dict[str, list[Activation]]:
    """Module name -> the activations it has links in, sorted."""
    found: dict[str, set[Activation]] = {}
    for link in links.scan(paths):
        found.setdefault(link.module, set()).add(link.activation)
    return {name: sorted(acts) for name, acts in found.items()}


# -- activate ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActivationPlan:
    """What activating ``module`` at ``activations`` would create: nothing if it is active there."""

    module: Module
    activations: list[Activation]
    links: list[tuple[Path, str]]  # (symlink, relative target)


@dataclass(frozen=True)
class Activated:
    plan: ActivationPlan
    hook_output: str  # what the module's activate hook printed ("" if it did not run)


def _chosen(module: Module, states: Sequence[str]) -> list[Activation]:
    """The states asked for (deduplicated, in order), or the module's defaults."""
    chosen = [Activation.parse(s) for s in states] if states else list(module.info.states)
    if not chosen:
        raise InvalidRequest(f"module '{module.name}' has no default states: name them (e.g. init/all)")
    return list(dict.fromkeys(chosen))


def _plan(paths: Paths, module: Module, chosen: list[Activation]) -> ActivationPlan:
    return ActivationPlan(module, chosen, links.plan_links(paths, module, chosen))


def activation_plan(instance: Instance, name: str, states: Sequence[str] = ()) -> ActivationPlan:
    """The links activating module ``name`` at ``states`` (default: its own) would create."""
    module = store(instance).get(name)
    return _plan(instance.paths, module, _chosen(module, states))


def activate(instance: Instance, name: str, states: Sequence[str] = ()) -> Activated:
    """Link the module's scripts into the states' nodescript layers, running its hook first.

    The hook runs only when something changes, and a failing hook leaves no link behind:
    activating again where the module is active already is a no-op.
    """
    modules = store(instance)
    module = modules.get(name)
    chosen = _chosen(module, states)
    with modules.locked():
        plan = _plan(instance.paths, module, chosen)
        output = ""
        if plan.links:
            output = links.run_hook(instance.paths, module, chosen, links.HOOK_TIMEOUT)
            links.create_links(plan.links)
    return Activated(plan, output)


# -- deactivate -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeactivationPlan:
    """The links deactivating module ``name`` removes."""

    name: str
    links: list[Link]

    @property
    def places(self) -> list[Activation]:
        """Where the module stops being active, sorted (empty: it was active nowhere asked)."""
        return sorted({link.activation for link in self.links})


def _deactivation(paths: Paths, name: str, wanted: list[Activation]) -> DeactivationPlan:
    mine = [link for link in links.scan(paths) if link.module == name]
    for activation in wanted:
        if not any(link.activation == activation for link in mine):
            raise InvalidRequest(f"module '{name}' is not active at {activation}")
    return DeactivationPlan(name, [link for link in mine if not wanted or link.activation in wanted])


def deactivation_plan(instance: Instance, name: str, states: Sequence[str] = ()) -> DeactivationPlan:
    """The links deactivating module ``name`` at ``states`` (default: everywhere) would remove."""
    store(instance).get(name)
    return _deactivation(instance.paths, name, [Activation.parse(s) for s in states])


def deactivate(instance: Instance, name: str, states: Sequence[str] = ()) -> DeactivationPlan:
    """Remove the module's links at ``states`` (default: everywhere); each state must be active."""
    modules = store(instance)
    modules.get(name)
    wanted = [Activation.parse(s) for s in states]
    with modules.locked():
        plan = _deactivation(instance.paths, name, wanted)
        links.remove_links(plan.links)
    return plan


# -- delete -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModuleDeletion:
    """The modules a delete removes (each named once) and where each is active now."""

    names: list[str]
    active: dict[str, list[Activation]]


def delete_plan(instance: Instance, names: Sequence[str]) -> ModuleDeletion:
    """What deleting ``names`` touches; unknown names are refused (broken modules are not)."""
    modules = store(instance)
    doomed = [name for name in dict.fromkeys(names) if modules.path_of(name)]
    found = active(instance.paths)
    return ModuleDeletion(doomed, {name: found.get(name, []) for name in doomed})


def remove(instance: Instance, name: str) -> None:
    """Deactivate module ``name`` everywhere and remove it."""
    store(instance).remove(name)


# -- what is where ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModuleSummary:
    name: str
    version: str
    description: str
    secret: bool
    defaults: tuple[Activation, ...]  # the states module.json names
    active: list[Activation]  # where it is active now


def summary(instance: Instance) -> list[ModuleSummary]:
    """Every installed module, read and checked (a broken module.json is an error)."""
    modules = store(instance)
    found = active(instance.paths)
    result = []
    for name in modules.names():
        info = modules.get(name).info
        result.append(
            ModuleSummary(
                info.name, info.version, info.description, info.secret, info.states, found.get(info.name, [])
            )
        )
    return result


def states(instance: Instance) -> dict[Activation, list[str]]:
    """Every nodescript state/scope layer, sorted, with the modules active in it (sorted)."""
    store(instance)
    layers: dict[Activation, set[str]] = {a: set() for a, _ in links.layer_dirs(instance.paths)}
    for link in links.scan(instance.paths):
        layers.setdefault(link.activation, set()).add(link.module)
    return {activation: sorted(mods) for activation, mods in sorted(layers.items())}
