"""perceusd: answers booting nodes on TCP 987 (its body arrives with the protocol issue)."""

import sys


def main() -> None:
    print("perceusd: error: the node daemon is not part of this release yet", file=sys.stderr)
    sys.exit(1)
