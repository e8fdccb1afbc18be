"""perceus-sim: the simulated node (its body arrives with the protocol issue)."""

import sys


def main() -> None:
    print("perceus-sim: error: the node simulator is not part of this release yet", file=sys.stderr)
    sys.exit(1)
