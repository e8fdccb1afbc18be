"""Which nodescript parts carry secrets: those of modules whose module.json says ``"secret": true``.

perceusd leaves such parts out for a node that did not prove the site key (when the
master has one), so masterauth and passwdfile reach only authenticated nodes.
"""

import os
from collections.abc import Callable
from pathlib import Path

from perceus.server.modules.layout import MODULE_JSON, ModuleInfo
from perceus.server.paths import Paths


def secret_filter(paths: Paths) -> Callable[[Path], bool]:
    """A predicate: True for a resolved part path inside a secret module.

    A module whose module.json cannot be read or parsed counts as secret: when in doubt
    a part is withheld, never handed out. Each module.json is re-read only when it changes
    (a long-lived perceusd sees ``module import --force`` at once).
    """
    root = Path(os.path.realpath(paths.modules_dir))
    cache: dict[str, tuple[tuple[int, int, int], bool]] = {}

    def is_secret(path: Path) -> bool:
        try:
            rel = Path(os.path.realpath(path)).relative_to(root)
        except ValueError:
            return False
        if len(rel.parts) < 2:
            return True
        info_path = root / rel.parts[0] / MODULE_JSON
        try:
            st = os.stat(info_path)
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            cached = cache.get(rel.parts[0])
            if cached is not None and cached[0] == key:
                return cached[1]
            secret = ModuleInfo.parse(info_path.read_bytes(), str(info_path)).secret
        except Exception:  # noqa: BLE001 - unreadable or bad: withhold
            return True
        cache[rel.parts[0]] = (key, secret)
        return secret

    return is_secret
