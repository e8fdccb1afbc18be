"""``perceus init``: first-time set-up of one master (guide 3.2.2).

Asks what perceus.conf and defaults.conf need (unless given flags or -y), then the site
service writes them, the state tree, the node database and the SSH keys; it never
overwrites existing configuration without ``--force`` and can be run again safely.
"""

import click

from perceus.server.cli.app import App, pass_app
from perceus.server.cli.errors import PerceusCommand
from perceus.server.services import site
from perceus.server.services.site import InitStep, MasterAnswers, NodeDefaults, Step


def _ask(app: App, flag_value: str | None, question: str, default: str) -> str:
    if flag_value is not None:
        return flag_value
    if app.assume_yes:
        return default
    return click.prompt(question, default=default, show_default=True)


def _said(step: InitStep) -> str:
    if step.step is Step.WROTE:
        return f"Wrote {step.subject}"
    if step.step is Step.DATABASE:
        return f"Node database ready: {step.subject} (schema {step.schema})"
    if step.step is Step.HOST_KEY:
        return f"Created SSH host key {step.subject}"
    if step.step is Step.ROOT_KEY:
        return f"Created root's SSH key {step.subject}"
    return f"Installed module '{step.subject}' (activate it with: perceus module activate {step.subject})"


@click.command(cls=PerceusCommand)
@click.option("--master-device", help="Network device facing the nodes (perceus.conf).")
@click.option("--transfer-master", help="Address nodes reach the VNFS server on (perceus.conf).")
@click.option("--node-name", help="Name template of new nodes, e.g. n#### (defaults.conf).")
@click.option("--group-name", help="Group of new nodes (defaults.conf).")
@click.option("--first-node", help="Number of the first node (defaults.conf).")
@click.option("--force", is_flag=True, help="Rewrite existing configuration files.")
@pass_app
def init(app: App, master_device, transfer_master, node_name, group_name, first_node, force) -> None:
    """First-time set-up: configuration, database, SSH keys. Prompts unless given flags or -y."""
    plan = site.plan_init(app.paths, force)
    master = defaults = None
    if plan.perceus_conf:
        device = _ask(app, master_device, "Network device facing the nodes", plan.devices[0])
        address = _ask(
            app, transfer_master, "Address of the VNFS transfer master", site.device_address(device)
        )
        master = MasterAnswers(device, address)
    if plan.defaults_conf:
        defaults = NodeDefaults(
            node_name=_ask(app, node_name, "Name of new nodes ('#' = digit)", "n####"),
            group_name=_ask(app, group_name, "Group of new nodes", "cluster"),
            first_node=_ask(app, first_node, "Number of the first node", "0"),
        )
    for step in site.initialise(app.paths, master, defaults, app.warn):
        app.info(_said(step))
    app.info("Perceus is initialised.")
