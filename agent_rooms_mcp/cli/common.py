"""What every command shares: the operator principal, `--json`, opening the hub, error output (DESIGN §7)."""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import click
import structlog
from pydantic import BaseModel

from agent_rooms_mcp import audit
from agent_rooms_mcp.audit import Actor
from agent_rooms_mcp.errors import RoomsError
from agent_rooms_mcp.home import HomeError
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.logs import configure_logging
from agent_rooms_mcp.models import Receipt
from agent_rooms_mcp.principals import Human
from agent_rooms_mcp.settings import Settings

if TYPE_CHECKING:
    from agent_rooms_mcp.remote import Remote

T = TypeVar("T")

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")


def operator() -> Actor:
    """The human at this terminal: the only principal that may take human-only actions (DESIGN §2)."""
    return Actor("operator", getpass.getuser(), via="cli")


def settings() -> Settings:
    return Settings.from_env()


class Failed(click.ClickException):
    """`CODE: message` on stderr and exit 1, or `{"code", "message"}` on stdout with --json."""

    def __init__(self, code: str, message: str, as_json: bool) -> None:
        super().__init__(f"{code}: {message}")
        self.code_name, self.text, self.as_json = code, message, as_json

    def show(self, file: Any = None) -> None:
        if self.as_json:
            click.echo(json.dumps({"code": self.code_name, "message": self.text}))
        else:
            click.echo(f"{self.code_name}: {self.text}", err=True)


def run(call: Callable[[Hub], Awaitable[T]], *, as_json: bool = False) -> T:
    """Open the hub, make one service call, close it."""

    refuse_on_device(as_json)

    async def main() -> T:
        async with Hub.open(settings()) as hub:
            try:
                return await call(hub)
            except RoomsError as e:
                # A refused human action is audited like a refused tool call (DESIGN §6), in its own
                # transaction after the refused one rolled back.
                await audit.record_denial(hub.store, operator(), _action(), e.audit_reason)
                raise

    return guarded(lambda: anyio.run(main), as_json=as_json)


def _action() -> str:
    context = click.get_current_context(silent=True)
    words = context.command_path.split()[1:] if context else []
    return "cli." + ".".join(words or ["command"])


def guarded(fn: Callable[[], T], *, as_json: bool = False) -> T:
    try:
        return fn()
    except RoomsError as e:
        raise Failed(e.code.value, e.message if e.missing is None else not_found_text(*e.missing), as_json) from e
    except (HomeError, PermissionError) as e:
        raise Failed("HOME", str(e), as_json) from e


# The command that lists what a NOT_FOUND's kind could have named. A kind whose command this build lacks (or
# none here) gets no pointer rather than a wrong one.
_LISTED_BY = {
    "agent": "agent list",
    "agent in this room": "room list",
    "owner": "owner list",
    "room": "room list",
    "token": "token list",
    "run": "run list",
    "run of this agent still queued or running": "run list",
    "device": "device list",
    "task or proposal": "consent list --owner OWNER",
    "active grant": "grant list",
    "variable for this agent": "agent env list AGENT",
}


def not_found_text(kind: str, ref: str | None) -> str:
    """`no such agent 'bob-codx' (agent-rooms agent list)`: the reference as typed, when it is id- or
    handle-shaped (an error quotes nothing else, DESIGN §7), and where to find the valid ones."""
    text = f"no such {kind}"
    if ref is not None and audit.safe_target(ref) == ref:
        text += f" '{ref}'"
    listing = _LISTED_BY.get(kind)
    if listing is not None and _has_command(listing):
        context = click.get_current_context(silent=True)
        owner = context.params.get("owner_ref") if context else None
        if isinstance(owner, str) and audit.safe_target(owner) == owner:
            listing = listing.replace("OWNER", owner)  # the owner this very command named
        text += f" (agent-rooms {listing})"
    return text


def _has_command(line: str) -> bool:
    context = click.get_current_context(silent=True)
    command: click.Command | None = context.find_root().command if context else None
    for word in line.split():
        if word.isupper() or word.startswith("--"):
            break
        # get_command, not .commands: the top-level group loads a command only when it is asked for by name.
        command = command.get_command(context, word) if isinstance(command, click.Group) and context else None
    return command is not None


def emit(result: BaseModel, *, as_json: bool, text: Callable[[Any], str]) -> None:
    click.echo(result.model_dump_json(indent=2) if as_json else text(result))


def receipt_text(receipt: Receipt) -> str:
    """A kill switch's receipt as lines a person reads: each credential with the refusal that proves it, each
    run with how it ended, each thing withdrawn (DESIGN §6)."""
    lines = [f"{receipt.action} {receipt.subject} ({receipt.subject_id}) at {receipt.at}"]
    for c in receipt.credentials:
        proof = f"refused: {c.answer}" if c.refused else "NOT REFUSED: still accepted"
        lines.append(f"  credential {c.token_id} ({c.kind}) revoked, {proof}")
    for r in receipt.runs:
        how = "processes gone"
        if not r.processes_gone:
            how = f"end not confirmed (listener {r.listener}, last contact {r.last_contact})"
        lines.append(f"  run {r.run_id} of {r.agent}: {r.state}, signal {r.stop_signal}, {how}")
    for w in receipt.withdrawn:
        lines.append(f"  {w.kind} {w.id}" + (f" in {w.room}" if w.room else "") + " withdrawn")
    lines.append("proven" if receipt.proven else "NOT PROVEN: see the lines above")
    return "\n".join(lines)


