"""`agent-rooms console`: a one-time login link to the owner console (DESIGN §9.2)."""

from __future__ import annotations

import webbrowser

import click

from agent_rooms_mcp.cli.common import Failed, emit, json_option, perform, remote
from agent_rooms_mcp.models import ConsoleLink
from agent_rooms_mcp.owner_actions import ConsoleLinkArgs

DEFAULT_URL = "http://127.0.0.1:8765"


@click.command("console")
@click.option("--owner", "owner_ref", default=None, help="The owner to log in as (on a device: its own owner).")
@click.option(
    "--url",
    "hub_url",
    default=None,
    help=f"Where your browser reaches this hub (on the hub's machine; default {DEFAULT_URL}, the one "
    "`serve --http` listens on; the --public-url in public mode). On a device: the hub it is enrolled with.",
)
@click.option("--open", "open_browser", is_flag=True, help="Also open the link in this machine's browser.")
@json_option
def console(owner_ref: str | None, hub_url: str | None, open_browser: bool, as_json: bool) -> None:
    """Print a one-time link that logs you in to the owner console (5 minutes, single use). Opening it shows
    one button; pressing it logs this browser in. On an enrolled device the link is minted through the
    device's credential.

    \b
    Examples:
        agent-rooms console --owner alice --open
        agent-rooms console --owner bob --url https://hub.example.org
    """
    far = remote(as_json)
    if far is not None:
        owner_ref = owner_ref or far.device.owner
        hub_url = far.device.hub
    if owner_ref is None:
        raise Failed("INVALID_ARGUMENT", "owner: name the owner to log in as (--owner HANDLE)", as_json)
    # Built unchecked: the action checks its arguments as it would from a device (INVALID_ARGUMENT, not a trace).
    args = ConsoleLinkArgs.model_construct(owner=owner_ref, base_url=hub_url or DEFAULT_URL)
    link: ConsoleLink = perform("console.link", args, as_json=as_json)
    emit(link, as_json=as_json, text=lambda k: f"{k.url}\n(for {k.owner}; single use, until {k.expires_at})")
    if open_browser:
        webbrowser.open(link.url)
