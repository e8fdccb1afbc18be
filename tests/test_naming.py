"""Node names from defaults.conf."""

from pathlib import Path

import pytest

from perceus.server.config import DEFAULTS_KEYS, parse
from perceus.server.errors import PerceusError
from perceus.server.naming import NameTemplate


def template(text: str) -> NameTemplate:
    return NameTemplate.from_defaults(parse(text, Path("defaults.conf"), DEFAULTS_KEYS, print))


def test_default_template_counts_from_zero() -> None:
    names = template("")
    assert names.first_free([]) == "n0000"
    assert names.first_free(["n0000", "n0001", "n0003"]) == "n0002"  # the lowest free number


def test_first_node_and_suffix() -> None:
    names = template("Node Name = rack##-node\nFirst Node = 1\n")
    assert names.first_free([]) == "rack01-node"
    assert names.first_free(["rack01-node", "other"]) == "rack02-node"


def test_names_grow_past_the_hashes_without_total() -> None:
    names = template("Node Name = n##\n")
    taken = [f"n{i:02d}" for i in range(100)]
    assert names.first_free(taken) == "n100"


def test_total_nodes_widens_every_name() -> None:
    """Guide 4.1.1: more digits in Total Nodes than '#'s pads every name to fit."""
    names = template("Node Name = n##\nTotal Nodes = 1000\n")
    assert names.width == 3
    assert names.first_free([]) == "n000"
    assert names.number_of("n00") is None  # a name of the old width is not this template's


def test_total_nodes_exhausted_is_an_error() -> None:
    names = template("Node Name = n#\nFirst Node = 1\nTotal Nodes = 3\n")
    with pytest.raises(PerceusError, match="all 3 names from n1 to n3 are taken"):
        names.first_free(["n1", "n2", "n3"])


def test_custom_names_do_not_block_numbers() -> None:
    names = template("")
    assert names.first_free(["n0000x", "node0000", "n000", "n00000"]) == "n0000"


def test_allocator_hands_out_free_names_in_order_for_a_batch() -> None:
    """perceusd adds hundreds of booting nodes in one transaction: one scan, then a cursor."""
    names = template("Node Name = n#\nTotal Nodes = 6\n")
    batch = names.allocator(["n0", "n2"])
    batch.reserve("n3")  # a name given explicitly in the same batch
    assert [batch.take(), batch.take()] == ["n1", "n4"]
    assert batch.take() == "n5"
    with pytest.raises(PerceusError, match="all 6 names"):
        batch.take()