def emit_receipt(receipt: Receipt, *, as_json: bool) -> None:
    """Print a receipt; exit 1 when it could not prove everything, so a script never takes it for done."""
    emit(receipt, as_json=as_json, text=receipt_text)
    if not receipt.proven:
        raise click.exceptions.Exit(1)


def confirm_or_refuse(question: str, yes: bool) -> None:
    """Dangerous switches ask on a terminal, take --yes in scripts, and refuse otherwise (DESIGN §2)."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.UsageError(f"{question} Refusing without a terminal; pass --yes to confirm.")
    click.confirm(question, abort=True)


def table(rows: list[list[str]], header: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
    )


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """'90s', '15m', '1h', '30d' -> seconds."""
    text = text.strip().lower()
    # Nine digits at most: anything longer is no lifetime anyone means, and it would overflow a date.
    if not 2 <= len(text) <= 10 or text[-1] not in _UNITS or not text[:-1].isdigit():
        raise click.BadParameter(f"{text!r}: use a number and a unit, like 90s, 15m, 1h or 30d", param_hint="--ttl")
    return int(text[:-1]) * _UNITS[text[-1]]


# Owner actions run here or on the hub this machine is enrolled with (DESIGN §9.1): one dispatch for both.


def remote(as_json: bool) -> Remote | None:
    """The hub an owner command goes to: `--hub` (or AGENT_ROOMS_HUB), else the one `login` remembered (DESIGN
    §9.1); None, with neither, to run on the hub in this home. A home that holds a hub of its own as well is
    the one ambiguous case: each command there says on stderr which of the two it reached."""
    far = _enrolled(as_json)
    if far is not None and far.settings.db_path.exists():
        _say_once(
            f"to {far.device.hub} as {far.device.owner} (logged in there); the hub in {far.settings.home} "
            "takes only operator commands while this home is logged in elsewhere"
        )
    return far


def _enrolled(as_json: bool) -> Remote | None:
    url = _hub_option()
    here = settings()
    # Imported here: the device side brings an HTTP client, which `serve` (a stdio hub's cold start) never needs.
    from agent_rooms_mcp import remote as remote_device

    def find() -> Remote | None:
        device = remote_device.load(here)
        if device is None and url is None:
            return None
        if device is None:
            raise HomeError(f"this machine is not enrolled with {url}; run: agent-rooms login {url} --code CODE")
        # The credential goes only to the hub that issued it, never to whatever URL a command names.
        if url is not None and remote_device.hub_url(url) != device.hub:
            raise HomeError(f"this machine is enrolled with {device.hub}, not {url}; log in there first")
        return remote_device.Remote(here, device)

    return guarded(find, as_json=as_json)


def _hub_option() -> str | None:
    context = click.get_current_context(silent=True)
    url = context.find_root().params.get("hub") if context else None
    return url if isinstance(url, str) else None


def _say_once(line: str) -> None:
    """One line on stderr, once per command (a command may ask where it goes more than once)."""
    context = click.get_current_context(silent=True)
    meta = context.find_root().meta if context else {}
    if meta.get("agent_rooms.said_where") != line:
        meta["agent_rooms.said_where"] = line
        click.echo(f"agent-rooms: {line}", err=True)


def refuse_on_device(as_json: bool) -> None:
    """Operator actions run only on the hub's machine (DESIGN §2): refused on a device before anything. In a
    home that holds a hub and is logged in elsewhere too, they act on the hub here, and say so."""
    far = _enrolled(as_json)
    if far is None:
        return
    if _hub_option() is None and far.settings.db_path.exists():
        _say_once(
            f"on the hub in {far.settings.home} (an operator command), not on {far.device.hub}, where this home "
            f"is logged in as {far.device.owner}"
        )
        return
    raise Failed(
        "FORBIDDEN_SCOPE",
        f"{_action()[4:].replace('.', ' ')} is an operator action, run on the hub's machine: ask the operator of "
        f"{far.device.hub}",
        as_json,
    )


def refuse_new_hub_on_device(command: str) -> None:
    """`init` and `quickstart` make no hub in a home logged in to another: owner commands there go to that hub
    (DESIGN §9.1), so a hub made beside it would hold agents and rooms no owner command reaches."""
    far = _enrolled(False)
    if far is None:
        return
    if far.settings.db_path.exists():
        refuse_on_device(False)  # made before this rule: it says which hub it acts on
        return
    raise Failed(
        "HOME",
        f"{far.settings.home} is logged in to {far.device.hub} as {far.device.owner}, and owner commands here go "
        f"there; to start a hub of your own, give it a home of its own: AGENT_ROOMS_HOME=DIR agent-rooms {command}",
        False,
    )


def perform(name: str, args: BaseModel, *, as_json: bool = False) -> Any:
    """Owner action `name` (owner_actions): sent to the enrolled hub, or run here as the operator."""
    from agent_rooms_mcp import owner_actions  # here, not at the top: `serve` never performs an owner action

    action = owner_actions.ACTIONS[name]
    raw = args.model_dump(mode="json")
    far = remote(as_json)
    if far is not None:
        return guarded(lambda: far.call(name, raw, action.result), as_json=as_json)

    # The hub's services run in this process and log (e.g. oauth.family_revoked on `token revoke`): on stderr,
    # never into the result or the JSON document on stdout. A process that set up its logging already (a
    # serving hub running this command in-process, a test capturing its lines) keeps it.
    if not structlog.is_configured():
        configure_logging()

    async def main() -> BaseModel:
        async with Hub.open(settings()) as hub:
            return await owner_actions.perform(hub, Human(operator()), name, raw)

    return guarded(lambda: anyio.run(main), as_json=as_json)
