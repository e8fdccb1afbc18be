"""New node names from defaults.conf: ``Node Name``, ``First Node`` and ``Total Nodes``.

Each ``#`` is one digit. The lowest free number at or above ``First Node`` wins, so a
deleted node's name is reused, as in the original. When ``Total Nodes`` is set, names
are counted only that far, and if the last number has more digits than there are
``#``s every name is widened to fit (the guide: "padded to make sure that there is
always enough room"); without it numbers simply grow past the ``#`` width.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass

from perceus.server.config import ConfigFile
from perceus.server.errors import PerceusError


@dataclass(frozen=True)
class NameTemplate:
    prefix: str
    digits: int
    suffix: str
    first: int
    total: int | None

    @classmethod
    def from_defaults(cls, defaults: ConfigFile) -> "NameTemplate":
        match = re.fullmatch(r"([^#]*)(#+)([^#]*)", defaults.get("Node Name"))
        if match is None:  # config.py validates the key; this guards a hand-built ConfigFile
            raise PerceusError("Node Name needs one run of '#'", defaults.where("Node Name"))
        return cls(
            prefix=match.group(1),
            digits=len(match.group(2)),
            suffix=match.group(3),
            first=defaults.get_int("First Node") or 0,
            total=defaults.get_int("Total Nodes"),
        )

    @property
    def width(self) -> int:
        if self.total is None:
            return self.digits
        return max(self.digits, len(str(self.first + self.total - 1)))

    def name(self, number: int) -> str:
        return f"{self.prefix}{number:0{self.width}d}{self.suffix}"

    def number_of(self, hostname: str) -> int | None:
        """The node number a name stands for under this template, if it follows it."""
        if not (hostname.startswith(self.prefix) and hostname.endswith(self.suffix)):
            return None
        digits = hostname[len(self.prefix) : len(hostname) - len(self.suffix)]
        if not digits.isascii() or not digits.isdigit():
            return None
        number = int(digits)
        return number if self.name(number) == hostname else None

    def first_free(self, hostnames: Iterable[str]) -> str:
        """The lowest unused name; an error when ``Total Nodes`` names are all taken."""
        return self.allocator(hostnames).take()

    def allocator(self, hostnames: Iterable[str]) -> "NameAllocator":
        """Hands out the free names in order, reading the taken ones once (a batch of new nodes)."""
        return NameAllocator(self, {n for n in map(self.number_of, hostnames) if n is not None})

    def bounded_name(self, number: int) -> str:
        """The name of ``number``; an error past ``Total Nodes``."""
        if self.total is not None and number >= self.first + self.total:
            raise PerceusError(
                f"no free node name: all {self.total} names from {self.name(self.first)} "
                f"to {self.name(self.first + self.total - 1)} are taken",
                "defaults.conf: Total Nodes",
            )
        return self.name(number)


class NameAllocator:
    """The lowest free numbers of one template, in order; names it hands out count as taken."""

    def __init__(self, template: NameTemplate, taken: set[int]) -> None:
        self.template = template
        self.taken = taken
        self.next = template.first

    def take(self) -> str:
        while self.next in self.taken:
            self.next += 1
        name = self.template.bounded_name(self.next)
        self.taken.add(self.next)
        return name

    def reserve(self, hostname: str) -> None:
        """A name given explicitly: later automatic names skip it."""
        number = self.template.number_of(hostname)
        if number is not None:
            self.taken.add(number)
