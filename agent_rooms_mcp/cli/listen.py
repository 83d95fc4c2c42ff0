"""`agent-rooms listen`: wake this owner's agents on this machine (DESIGN §9.1)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import anyio
import click
import httpx2

from agent_rooms_mcp import listen_policy
from agent_rooms_mcp import remote as remote_device
from agent_rooms_mcp.book import BookRevoked, BookUnavailable
from agent_rooms_mcp.cli.common import Failed, guarded, settings
from agent_rooms_mcp.home import HomeError
from agent_rooms_mcp.listener import (
    TIMEOUT,
    HttpWakeBook,
    HubOutOfReach,
    HubRefused,
    listener_supervisor,
    only_listener,
)
from agent_rooms_mcp.local_env import LocalEnv
from agent_rooms_mcp.logs import configure_logging
from agent_rooms_mcp.models import CheckStatus, ListenerHello
from agent_rooms_mcp.settings import Settings
from agent_rooms_mcp.wake.supervisor import Supervisor

# While the hub cannot be reached at the start, the hello is tried again this often (as the supervisor's own
# looks do mid-run: a listener rides out a hub that is down, it does not exit for it).
HELLO_RETRY_S = 5.0
# A stopping listener waits at most this long for the hub to take back its agents.
BYE_S = 5.0


def _say(line: str) -> None:
    click.echo(line, err=True)


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
    this machine; the hub hears only states, times, outcomes and usage. Waits for the hub while it cannot
    be reached. Stops with Ctrl-C (every run is stopped first, then its agents are let go on the hub); stops
    every run and exits if the hub refuses this device.

    \b
    listen.toml (0600, in AGENT_ROOMS_HOME):
        workdir_root = "/home/you/work"
        [agents.your-agent]
        workdir = "/home/you/work/project"
        cross_owner = true      # accept wakes other owners' words caused (default false)
        sandbox = "on"          # "on" (default) or "off"
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
    _warn_as_root(here)
    _warn_workdirs(rules)
    relogin = (
        f"Log in again with a new code (the operator makes one with: agent-rooms owner enroll {device.owner}): "
        f"agent-rooms login {device.hub} --code CODE"
    )

    async def main() -> tuple[BookRevoked | HubRefused | None, bool]:
        """Run until a signal; what ended it otherwise (the hub refused this device or its hello), and
        whether that came after the hello."""
        with only_listener(here.home):
            async with httpx2.AsyncClient(timeout=TIMEOUT, follow_redirects=False) as http:
                book = HttpWakeBook(
                    http, device, key, deployment_id, rules, LocalEnv(here.home), here.wake, take_over=take_over,
                    say=_say,
                )  # fmt: skip
                ended: BookRevoked | HubRefused | None = None
                supervisor: Supervisor | None = None
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_cancel_on_signal, tg.cancel_scope, lambda: _stopping(supervisor))
                    try:
                        hello = await _first_hello(book)
                        _announce(device, rules, hello)
                        supervisor = listener_supervisor(here, book, device, hello.lease_s, _say)
                        await supervisor.run()
                    except (BookRevoked, HubRefused) as e:
                        ended = e
                    tg.cancel_scope.cancel()
                if ended is None and book.hello_answer is not None:
                    await _goodbye(book)
                return ended, supervisor is not None

    ended, mid_run = guarded(lambda: anyio.run(main))
    if isinstance(ended, HubRefused):  # the hello refused with a code of its own (too many listeners, say)
        raise Failed(ended.code, ended.message, False)
    if isinstance(ended, BookRevoked):
        said = "every run was stopped" if mid_run else str(ended)
        raise Failed(
            "UNAUTHENTICATED",
            f"the hub refused this device (revoked, expired or unknown there): {said}. {relogin}",
            False,
        )


async def _first_hello(book: HttpWakeBook) -> ListenerHello:
    """The hello, tried again while the hub cannot be reached (the book says so once, and again when it
    answers); a refusal of the device or of the hello itself is raised."""
    while True:
        try:
            return await book.hello()
        except HubOutOfReach:
            await anyio.sleep(HELLO_RETRY_S)
        except HubRefused:
            raise
        except BookUnavailable:  # busy (503) or rate-limited past the book's patience: as the supervisor does
            await anyio.sleep(HELLO_RETRY_S)


def _warn_as_root(here: Settings) -> None:
    """DESIGN §5 "Never root": a root listener without AGENT_ROOMS_RUN_AS would end every wake
    `root_refused`. Said at the start, in doctor's words, rather than found in `run log` after a wake."""
    from agent_rooms_mcp.doctor import run_as_check  # doctor's imports are heavy; only this command needs it

    check, _ = run_as_check(here.wake, here="this listener")
    if check is not None and check.status is not CheckStatus.OK:
        instead = "" if here.wake.run_as else ", or run agent-rooms listen as an unprivileged user"
        _say(f"warning: {check.message}; {check.fix}{instead}")


def _warn_workdirs(rules: listen_policy.ListenPolicy) -> None:
    """A workdir that is missing (or leads out of the root) fails each wake of its agent `workdir_missing`:
    said at the start, in doctor's words (`listen.workdirs`), rather than found in `run log` after a wake."""
    from agent_rooms_mcp.doctor import workdir_failures

    for check in workdir_failures(rules):
        _say(f"warning: {check.message}; {check.fix}")


def _announce(device: remote_device.Device, rules: listen_policy.ListenPolicy, hello: ListenerHello) -> None:
    _say(f"listening to {device.hub} as {device.owner}'s device {device.name}")
    _say(f"holding: {', '.join(hello.held) or '(none)'}")
    for e in hello.elsewhere:
        _say(f"waiting: {e.agent} is held by device {e.device} on {e.host} (--take-over takes it)")
    for handle in hello.unknown:
        _say(f"unknown: {handle} is not an agent of {device.owner} on that hub")
    woken = sorted(h for h, rule in rules.agents.items() if rule.wake)
    accepting = [h for h in woken if rules.agents[h].cross_owner]
    refusing = [h for h in woken if not rules.agents[h].cross_owner]
    if accepting:
        _say(f"cross-owner wakes: accepted for {', '.join(accepting)} (run sandboxed, read-only)")
    if refusing:
        _say(
            f"cross-owner wakes: refused for {', '.join(refusing)} (cross_owner = false in {rules.path}); "
            f"set cross_owner = true under [agents.{refusing[0] if len(refusing) == 1 else 'HANDLE'}] there to"
            " accept wakes other owners' words cause"
        )


def _stopping(supervisor: Supervisor | None) -> None:
    running = supervisor.running if supervisor is not None else 0
    _say(f"stopping: {running} run(s) here end by the stop ladder, then this listener lets go of its agents")


async def _goodbye(book: HttpWakeBook) -> None:
    """Let go of the agents on the hub at once, so another listener need not wait out the lease."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(BYE_S):
        try:
            released = await book.bye()
        except (BookRevoked, BookUnavailable) as e:
            _say(f"stopped; the hub did not take the agents back ({e}): they are free once the lease passes")
            return
        _say(f"stopped; let go of {', '.join(released) or 'no agent'} on the hub")
        return
    _say("stopped; the hub did not answer in time: the agents are free once the lease passes")


async def _cancel_on_signal(scope: anyio.CancelScope, on_signal: Callable[[], None]) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            on_signal()
            scope.cancel()
            return
