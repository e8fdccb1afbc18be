"""``perceus group``: the same operations on whole groups of nodes."""

import click

from perceus.server.cli import listing
from perceus.server.cli.app import App, pass_app
from perceus.server.cli.completion import complete_groups
from perceus.server.cli.errors import PerceusGroup
from perceus.server.cli.fields import check_value
from perceus.server.cli.node import JSON, warn_unknown_vnfs
from perceus.server.db import Group, Node
from perceus.server.db.model import GROUP_FIELDS, GROUP_LEVEL_FIELDS
from perceus.server.selection import node_order, select_groups

GROUPS = click.argument("groups", nargs=-1, shell_complete=complete_groups)
SOME_GROUPS = click.argument("groups", nargs=-1, required=True, shell_complete=complete_groups)


def chosen_groups(app: App, patterns: tuple[str, ...], where: str) -> list[Group]:
    return select_groups(app.db.groups(), patterns, where, app.warn)


def members(app: App, groups: list[Group]) -> list[Node]:
    names = {g.name for g in groups}
    return sorted((n for n in app.db.nodes() if n.group in names), key=node_order)


@click.group(cls=PerceusGroup)
def group() -> None:
    """Set, display and list group attributes and statistics."""


@group.command()
@SOME_GROUPS
@pass_app
def delete(app: App, groups: tuple[str, ...]) -> None:
    """Delete every node of the groups."""
    where = "group delete"
    nodes = members(app, chosen_groups(app, groups, where))
    listing.delete_confirmed(app, nodes, where)


@group.command("list")
@GROUPS
@JSON
@pass_app
def list_(app: App, groups: tuple[str, ...], as_json: bool) -> None:
    """List group names."""
    chosen = chosen_groups(app, groups, "group list")
    if as_json:
        app.emit_json([g.as_dict() for g in chosen])
    else:
        for g in chosen:
            print(g.name)


@group.command()
@GROUPS
@JSON
@pass_app
def nodelist(app: App, groups: tuple[str, ...], as_json: bool) -> None:
    """List the nodes of each group."""
    chosen = chosen_groups(app, groups, "group nodelist")
    nodes = members(app, chosen)
    if as_json:
        app.emit_json({g.name: [n.hostname for n in nodes if n.group == g.name] for g in chosen})
        return
    for g in chosen:
        print(f"{g.name}:")
        for n in nodes:
            if n.group == g.name:
                print(f"   {n.hostname}")


@group.command("set")
@click.argument("field", type=click.Choice(GROUP_FIELDS), metavar="FIELD")
@click.argument("value")
@SOME_GROUPS
@pass_app
def set_(app: App, field: str, value: str, groups: tuple[str, ...]) -> None:
    """Set FIELD to VALUE on every node of the groups. FIELD: debug, desc, enabled, group, vnfs.

    desc and vnfs are also kept as the group's own, so nodes that join later inherit them;
    'group set group NEW OLD' moves a whole group.
    """
    where = "group set"
    stored = check_value(field, value, where)
    if field == "vnfs":
        warn_unknown_vnfs(app, value)
    with app.db.transaction():
        chosen = chosen_groups(app, groups, where)
        nodes = members(app, chosen)
        for g in chosen:
            if field in GROUP_LEVEL_FIELDS:
                app.db.set_group_value(g.name, field, value)
            elif field == "group":
                app.db.rename_group(g.name, value)
        count = app.db.set_field((n.nodeid for n in nodes), field, stored)
    app.info(f"'{count}' nodes set {field}='{value}'")


@group.command()
@GROUPS
@JSON
@pass_app
def show(app: App, groups: tuple[str, ...], as_json: bool) -> None:
    """Print the groups' own values, then every field of their nodes."""
    chosen = chosen_groups(app, groups, "group show")
    nodes = members(app, chosen)
    if as_json:
        app.emit_json(
            [dict(g.as_dict(), members=[n.as_dict() for n in nodes if n.group == g.name]) for g in chosen]
        )
        return
    for g in chosen:
        print(f"{g.name}: desc={g.desc}\n{g.name}: nodes={g.nodes}\n{g.name}: vnfs={g.vnfs}")
    listing.print_show(app, nodes, False)


@group.command()
@GROUPS
@JSON
@pass_app
def status(app: App, groups: tuple[str, ...], as_json: bool) -> None:
    """Node status of the groups' nodes."""
    listing.print_status(app, members(app, chosen_groups(app, groups, "group status")), as_json)


@group.command()
@GROUPS
@JSON
@pass_app
def summary(app: App, groups: tuple[str, ...], as_json: bool) -> None:
    """Node summary of the groups' nodes."""
    listing.print_summary(app, members(app, chosen_groups(app, groups, "group summary")), as_json)
