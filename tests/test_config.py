"""perceus.conf / defaults.conf in the original syntax."""

from pathlib import Path

import pytest

from perceus.server.config import DEFAULTS_KEYS, PERCEUS_KEYS, Settings, load, parse, render
from perceus.server.errors import PerceusError
from perceus.server.paths import Paths


def parsed(text: str, keys=PERCEUS_KEYS):
    warnings: list[str] = []
    return parse(text, Path("/etc/perceus/perceus.conf"), keys, warnings.append), warnings


def test_original_syntax() -> None:
    config, warnings = parsed(
        """
        # a comment line
        master network device = eth1
           vnfs transfer method=  "nfs"
        vnfs transfer master = 10.0.0.1, 10.0.0.2 ,10.0.0.3
        node timeout = 300
        node timeout = 900
        """
    )
    assert warnings == []
    assert config.get("master network device") == "eth1"
    assert config.get("vnfs transfer method") == "nfs"
    assert config.get_list("vnfs transfer master") == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert config.get_int("node timeout") == 900  # the last occurrence wins
    assert config.where("node timeout") == "/etc/perceus/perceus.conf:7"
    assert config.get("database type") == "sqlite"  # unset keys take their default


def test_empty_value_and_quotes() -> None:
    config, _ = parsed('vnfs transfer prefix =\nmaster network device = "eth 2"\n')
    assert config.get("vnfs transfer prefix") == ""
    assert config.get("master network device") == "eth 2"


def test_unknown_key_warns_with_file_and_line() -> None:
    config, warnings = parsed("master network device = eth0\nfrobnicate level = 3\n")
    assert warnings == ["perceus: warning: unknown key 'frobnicate level' (/etc/perceus/perceus.conf:2)"]
    assert config.get("master network device") == "eth0"


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("master network device eth0\n", 1, "malformed line"),
        ("# ok\n= value\n", 2, "malformed line"),
        ("node timeout = soon\n", 1, "node timeout: expected a whole number"),
        ("\n\ndatabase type = oracle\n", 3, "database type: expected one of"),
    ],
)
def test_malformed_lines_name_file_and_line(text: str, line: int, what: str) -> None:
    with pytest.raises(PerceusError) as caught:
        parsed(text)
    assert what in caught.value.what
    assert caught.value.where == f"/etc/perceus/perceus.conf:{line}"


def test_defaults_keys_and_node_name_check() -> None:
    config, _ = parsed("Node Name = node##\nFirst Node = 1\nTotal Nodes = 500\n", DEFAULTS_KEYS)
    assert (config.get("Node Name"), config.get_int("First Node"), config.get_int("Total Nodes")) == (
        "node##",
        1,
        500,
    )
    assert config.get("Group Name") == "cluster" and config.get_int("Enabled") == 1
    for bad in ("n#a#", "node", "n##x##"):
        with pytest.raises(PerceusError, match="Node Name"):
            parsed(f"Node Name = {bad}\n", DEFAULTS_KEYS)


def test_render_reads_back() -> None:
    for keys in (PERCEUS_KEYS, DEFAULTS_KEYS):
        config, warnings = parsed(render(keys), keys)
        assert warnings == []
        for key in keys:
            assert config.get(key.name) == key.default


def test_locations_follow_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERCEUS_SYSCONFDIR", str(tmp_path / "etc"))
    monkeypatch.setenv("PERCEUS_STATEDIR", str(tmp_path / "var"))
    paths = Paths.from_environment()
    assert paths.perceus_conf == tmp_path / "etc" / "perceus.conf"
    assert paths.database_file == tmp_path / "var" / "database" / "perceus.db"
    monkeypatch.delenv("PERCEUS_SYSCONFDIR")
    assert Paths.from_environment().sysconfdir == Path("/etc/perceus")


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    settings = Settings.load(Paths(tmp_path / "etc", tmp_path / "var"))
    assert settings.perceus.get_int("node timeout") == 600
    assert settings.defaults.get("Node Name") == "n####"
    assert load(tmp_path / "nope.conf", PERCEUS_KEYS).values == {}
