"""The listener's wake book over HTTP, hub side: `POST /owner/v1/listener/OP` (DESIGN §9.1).

The owner API authenticates the device and hands the operation here; each one is one call of the listener's
book (`services/listeners.py`), with its body checked by a model first. What a listener may report is
bounded to what DESIGN §9.1 lets it send: states, session ids, times, the outcome, usage and tool counts.

- `hello` {holder, host, agents, take_over, max_running, max_running_per_agent} -> ListenerHello
- `wait` {holder, timeout_ms} -> {work}: a long poll, answered as soon as there is something to do
- `claim` {holder} -> {claim}: a signed claim (auth/wake_claims.py), or null
- `spawning`, `started`, `session`, `finish` {holder, run_id, lease, ...} -> {}; 409 with `lease_lost` when
  the claim no longer holds the run
- `renew` {holder} -> {held}; `stops` {holder} -> {run_ids}; `recover` {holder} -> {left_behind}
- `bye` {holder} -> {released}: a listener stopping lets go of the agents it holds (those with no run it holds)
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from agent_rooms_mcp.auth.tokens import credential_kind
from agent_rooms_mcp.book import BookUnavailable, Ending, LeaseLost
from agent_rooms_mcp.errors import ErrorCode, RoomsError, invalid
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.principals import Human
from agent_rooms_mcp.run_states import FINAL_STATES, RunState, StopSignal, is_listed_outcome
from agent_rooms_mcp.store.database import guarded_writes

# A long poll never outlasts this, so a proxy's idle timeout (Caddy's and nginx's are 60 s or more) never
# cuts one short.
WAIT_MAX_MS = 25_000

_Id = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")]
_Name = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]
_Count = Annotated[int, Field(ge=0, le=2**53)]
_Int64 = Annotated[int, Field(ge=0, le=2**63 - 1)]  # what SQLite stores


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    holder: _Id


class Hello(_Body):
    host: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    agents: Annotated[list[_Id], Field(max_length=256)]
    take_over: bool = False
    max_running: Annotated[int, Field(ge=1, le=64)]
    max_running_per_agent: Annotated[int, Field(ge=1, le=64)]


class Wait(_Body):
    timeout_ms: Annotated[int, Field(ge=0, le=WAIT_MAX_MS)]


class _Run(_Body):
    run_id: _Id
    lease: _Int64


class Started(_Run):
    pid: Annotated[int, Field(ge=1, le=2**31)]
    pid_start: _Int64 | None


class Session(_Run):
    # A CLI's session id is a UUID or alike; no underscore, so nothing credential-shaped reaches the audit; never
    # a leading '-', since a resume passes it as a CLI argument ("--resume ID"), where it would read as an option.
    session_id: Annotated[str, StringConstraints(max_length=128, pattern=r"^(?:[A-Za-z0-9][A-Za-z0-9.:\-]*)?$")]


class Finish(_Run):
    state: str
    outcome: Annotated[str, StringConstraints(max_length=64)]
    stop_signal: Annotated[StopSignal, Field(strict=False)]  # the enum from its JSON word
    reset_at: Annotated[str, StringConstraints(max_length=40)] | None = None  # ISO 8601 with its offset
    input_tokens: _Count = 0
    output_tokens: _Count = 0
    cost_usd_micros: _Count = 0
    tool_counts: Annotated[dict[_Name, _Count], Field(max_length=128)] = {}

    @field_validator("state")
    @classmethod
    def _final(cls, v: str) -> str:
        if v not in FINAL_STATES:
            raise ValueError(f"a run ends in one of {', '.join(sorted(FINAL_STATES))}")
        return v

    @field_validator("reset_at")
    @classmethod
    def _instant(cls, v: str | None) -> str | None:
        if v is not None and datetime.fromisoformat(v).utcoffset() is None:
            raise ValueError("give the time with its offset, like 2026-01-01T00:00:00+00:00")
        return v

    @field_validator("tool_counts")
    @classmethod
    def _names(cls, v: dict[str, int]) -> dict[str, int]:
        # Tool names reach the audit row: none may be shaped like a credential (invariant 85).
        if any(credential_kind(name) is not None for name in v):
            raise ValueError("a tool name shaped like a credential")
        return v

    @field_validator("outcome")
    @classmethod
    def _listed(cls, v: str) -> str:
        if not is_listed_outcome(v):
            raise ValueError("not an outcome of DESIGN §7's list")
        return v

    def ending(self) -> Ending:
        return Ending(RunState(self.state), self.outcome, self.stop_signal, self.reset_at, self.input_tokens,
                      self.output_tokens, self.cost_usd_micros, dict(self.tool_counts))  # fmt: skip


class LeaseLostAnswer(Exception):
    """409: the claim no longer holds the run; the listener stops its CLI and records nothing."""


class Unavailable(Exception):
    """503: the hub's book cannot answer now (its database busy); the listener tries again."""


def _parse(model: type[_Body], body: Any) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise invalid(field, first["msg"]) from None


async def handle(hub: Hub, who: Human, op: str, body: Any) -> dict[str, Any]:
    if who.device_id is None:
        raise RoomsError(ErrorCode.FORBIDDEN_SCOPE, "only an enrolled device runs a listener (agent-rooms login)")
    # Every write re-checks the device, as an owner action's do: a revoke that lands while a listener's
    # request runs stops its hello, claim or report (invariant 92).
    with guarded_writes(hub.devices.still_active(who.device_id)):
        return await _handle(hub, who, op, body)


async def _handle(hub: Hub, who: Human, op: str, body: Any) -> dict[str, Any]:
    listeners = hub.listeners
    try:
        if op == "hello":
            h: Hello = _parse(Hello, body)
            answer = await listeners.hello(who, h.holder, h.host, h.agents, take_over=h.take_over,
                                           max_running=h.max_running,
                                           max_running_per_agent=h.max_running_per_agent)  # fmt: skip
            return answer.model_dump(mode="json")
        model = _MODELS.get(op)
        if model is None:
            raise RoomsError(ErrorCode.NOT_FOUND, f"no listener operation {op[:40]!r}")
        args = _parse(model, body)
        if op == "bye":
            return {"released": await listeners.bye(who, args.holder)}
        book = await listeners.book(who, args.holder)
        if op == "wait":
            with listeners.waiting(args.holder):
                return {"work": await book.wait_for_work(args.timeout_ms / 1000)}
        if op == "claim":
            return {"claim": await book.signed_claim()}
        if op == "renew":
            return {"held": await book.renew()}
        if op == "stops":
            return {"run_ids": sorted(await book.stop_requests())}
        if op == "recover":
            return {"left_behind": [{"run_id": x.run_id, "pid": x.pid, "pid_start": x.pid_start}
                                    for x in await book.recover()]}  # fmt: skip
        if op == "spawning":
            await book.spawning(args.run_id, args.lease)
        elif op == "started":
            await book.started(args.run_id, args.lease, args.pid, args.pid_start)
        elif op == "session":
            await book.session(args.run_id, args.lease, args.session_id)
        else:
            await book.finish(args.run_id, args.lease, args.ending())
        return {}
    except LeaseLost as e:
        raise LeaseLostAnswer(str(e)) from None
    except BookUnavailable as e:
        raise Unavailable(str(e)) from None


_MODELS: dict[str, type[_Body]] = {
    "wait": Wait,
    "claim": _Body,
    "renew": _Body,
    "stops": _Body,
    "recover": _Body,
    "bye": _Body,
    "spawning": _Run,
    "started": Started,
    "session": Session,
    "finish": Finish,
}
