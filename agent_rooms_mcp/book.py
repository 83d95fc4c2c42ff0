"""The wake book (DESIGN §5): the narrow interface through which a supervisor does everything it does with
the hub. Claim a wake, record what its run did, renew leases, finish it, wait for work, read stop requests.

Two implementations drive the same supervisor: in process over the store (`services/runbook.py`, the
embedded supervisor) and over HTTPS (`listener.py`, an owner's listener, DESIGN §9.1). So everything that crosses
this interface is a plain frozen dataclass of str, int, bool (and tuples or str maps of them): no database
row, no `Hub`, nothing a JSON body could not carry.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Protocol


class BookUnavailable(Exception):
    """The book could not answer now (a database locked past its busy timeout, a hub out of reach): the
    supervisor tries again on its next look, it never dies of it."""


class BookRevoked(Exception):
    """The hub refused this supervisor's credential (401 or 403: a device revoked, expired or unknown).
    DESIGN §9.1: every run is stopped by the ladder, nothing more is reported, and the listener ends."""


class LeaseLost(Exception):
    """The supervisor no longer holds this run (DESIGN §9.1 fencing): its lease ran out and another
    supervisor's recovery ended it `lost` or queued it again, perhaps to be claimed anew. Nothing was
    written; the caller stops its CLI and records nothing over the run's current holder."""


@dataclass(frozen=True, slots=True)
class CauseText:
    """The words that woke a run, fixed when it was claimed, and who wrote them."""

    text: str  # as the CLI reads them: sanitised, and enveloped when another owner wrote them
    author: str
    owner: str
    cross_owner: bool  # another owner wrote them, or another owner's words caused them


@dataclass(frozen=True, slots=True)
class Claimed:
    """A wake the supervisor now holds, with everything it needs to start the CLI."""

    run_id: str
    agent_id: str
    handle: str
    owner_id: str
    tool: str  # an AgentTool value
    workdir: str | None
    room_id: str
    room_name: str
    trigger: str  # a Trigger value
    cause_id: str
    caused_by: str
    causers: tuple[str, ...]  # every owner whose words it carries, sorted
    constrained: bool
    depth: int
    resume_session: str | None  # the agent's last session, to resume
    words: CauseText  # read in the claim's transaction: the accepted payload, never a later edit
    retry: bool = False  # a follow-up after a rate limit: continue, never replay the original request
    # The run's own credential (an `arr_` token), minted by the claim; "" when none could be minted.
    run_token: str = ""
    # The agent's variables for the child, already opened; None when they could not be (the run then
    # fails closed with `env_unavailable`, it never starts without them).
    env: dict[str, str] | None = field(default_factory=dict)
    # The claim's fencing number: every claim of the run raises it, so a report carrying an older one (a
    # supervisor that slept past its lease while the run was queued again and claimed anew, even by this
    # same holder) is refused with `LeaseLost` rather than written over the new claim's run.
    lease: int = 0
    # Run it inside the sandbox (DESIGN §5): the agent's setting on the hub, a listener's local policy on an
    # owner's machine. On unless turned off: a claim that forgot to say runs sandboxed, never the reverse.
    sandbox: bool = True


@dataclass(frozen=True, slots=True)
class LeftBehind:
    """A started run whose holder's lease ran out on this host: its CLI, named by pid and start time, may
    still be running and must be made sure gone."""

    run_id: str
    pid: int
    pid_start: int


@dataclass(frozen=True, slots=True)
class Ending:
    """How a run ended, as the supervisor saw it."""

    state: str  # a final RunState value
    outcome: str  # an Outcome value (DESIGN §7's closed list)
    stop_signal: str  # a StopSignal value
    reset_at: str | None = None  # ISO time the provider's rate limit resets, when its events said
    # What the run used, as its CLI's events reported it (DESIGN §9.1: usage, cost, tool names with counts;
    # never an event body).
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd_micros: int = 0
    tool_counts: dict[str, int] = field(default_factory=dict)


class WakeBook(Protocol):
    """What a supervisor may ask of the hub. Every state change it causes writes its audit row there."""

    @property
    def holder(self) -> str:
        """This supervisor's lease holder id."""
        ...

    @property
    def host(self) -> str:
        """The host this supervisor's processes run on: leases name it, and recovery kills only its own."""
        ...

    async def claim(self) -> Claimed | None:
        """The next wake this supervisor may start, now held by it; None when there is none."""
        ...

    async def spawning(self, run_id: str, lease: int) -> None:
        """The run's CLI is about to be executed (DESIGN §9.1): reported before the exec, so a run whose
        holder dies from here on is ended `lost`, never queued to run a second time. `LeaseLost` as
        `started`, and then nothing is executed."""
        ...

    async def started(self, run_id: str, lease: int, pid: int, pid_start: int | None) -> None:
        """The run's CLI was spawned with this pid (and start time, which names it even after pid reuse).
        `lease` is the claim's; raises `LeaseLost` when that claim no longer holds the run."""
        ...

    async def session(self, run_id: str, lease: int, session_id: str) -> None:
        """The CLI confirmed this session id ("" records a session it no longer has); `LeaseLost` as
        `started`."""
        ...

    async def renew(self) -> dict[str, int]:
        """Extend the lease on every run this supervisor holds, and name them with their claims' leases:
        a run missing is one this supervisor lost, whose CLI it stops."""
        ...

    async def stop_requests(self) -> set[str]:
        """The held runs that must stop now."""
        ...

    async def finish(self, run_id: str, lease: int, ending: Ending) -> None:
        """Record the run's end and revoke its credential; `LeaseLost` (and nothing written) as `started`."""
        ...

    async def recover(self) -> list[LeftBehind]:
        """End or requeue the runs whose holder's lease ran out; the CLIs of those that ran on this host."""
        ...

    async def wait_for_work(self, timeout_s: float) -> bool:
        """Return True as soon as something a supervisor acts on may have changed (a wake queued, a stop
        asked), False after timeout_s without a sign of one."""
        ...


def this_host(host_id: str = "") -> str:
    """The host id leases name: the settable one (`AGENT_ROOMS_HOST_ID`, for two homes on one machine that
    must not treat each other's processes as their own), else the machine's host name."""
    return host_id or socket.gethostname()
