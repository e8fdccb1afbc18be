"""Perceus modules (guide 4.6): packaged extensions to provisioning, activated per state and scope.

A module is installed under ``$STATEDIR/modules/<name>/`` (``layout``), imported from a
``.pmod`` capsule or shipped with perceus (``store``), and activated by symlinking its
scripts into the nodescript layers perceusd assembles (``links``). ``secret_filter``
tells perceusd which parts must not reach unauthenticated nodes. docs/modules.md is the
user's description.
"""

from perceus.server.modules.layout import Activation, Module, ModuleInfo, check_name
from perceus.server.modules.links import Link, layer_dirs, scan
from perceus.server.modules.secret import secret_filter
from perceus.server.modules.store import BUILTIN_DIR, ModuleStore, pack

__all__ = [
    "BUILTIN_DIR",
    "Activation",
    "Link",
    "Module",
    "ModuleInfo",
    "ModuleStore",
    "check_name",
    "layer_dirs",
    "pack",
    "scan",
    "secret_filter",
]
