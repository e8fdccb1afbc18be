"""A throwaway perceus instance (its own sysconfdir, statedir and HOME), driven through the real command."""

import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


@dataclass
class Result:
    """What one command did: its exit status and its output."""

    status: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


@dataclass
class Instance:
    """A perceus instance in temporary directories, driven through the real command."""

    root: Path
    env: dict

    @property
    def sysconfdir(self) -> Path:
        return Path(self.env["PERCEUS_SYSCONFDIR"])

    @property
    def statedir(self) -> Path:
        return Path(self.env["PERCEUS_STATEDIR"])

    @property
    def database(self) -> Path:
        return self.statedir / "database" / "perceus.db"

    def run(self, *args: str, input: str | None = None, command: str = "perceus") -> Result:
        proc = subprocess.run(
            [str(BIN / command), *args],
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, input: str | None = None) -> Result:
        result = self.run(*args, input=input)
        assert result.status == 0, f"perceus {' '.join(args)} failed: {result.err}"
        return result

    def snapshot(self) -> tuple:
        """Everything the database holds, to prove a failed command changed nothing."""
        if not self.database.exists():
            return ()
        with sqlite3.connect(self.database) as conn:
            return tuple(
                tuple(conn.execute(f"SELECT * FROM {table} ORDER BY 1")) for table in ("nodes", "groups")
            )

    def sql(self, statement: str, *params) -> list:
        with sqlite3.connect(self.database) as conn:
            return list(conn.execute(statement, params))

    def write_conf(self, name: str, text: str) -> None:
        (self.sysconfdir / name).write_text(text)

    def error(self, *args: str, status: int, contains: str = "", input: str | None = None) -> Result:
        """Run a command that must fail: one error line, the given status, nothing changed."""
        before = self.snapshot()
        result = self.run(*args, input=input)
        assert result.status == status, (result.status, result.err)
        errors = [line for line in result.err.splitlines() if line.startswith("perceus: error: ")]
        assert len(errors) == 1, result.err
        assert "Traceback" not in result.err
        assert contains in errors[0], errors[0]
        assert self.snapshot() == before
        return result


def environment(root: Path) -> dict:
    """The environment of an instance under ``root``: no PERCEUS_* from outside, the venv's commands first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERCEUS_")}
    env.update(
        PERCEUS_SYSCONFDIR=str(root / "etc"),
        PERCEUS_STATEDIR=str(root / "var"),
        HOME=str(root / "home"),
        PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}",
    )
    (root / "home").mkdir(parents=True, exist_ok=True)
    return env
