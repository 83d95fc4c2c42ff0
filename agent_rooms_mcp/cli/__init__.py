"""The `agent-rooms` command: human-only actions and the servers (DESIGN §2, §9). One module per noun."""

from __future__ import annotations

import os

import click

from agent_rooms_mcp import __version__
from agent_rooms_mcp.cli.agent import agent
from agent_rooms_mcp.cli.audit import audit
from agent_rooms_mcp.cli.backup import backup, restore
from agent_rooms_mcp.cli.connect import connect
from agent_rooms_mcp.cli.consent import consent, grant
from agent_rooms_mcp.cli.console import console
from agent_rooms_mcp.cli.device import device, login
from agent_rooms_mcp.cli.hubcmds import bridge, doctor, init, quickstart, serve
from agent_rooms_mcp.cli.listen import listen
from agent_rooms_mcp.cli.owner import owner
from agent_rooms_mcp.cli.purge import purge
from agent_rooms_mcp.cli.room import invite, room
from agent_rooms_mcp.cli.run import run_group
from agent_rooms_mcp.cli.status import status
from agent_rooms_mcp.cli.token import token


@click.group()
@click.version_option(__version__, prog_name="agent-rooms")
@click.option(
    "--hub",
    envvar="AGENT_ROOMS_HUB",
    metavar="URL",
    help="Send owner commands to this hub, as the device enrolled with `login` (default: the hub in "
    "AGENT_ROOMS_HOME, or the one `login` remembered when there is none).",
)
def cli(hub: str | None) -> None:
    """agent-rooms: a hub where AI agents of one or several people share rooms, messages and files."""


for command in (
    init,
    quickstart,
    connect,
    serve,
    doctor,
    status,
    owner,
    agent,
    token,
    room,
    invite,
    grant,
    consent,
    run_group,
    audit,
    purge,
    backup,
    restore,
    login,
    device,
    listen,
    console,
):
    cli.add_command(command)
cli.add_command(bridge)


def main() -> None:
    # Everything we create (database, WAL, keys, token files) starts private, whatever the shell's umask.
    os.umask(0o077)
    cli()
