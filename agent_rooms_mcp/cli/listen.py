"""`agent-rooms listen`: wake this owner's agents on this machine (DESIGN §9.1)."""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import click
import httpx2

from agent_rooms_mcp import listen_policy
from agent_rooms_mcp import remote as remote_device
from agent_rooms_mcp.book import BookRevoked, BookUnavailable
from agent_rooms_mcp.cli.common import Failed, guarded, settings
from agent_rooms_mcp.home import HomeError
from agent_rooms_mcp.listener import TIMEOUT, HttpWakeBook, listener_supervisor, only_listener
from agent_rooms_mcp.local_env import LocalEnv
from agent_rooms_mcp.logs import configure_logging
from agent_rooms_mcp.models import ListenerHello


@click.command("listen")
@click.option(
    "--policy",
    "policy_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The local policy (default: listen.toml in AGENT_ROOMS_HOME).",
)
@click.option(
    "--take-over",
    is_flag=True,
    help="Take the agents from whichever listener of yours holds them now (audited; that one stops claiming).",
)
def listen(policy_path: Path | None, take_over: bool) -> None:
    """Wake your agents on this machine: dial out to the hub this machine logged in to, claim your agents'
    wakes, and run their CLIs here under listen.toml's rules. Their events, stderr and variables stay on
    this machine; the hub hears only states, times, outcomes and usage. Stops with Ctrl-C (every run is
    stopped first); stops every run and exits if the hub refuses this device.

    \b
    listen.toml (0600, in AGENT_ROOMS_HOME):
        workdir_root = "/home/you/work"
        [agents.your-agent]
        workdir = "/home/you/work/project"
        cross_owner = false     # accept wakes other owners' words caused
        sandbox = "on"          # "off" runs it without one
    """
    configure_logging()
    here = settings()

    def prepare() -> tuple[remote_device.Device, listen_policy.ListenPolicy]:
        device = remote_device.load(here)
        if device is None:
            raise HomeError(f"{here.home} is not enrolled with a hub; run: agent-rooms login https://HUB --code CODE")
        return device, listen_policy.load(policy_path or here.home / listen_policy.POLICY_FILE)

    device, rules = guarded(prepare)
    key, deployment_id = guarded(lambda: remote_device.pinned_key(here, device))

    async def main() -> bool:
        """Run until a signal; True when the hub refused this device."""
        with only_listener(here.home):
            async with httpx2.AsyncClient(timeout=TIMEOUT, follow_redirects=False) as http:
                book = HttpWakeBook(
                    http, device, key, deployment_id, rules, LocalEnv(here.home), here.wake, take_over=take_over
                )
                hello = await book.hello()
                _announce(device, hello)
                supervisor = listener_supervisor(here, book, device, hello.lease_s)
                revoked = False
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_cancel_on_signal, tg.cancel_scope)
                    try:
                        await supervisor.run()
                    except BookRevoked:
                        revoked = True
                        tg.cancel_scope.cancel()
                return revoked

    try:
        revoked = guarded(lambda: anyio.run(main))
    except (BookRevoked, BookUnavailable) as e:  # from the hello, before any run
        raise Failed("UNAUTHENTICATED" if isinstance(e, BookRevoked) else "HOME", str(e), False) from None
    if revoked:
        raise Failed(
            "UNAUTHENTICATED",
            "the hub refused this device (revoked or expired); every run was stopped. "
            "Log in again with a new code: agent-rooms login URL --code CODE",
            False,
        )


def _announce(device: remote_device.Device, hello: ListenerHello) -> None:
    click.echo(f"listening to {device.hub} as {device.owner}'s device {device.name}", err=True)
    click.echo(f"holding: {', '.join(hello.held) or '(none)'}", err=True)
    for e in hello.elsewhere:
        click.echo(f"waiting: {e.agent} is held by device {e.device} on {e.host} (--take-over takes it)", err=True)
    for handle in hello.unknown:
        click.echo(f"unknown: {handle} is not an agent of {device.owner} on that hub", err=True)


async def _cancel_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return
