"""Files that list one path or name a line (hybridize, livesync.skip), read the same bounded way."""

from collections.abc import Iterator

from perceus.server.errors import PerceusError

MAX_FILE_BYTES = 1 << 20  # these are short lists; anything bigger is a mistake
MAX_ENTRY = 4096  # PATH_MAX


def entries(text: str, source: str, what: str) -> Iterator[tuple[str, str]]:
    """Each entry and its ``source:line``; blank lines and ``#`` comments skipped.

    Oversized files and entries holding control characters are refused, naming
    ``what`` a line should be.
    """
    if len(text) > MAX_FILE_BYTES:
        raise PerceusError(f"the list is larger than {MAX_FILE_BYTES} bytes", source)
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{number}"
        if len(line) > MAX_ENTRY or any(ord(ch) < 32 or ord(ch) == 127 for ch in line):
            raise PerceusError(f"not {what}: {line[:60]!r}", where)
        yield line, where
