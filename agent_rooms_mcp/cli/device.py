"""`agent-rooms login` and `agent-rooms device`: an owner's own machine, enrolled with a hub (DESIGN §9.1)."""

from __future__ import annotations

import socket

import click

from agent_rooms_mcp import remote as remote_device
from agent_rooms_mcp.cli.common import emit, guarded, json_option, perform, remote, settings, table
from agent_rooms_mcp.home import HomeError
from agent_rooms_mcp.models import DeviceInfo, DeviceList
from agent_rooms_mcp.owner_actions import DeviceRevoke, NoArgs
from agent_rooms_mcp.settings import Settings


@click.command("login")
@click.argument("hub_url", metavar="URL")
@click.option("--code", required=True, help="The one-time code the hub's operator gave you (owner enroll).")
@click.option("--name", default=None, help="What to call this machine (default: its host name).")
@json_option
def login(hub_url: str, code: str, name: str | None, as_json: bool) -> None:
    """Enroll this machine with the hub at URL as a device of yours. Its credential is kept in
    device.json (0600) in this machine's AGENT_ROOMS_HOME, with the hub's issuer key pinned; from then on
    the owner commands here (agent, token, grant, consent, room, invite, audit tail) act on that hub.
    Plain http:// is refused except for a hub on this machine's loopback.

    \b
    Example:
        agent-rooms login https://hub.example.org --code enr_...
    """
    here = settings()
    before = guarded(lambda: _replaceable(here), as_json=as_json)
    device = guarded(lambda: remote_device.login(here, hub_url, code, name or socket.gethostname()), as_json=as_json)
    if before is not None:
        # The old credential is gone from this home, but the device stays active on the hub until revoked, and
        # a device may revoke only itself (DESIGN §9.1): only the console or the operator can revoke it now.
        click.echo(
            f"warning: this replaced device {before.name} ({before.device_id}) of {before.owner} at {before.hub} in"
            f" {here.home}; it stays active on the hub. Revoke it on the console's Devices page (agent-rooms"
            " console prints a login link), or ask the hub's operator to run: agent-rooms device revoke"
            f" {before.device_id}. Next time, run agent-rooms device revoke here before logging in again.",
            err=True,
        )
    if as_json:
        click.echo(device.model_dump_json(indent=2, exclude={"credential"}))
    else:
        click.echo(f"logged in to {device.hub} as {device.owner}, device {device.name} ({device.device_id})")
        click.echo(f"pinned issuer key {device.issuer_kid}; credential in {remote_device.device_path(here)}")
    if here.db_path.exists():
        # Both a hub and a device in one home: the one case where a command could reach a hub the person did
        # not mean. Owner commands now go to the hub logged in to (DESIGN §9.1) and say so each time.
        click.echo(
            f"note: {here.home} also holds a hub of its own. Owner commands here (agent, token, room, invite, "
            f"grant, consent, run, status, device, connect) now go to {device.hub} and say so; operator "
            "commands (owner, purge, backup) and serve still act on the hub here. To keep them apart, give the "
            f"device a home of its own: move {remote_device.device_path(here)} into an empty directory and set "
            "AGENT_ROOMS_HOME to it.",
            err=True,
        )


def _replaceable(here: Settings) -> remote_device.Device | None:
    """The device a login in `here` would replace (None: none), refused while a listener runs from `here`:
    it would go on with the old credential, holding the old device's agents (walk 2, finding 4)."""
    from agent_rooms_mcp.listener import LOCK_FILE, listener_holds_lock  # the listener's imports are heavy

    before = remote_device.load(here)
    if before is not None and listener_holds_lock(here.home):
        raise HomeError(
            f"a listener runs from {here.home} (it holds {here.home / LOCK_FILE}) as device {before.name}"
            f" ({before.device_id}) of {before.owner}; logging in again would replace its credential under it."
            " Stop it first (Ctrl-C where agent-rooms listen runs), then log in, then start agent-rooms listen"
            " again"
        )
    return before


@click.group()
def device() -> None:
    """Devices: the owners' own machines, enrolled with `agent-rooms login`."""


@device.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List devices: on a device, its owner's; on the hub's machine, everyone's."""
    far = remote(as_json)
    found: DeviceList = perform("device.list", NoArgs(), as_json=as_json)
    this = far.device.device_id if far is not None else None
    rows = [
        [d.device_id, d.owner, f"{d.name} (this device)" if d.device_id == this else d.name, d.status, d.last_used_at]
        for d in found.devices
    ]
    emit(found, as_json=as_json, text=lambda _: table(rows, ["DEVICE_ID", "OWNER", "NAME", "STATUS", "LAST_USED"]))


@device.command("revoke")
@click.argument("device_id", required=False)
@json_option
def revoke(device_id: str | None, as_json: bool) -> None:
    """Revoke a device: on a device, only itself (DEVICE_ID left out, or its own); on the hub's machine,
    any. It is refused on its next request."""
    far = remote(as_json)
    done: DeviceInfo = perform("device.revoke", DeviceRevoke(device_id=device_id), as_json=as_json)
    if far is not None and done.device_id == far.device.device_id:
        remote_device.forget(far.settings)  # the credential is dead; keep no copy of it
    emit(done, as_json=as_json, text=lambda d: f"revoked device {d.name} ({d.device_id}) of {d.owner}")
