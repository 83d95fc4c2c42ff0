"""The words of a run (DESIGN §5, §7), each stated once: its states, triggers, stop signals and outcomes.

They are `StrEnum`s so the database, the JSON of a tool result and a wake book's wire all carry the plain
word, while code that writes one can only name a word of the closed list.
"""

from __future__ import annotations

from enum import StrEnum


class RunState(StrEnum):
    """DESIGN §7's closed list of run states; the runs table's CHECK says the same."""

    QUEUED = "queued"
    WAITING_FOR_LISTENER = "waiting_for_listener"
    RUNNING = "running"
    STOPPING = "stopping"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"
    STOP_PENDING = "stop_pending"
    LOST = "lost"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"


# The states a run never leaves.
FINAL_STATES = frozenset(
    {RunState.COMPLETED, RunState.FAILED, RunState.STOPPED, RunState.LOST, RunState.WITHDRAWN, RunState.EXPIRED}
)
# The states of a run some supervisor holds (a lease, a process, perhaps).
HELD_STATES = (RunState.RUNNING, RunState.STOPPING)
# The states of a wake nobody holds yet.
WAITING_STATES = (RunState.QUEUED, RunState.WAITING_FOR_LISTENER)


class Trigger(StrEnum):
    MENTION = "mention"
    TASK = "task"
    WAKE_PROPOSAL = "wake_proposal"


class StopSignal(StrEnum):
    """The last signal the supervisor sent a run's CLI; `none` when it ended by itself or never started."""

    SIGINT = "SIGINT"
    SIGTERM = "SIGTERM"
    SIGKILL = "SIGKILL"
    NONE = "none"


class Outcome(StrEnum):
    """DESIGN §7's closed list of run outcomes. `withdrawn` is written with its reason: `withdrawn(reason)`."""

    OK = "ok"
    CLI_NOT_FOUND = "cli_not_found"
    WORKDIR_MISSING = "workdir_missing"
    SANDBOX_UNAVAILABLE = "sandbox_unavailable"
    SANDBOX_REQUIRED = "sandbox_required"
    ROOT_REFUSED = "root_refused"
    ENV_UNAVAILABLE = "env_unavailable"
    MCP_FAILED = "mcp_failed"
    AUTH = "auth"
    RATE_LIMIT = "rate_limit"
    USAGE_LIMIT = "usage_limit"
    OUTPUT_CAP = "output_cap"
    TIME_LIMIT = "time_limit"
    STOPPED = "stopped"
    SHUTDOWN = "shutdown"
    LOST = "lost"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"


def withdrawn(reason: str) -> str:
    """The outcome of a withdrawn wake: `withdrawn:<reason>` (DESIGN §7)."""
    return f"{Outcome.WITHDRAWN}:{reason}"


def is_listed_outcome(outcome: str) -> bool:
    """Is `outcome` in DESIGN §7's closed list (a `withdrawn:` outcome with a word for its reason)?"""
    head, sep, reason = outcome.partition(":")
    if sep:
        return head == Outcome.WITHDRAWN and reason.replace("_", "").isalnum() and reason.islower()
    return outcome in Outcome._value2member_map_ and outcome != Outcome.WITHDRAWN


def waiting_code(state: str) -> str | None:
    """The code a waiting wake's `queued` carries: `waiting_for_listener` (DESIGN §7's state) when it waits for
    its owner's listener, which may not come within the wake's expiry; none when it waits for the hub's own
    supervisor (behind a cap or a back-off)."""
    return RunState.WAITING_FOR_LISTENER.value if state == RunState.WAITING_FOR_LISTENER else None


def mention_outcome(state: str, outcome: str | None) -> tuple[str, str | None]:
    """Where a mention that woke a run stands, from that run's state and outcome (DESIGN §5 "Receipts that
    settle"): still waiting is `queued` (with `waiting_for_listener` as the code while it waits for its owner's
    listener), held is `woken`, and a final state is itself, with its reason as the code (`withdrawn:<reason>`
    gives the reason word)."""
    if state in WAITING_STATES:
        return "queued", waiting_code(state)
    if state not in FINAL_STATES:
        return "woken", None
    head, _, reason = (outcome or "").partition(":")
    return state, (reason or head or None)


def sql_words(*words: StrEnum) -> str:
    """Enum words as an SQL list of literals (`'running', 'stopping'`): safe to splice, since the words are
    this module's constants, never input; it keeps each state written once even inside SQL text."""
    return ", ".join(f"'{w.value}'" for w in words)
