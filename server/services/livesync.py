"""``vnfs livesync`` as a workflow: plan which tree goes to which nodes, leaving what out, then run it.

The plan reads the VNFS's ``livesync.skip`` and ``hybridize`` lists and resolves the
hybridize patterns in the working tree (through its symlinks), so what a node keeps on
NFS is never overwritten or deleted by a sync. ``server.livesync`` runs the rsyncs.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from perceus.server import livesync as rsync
from perceus.server.db import Node
from perceus.server.errors import PerceusError
from perceus.server.hybridize import matches, parse_hybridize
from perceus.server.instance import Instance
from perceus.server.livesync import SyncResult
from perceus.server.services.vnfs import get
from perceus.server.vnfs import Vnfs

__all__ = ["LivesyncPlan", "Synced", "plan_livesync", "run_livesync"]


@dataclass(frozen=True)
class LivesyncPlan:
    """The working tree to copy, the nodes to copy it to, and the paths left alone on them."""

    vnfs: Vnfs
    tree: Path
    targets: list[tuple[str, str]]  # (hostname, address)
    skip: list[str]  # livesync.skip entries
    hybridized: list[str]  # hybridize patterns and the tree's paths they match
    statedir_mount: str  # where nodes mount the master's state directory


@dataclass(frozen=True)
class Synced:
    results: dict[str, SyncResult]  # hostname -> outcome

    @property
    def failed(self) -> int:
        return sum(result.status != "ok" for result in self.results.values())


def plan_livesync(instance: Instance, name: str, nodes: Sequence[Node] | None = None) -> LivesyncPlan:
    """What syncing VNFS ``name`` to ``nodes`` (default: every node using it) would do."""
    vnfs = get(instance, name)
    tree = vnfs.mounted_at
    if tree is None:
        raise PerceusError(f"VNFS '{name}' is not mounted: livesync copies from the working tree")
    chosen = list(nodes) if nodes else [n for n in instance.db.nodes() if n.vnfs == name]
    if not chosen:
        raise PerceusError(f"no nodes use VNFS '{name}'")
    skip_file, hybrid_file = vnfs.path / "livesync.skip", vnfs.path / "hybridize"
    skip = rsync.parse_skip(skip_file.read_text(), str(skip_file)) if skip_file.is_file() else []
    patterns = parse_hybridize(hybrid_file.read_text(), str(hybrid_file)) if hybrid_file.is_file() else []
    hybridized = patterns + ["/" + p for p in matches(tree, patterns)]
    return LivesyncPlan(
        vnfs, tree, rsync.node_targets(chosen), skip, hybridized, str(instance.paths.statedir)
    )


def run_livesync(
    plan: LivesyncPlan,
    *,
    parallel: int = 8,
    dry_run: bool = False,
    timeout: float = 600.0,
    progress: Callable[[str, SyncResult], None] | None = None,
) -> Synced:
    """rsync the plan's tree onto its nodes, ``parallel`` at once; one node's failure stops no other."""
    results = rsync.livesync(
        plan.tree,
        plan.targets,
        plan.skip,
        plan.hybridized,
        parallel=parallel,
        dry_run=dry_run,
        timeout=timeout,
        statedir_mount=plan.statedir_mount,
        progress=progress,
    )
    return Synced(results)
