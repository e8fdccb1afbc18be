"""``perceus group``: the same operations on whole groups of nodes."""

import click

from perceus.server.cli import listing
from perceus.server.cli.app import App, pass_app
from perceus.server.cli.errors import PerceusGroup
from perceus.server.cli.options import GROUPS, JSON, SOME_GROUPS, warner
from perceus.server.db.model import GROUP_FIELDS
from perceus.server.services import groups as group_service
from perceus.server.services.groups import GroupSelection


def chosen(app: App, patterns: tuple[str, ...]) -> GroupSelection:
    return group_service.select(app.instance, patterns, warner(app))


@click.group(cls=PerceusGroup)
def group() -> None:
    """Set, display and list group attributes and statistics."""


@group.command()
@SOME_GROUPS
@pass_app
def delete(app: App, groups: tuple[str, ...]) -> None:
    """Delete every node of the groups."""
    listing.delete_confirmed(app, chosen(app, groups).members)


@group.command("list")
@GROUPS
@JSON
@pass_app
def list_(app: App, groups: tuple[str, ...], as_json: bool) -> None:
    """List group names."""
    selection = chosen(app, groups)
    if as_json:
        app.emit_json([g.as_dict() for g in selection.groups])
    else:
        for g in selection.groups:
            print(g.name)


@group.command()
@GROUPS
@JSON
@pass_app
def nodelist(app: App, groups: tuple[str, ...], as_json: bool) -> None:
    """List the nodes of each group."""
    selection = chosen(app, groups)
    if as_json:
        app.emit_json({g.name: [n.hostname for n in selection.members_of(g.name)] for g in selection.groups})
        return
    for g in selection.groups:
        print(f"{g.name}:")
        for n in selection.members_of(g.name):
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
    count = group_service.set_field(app.instance, field, value, groups, warner(app))
    app.info(f"'{count}' nodes set {field}='{value}'")


@group.command()
@GROUPS
@JSON
@pass_app
def show(app: App, groups: tuple[str, ...], as_json: bool) -> None:
    """Print the groups' own values, then every field of their nodes."""
    selection = chosen(app, groups)
    if as_json:
        app.emit_json(
            [
                dict(g.as_dict(), members=[n.as_dict() for n in selection.members_of(g.name)])
                for g in selection.groups
            ]
        )
        return
    for g in selection.groups:
        print(f"{g.name}: desc={g.desc}\n{g.name}: nodes={g.nodes}\n{g.name}: vnfs={g.vnfs}")
    listing.print_show(app, selection.members, False)


@group.command()
@GROUPS
@JSON
@pass_app
def status(app: App, groups: tuple[str, ...], as_json: bool) -> None:
    """Node status of the groups' nodes."""
    listing.print_status(app, chosen(app, groups).members, as_json)


@group.command()
@GROUPS
@JSON
@pass_app
def summary(app: App, groups: tuple[str, ...], as_json: bool) -> None:
    """Node summary of the groups' nodes."""
    listing.print_summary(app, chosen(app, groups).members, as_json)
