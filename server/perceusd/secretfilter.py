"""Which nodescript parts a node is not given: the secret module parts, when the master has a
site key and the node did not prove it. One filter per instance, kept: it caches module.json."""

from collections.abc import Callable
from pathlib import Path

from perceus.server import modules
from perceus.server.paths import Paths


def secret_filter(paths: Paths, site_key: bytes | None, authenticated: bool) -> Callable[[Path], bool] | None:
    """The nodescript ``skip`` for this node: secret module parts are withheld when the master
    has a site key and the node did not prove it."""
    if site_key is None or authenticated:
        return None
    found = _SECRET_FILTERS.get(paths)
    if found is None:
        found = _SECRET_FILTERS[paths] = modules.secret_filter(paths)
    return found


_SECRET_FILTERS: dict[Paths, Callable[[Path], bool]] = {}  # one per instance: it caches module.json
