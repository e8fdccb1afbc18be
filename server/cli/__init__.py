"""``perceus``: the administrator's command, in the original's words.

Every failure ends as one line ``perceus: error: <what> (<where>)`` and exit status
2 for usage mistakes or 1 otherwise; click's own messages are folded into that form.
"""

import importlib
import os
import sys
import traceback

import click

from perceus.common.errors import ReasonError
from perceus.server.cli.app import App
from perceus.server.cli.errors import PerceusGroup, exit_status, format_error

VERSION = "0.1.0"


# Command groups in the guide's order, imported only when used: ``node add`` should not
# pay for loading the capsule and image code.
COMMANDS = {
    "node": "perceus.server.cli.node:node",
    "group": "perceus.server.cli.group:group",
    "vnfs": "perceus.server.cli.vnfs:vnfs",
    "module": "perceus.server.cli.module:module",
    "capsule": "perceus.server.cli.capsule:capsule_group",
    "info": "perceus.server.cli.info:info",
    "configure": "perceus.server.cli.configure:configure",
    "service": "perceus.server.cli.service:service",
    "stage1": "perceus.server.cli.stage1:stage1",
    "init": "perceus.server.cli.init:init",
    "completion": "perceus.server.cli.completion:completion",
}


class LazyGroup(PerceusGroup):
    """Lists subcommands in the guide's order and imports each only when it is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attribute)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-i", "--nodeid", "by_nodeid", is_flag=True, help="Node arguments are MAC addresses (NodeIDs).")
@click.option("-y", "--yes", "assume_yes", is_flag=True, help="Answer yes to every confirmation.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the data: no headers or chatter.")
@click.option("-v", "--verbose", count=True, help="Say more; twice shows tracebacks of internal errors.")
@click.version_option(VERSION, prog_name="perceus")
@click.pass_context
def cli(ctx: click.Context, by_nodeid: bool, assume_yes: bool, quiet: bool, verbose: int) -> None:
    """Provision and manage the nodes of a cluster."""
    ctx.obj = App(by_nodeid=by_nodeid, assume_yes=assume_yes, quiet=quiet, verbose=verbose)


def _fail(message: str, where: str, status: int) -> int:
    click.echo(format_error(message, where), err=True)
    return status


def run(argv: list[str] | None = None) -> int:
    """Run the command and return its exit status instead of exiting (tests call this)."""
    verbose = 0
    try:
        with cli.make_context("perceus", list(sys.argv[1:] if argv is None else argv)) as ctx:
            verbose = ctx.params.get("verbose", 0)
            cli.invoke(ctx)
        return 0
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else "", err=True)
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        return _fail(exc.format_message(), exc.ctx.command_path if exc.ctx else "perceus", 2)
    except click.ClickException as exc:
        return _fail(exc.format_message(), "", exc.exit_code)
    except click.Abort:
        return _fail("aborted, nothing changed", "", 1)
    except ReasonError as exc:
        return _fail(exc.reason, exc.path or "", exit_status(exc))
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (| head): nothing left to say
        return 1
    except KeyboardInterrupt:
        return _fail("interrupted", "", 130)
    except Exception as exc:  # noqa: BLE001 - the promise is one line, never a traceback
        if verbose >= 2:
            traceback.print_exc()
        return _fail(f"internal error: {type(exc).__name__}: {exc}", "run with -vv for details", 1)


def main() -> None:
    """Console entry point: shell completion first, then the command."""
    if "_PERCEUS_COMPLETE" in os.environ:
        cli.main(prog_name="perceus")
    sys.exit(run())
