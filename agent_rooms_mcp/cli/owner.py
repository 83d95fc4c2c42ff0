"""`agent-rooms owner`: add, list and verify the people whose agents use this hub."""

from __future__ import annotations

import click

from agent_rooms_mcp.cli.common import (
    confirm_or_refuse,
    emit,
    emit_receipt,
    json_option,
    operator,
    refuse_on_device,
    run,
    settings,
    table,
)
from agent_rooms_mcp.models import Enrollment, OwnerInfo, OwnerList, Receipt


@click.group()
def owner() -> None:
    """Owners: the people whose agents use this hub."""


LOCAL_HELP = (
    "This hub's own supervisor spawns the owner's agents, on this machine, as this OS user. Without it their "
    "wakes wait for the owner's listener on their own machine."
)


@owner.command("add")
@click.argument("handle")
@click.option("--local", is_flag=True, help=LOCAL_HELP)
@json_option
def add(handle: str, local: bool, as_json: bool) -> None:
    """Add owner HANDLE.

    \b
    Example:
        agent-rooms owner add alice
        agent-rooms owner add me --local
    """
    created = run(lambda hub: hub.accounts.add_owner(operator(), handle, local=local), as_json=as_json)
    emit(created, as_json=as_json, text=lambda o: f"added owner {o.handle} ({o.owner_id}){_where(o)}")


@owner.command("set")
@click.argument("handle")
@click.option("--local/--no-local", required=True, help=LOCAL_HELP)
@json_option
def set_(handle: str, local: bool, as_json: bool) -> None:
    """Set whether this hub spawns owner HANDLE's agents; their waiting wakes move with it.

    \b
    Example:
        agent-rooms owner set alice --no-local
    """
    done: OwnerInfo = run(lambda hub: hub.accounts.set_owner_local(operator(), handle, local), as_json=as_json)
    emit(done, as_json=as_json, text=lambda o: f"{o.handle}{_where(o)}")


def _where(o: OwnerInfo) -> str:
    return ": local, woken by this hub" if o.local else ": woken by their own listener"


@owner.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List owners and whether their identity was verified."""
    owners: OwnerList = run(lambda hub: hub.accounts.list_owners(), as_json=as_json)
    rows = [[o.handle, o.owner_id, o.verified_at or "no", "yes" if o.local else "no"] for o in owners.owners]
    emit(owners, as_json=as_json, text=lambda _: table(rows, ["HANDLE", "OWNER_ID", "VERIFIED", "LOCAL"]))


@owner.command("verify")
@click.argument("handle")
@click.option("--method", default="in person", show_default=True, help="How you checked who they are.")
@json_option
def verify(handle: str, method: str, as_json: bool) -> None:
    """Record that you verified owner HANDLE's identity (who, when, how)."""
    done: OwnerInfo = run(lambda hub: hub.accounts.verify_owner(operator(), handle, method), as_json=as_json)
    emit(done, as_json=as_json, text=lambda o: f"verified {o.handle} ({method})")


@owner.command("unverify")
@click.argument("handle")
@json_option
def unverify(handle: str, as_json: bool) -> None:
    """Withdraw the verification of owner HANDLE: cross-owner work with them is refused until verified again."""
    done: OwnerInfo = run(lambda hub: hub.accounts.unverify_owner(operator(), handle), as_json=as_json)
    emit(done, as_json=as_json, text=lambda o: f"{o.handle} is no longer verified")


@owner.command("remove")
@click.argument("handle")
@click.option("--yes", is_flag=True, help="Confirm without asking.")
@json_option
def remove(handle: str, yes: bool, as_json: bool) -> None:
    """Remove owner HANDLE (an operator action): every agent of theirs deleted as `agent delete` does, their
    devices revoked, every grant to and from them revoked, their room memberships ended. Prints a receipt
    proving each credential refused. Their handle is never reused."""
    refuse_on_device(as_json)
    confirm_or_refuse(f"Remove owner {handle}, deleting every agent of theirs and revoking their devices?", yes)
    idle = settings().limits.device_idle_expiry_s
    done: Receipt = run(lambda hub: hub.containment.remove_owner(operator(), handle, idle), as_json=as_json)
    emit_receipt(done, as_json=as_json)


@owner.command("enroll")
@click.argument("handle")
@click.option("--url", "hub_url", default="https://HUB", show_default=True, help="This hub's URL, for the login line.")
@json_option
def enroll(handle: str, hub_url: str, as_json: bool) -> None:
    """Print a one-time code with which owner HANDLE enrolls their own machine (15 minutes, single use,
    void after 5 failed attempts). Give it to that person only.

    \b
    Example:
        agent-rooms owner enroll bob --url https://hub.example.org
    """
    made: Enrollment = run(lambda hub: hub.devices.enroll(operator(), handle, hub_url), as_json=as_json)
    emit(made, as_json=as_json, text=lambda e: f"{e.code}\nexpires {e.expires_at}; {e.owner} runs:\n {e.login_command}")
