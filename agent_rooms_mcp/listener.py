"""`agent-rooms listen`: the supervisor on an owner's own machine, over the HTTP wake book (DESIGN §9.1).

The listener dials out to the hub it is enrolled with (no inbound port here), holds the agents its local
policy names (`listen.toml`), and runs the very supervisor the hub embeds, with `HttpWakeBook` in place of
the store's book. What crosses to the hub is only what DESIGN §9.1 lists: states, session ids, times, the
outcome, usage and tool counts. The events, stderr and the agents' variables stay here.

Each claimed wake is verified against the issuer key pinned at `login` and then judged by the local policy
(`policy.listener_refusal`): a refusal ends the run `withdrawn:<reason>`, and what the hub sent about the
workdir or the constraint never widens what the file allows. A 401 or 403 stops every run and ends the
listener; a lease it could not renew for the lease time stops every run (the supervisor's dead-man switch).
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import httpx2
import structlog
from nacl.signing import VerifyKey

from agent_rooms_mcp import policy
from agent_rooms_mcp.auth.wake_claims import ClaimRefused, verify_claim
from agent_rooms_mcp.book import BookRevoked, BookUnavailable, Claimed, Ending, LeaseLost, LeftBehind, this_host
from agent_rooms_mcp.bridge import HUB_URL_ENV, TOKEN_FILE_ENV, TRUST_VARS
from agent_rooms_mcp.encoding import EncodingError, b64url_decode
from agent_rooms_mcp.home import HomeError, ensure_private_dir, write_private_file
from agent_rooms_mcp.listen_policy import ListenPolicy
from agent_rooms_mcp.local_env import LocalEnv
from agent_rooms_mcp.models import ListenerHello
from agent_rooms_mcp.remote import Device
from agent_rooms_mcp.run_states import Outcome, RunState, StopSignal, withdrawn
from agent_rooms_mcp.settings import Settings, WakeSettings
from agent_rooms_mcp.vault import VaultError
from agent_rooms_mcp.wake.cgroups import remove_left_behind
from agent_rooms_mcp.wake.process import kill_left_behind
from agent_rooms_mcp.wake.supervisor import Local, OpenBridge, Say, Supervisor, say_nothing

log = structlog.get_logger("agent_rooms_mcp.listener")

_API = "/owner/v1/listener/"
# The hub answers a long poll within this (web/listener_api.WAIT_MAX_MS caps it); the read timeout is longer.
WAIT_MS = 20_000
TIMEOUT = httpx2.Timeout(10.0, read=WAIT_MS / 1000 + 15)
# What a proxy answers when the hub behind it is gone: the hub is out of reach, as for a refused connection.
_GATEWAY_DOWN = frozenset({502, 504})


class HubOutOfReach(BookUnavailable):
    """The hub did not answer at all (a refused or timed-out connection, a proxy with nothing behind it)."""


class HubRefused(BookUnavailable):
    """The hub answered a request with one of DESIGN §7's codes: mid-run the supervisor tries again as for any
    unavailable book; at the first hello there is nothing to try again for, and the code is said."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class HttpWakeBook:
    """The `WakeBook` of a listener: each call one POST to the hub's listener API."""

    def __init__(
        self,
        http: httpx2.AsyncClient,
        device: Device,
        key: VerifyKey,
        deployment_id: str,
        rules: ListenPolicy,
        env: LocalEnv,
        caps: WakeSettings,
        *,
        take_over: bool = False,
        say: Say = say_nothing,
    ) -> None:
        self._http = http
        self._device = device
        self._key = key
        self._deployment_id = deployment_id
        self._rules = rules
        self._env = env
        self._caps = caps
        self._take_over = take_over
        self._holder = "lst_" + secrets.token_hex(8)
        self._machine = this_host(caps.host_id)
        # As the hub names it: with the device in it, so the hub's own supervisor never takes these
        # processes for its own (the hub composes it itself, whatever a listener says).
        self._host = f"{device.device_id}@{self._machine}"
        self._patience = min(10.0, caps.lease_s / 3)
        self._timeout = httpx2.Timeout(self._patience)
        # Nothing is sent before this (anyio's clock): the hub's Retry-After, once it rate-limited the device.
        self._quiet_until = 0.0
        self.hello_answer: ListenerHello | None = None
        self._say = say
        self._out_since: float | None = None  # anyio's clock, since the hub stopped answering

    @property
    def holder(self) -> str:
        return self._holder

    @property
    def host(self) -> str:
        return self._host

    async def _post(self, op: str, body: dict[str, Any]) -> Any:
        """One request of the book. Past the device's bucket (429) the book goes quiet for as long as the
        hub says, every request of it, and tries again while that stays within its patience (a third of the
        lease, so the dead-man switch keeps its time); beyond, the caller hears the book is unavailable."""
        began = anyio.current_time()
        while True:
            await anyio.sleep_until(self._quiet_until)
            answer = await self._send(op, body)
            if answer.status_code != 429:
                return self._read(op, answer)
            pause = _pause(answer, self._patience)
            self._quiet_until = max(self._quiet_until, anyio.current_time() + pause)
            log.info("listener.rate_limited", op=op, pause_s=pause)
            if self._quiet_until - began > self._patience:
                raise BookUnavailable(f"the hub rate-limits this device; quiet for {pause:.1f} s")

    async def _send(self, op: str, body: dict[str, Any]) -> httpx2.Response:
        try:
            answer = await self._http.post(
                self._device.hub + _API + op,
                json={"holder": self._holder, **body},
                headers={"Authorization": f"Bearer {self._device.credential}"},
                # Below a third of the lease, so a hub that stops answering trips the dead-man switch on time;
                # only the long poll waits longer.
                timeout=TIMEOUT if op == "wait" else self._timeout,
            )
        except httpx2.HTTPError as e:
            raise self._out_of_reach(type(e).__name__) from None
        if answer.status_code in _GATEWAY_DOWN:
            raise self._out_of_reach(f"HTTP {answer.status_code} from the proxy in front of it")
        if self._out_since is not None:
            gone = anyio.current_time() - self._out_since
            self._out_since = None
            self._say(f"the hub at {self._device.hub} answers again (after {gone:.0f} s out of reach)")
        return answer

    def _out_of_reach(self, why: str) -> HubOutOfReach:
        """Said once when the hub stops answering, not at every look (the supervisor looks each second)."""
        if self._out_since is None:
            self._out_since = anyio.current_time()
            lease = self.hello_answer.lease_s if self.hello_answer is not None else self._caps.lease_s
            self._say(
                f"the hub at {self._device.hub} is out of reach ({why}); trying again. Runs here are stopped if "
                f"it stays out of reach for {lease:.0f} s; wakes wait on the hub meanwhile."
            )
        return HubOutOfReach(f"cannot reach the hub at {self._device.hub}: {why}")

    def _read(self, op: str, answer: httpx2.Response) -> Any:
        if answer.status_code in (401, 403):
            raise BookRevoked(f"the hub answered {answer.status_code} to {op}")
        try:
            data = answer.json()
        except ValueError:
            data = None
        if answer.status_code == 409 and isinstance(data, dict) and data.get("lease_lost"):
            raise LeaseLost(str(data.get("message")))
        if answer.status_code != 200 and isinstance(data, dict) and isinstance(data.get("code"), str):
            raise HubRefused(data["code"], str(data.get("message", ""))[:200])
        if answer.status_code != 200 or not isinstance(data, dict):
            # A busy hub (503) or a defect on either side: the supervisor tries again on its next look.
            raise BookUnavailable(f"the hub answered HTTP {answer.status_code} to {op}: {str(data)[:200]}")
        return data

    async def hello(self) -> ListenerHello:
        answer = ListenerHello.model_validate(
            await self._post(
                "hello",
                {
                    "host": self._machine,
                    # Only the agents it would run: holding one it refuses would keep another listener of
                    # the owner, which might run it, from holding it.
                    "agents": sorted(h for h, rule in self._rules.agents.items() if rule.wake),
                    "take_over": self._take_over,
                    "max_running": self._caps.max_running,
                    "max_running_per_agent": self._caps.max_running_per_agent,
                },
            )
        )
        if self.hello_answer is not None:
            for line in hold_changes(self.hello_answer, answer):
                self._say(line)
        self.hello_answer = answer
        for left in answer.left_behind:
            # This listener restarted: its former process's CLIs, ended `lost` by the hub, must not run on.
            kill_left_behind(left.pid, left.pid_start)
            await remove_left_behind(self._caps.cgroup, self._caps.run_pids_max, left.run_id)  # and its daemons
        return answer

    async def claim(self) -> Claimed | None:
        while True:
            token = (await self._post("claim", {}))["claim"]
            if token is None:
                return None
            try:
                claimed = verify_claim(token, self._key, self._deployment_id, self._holder)
            except ClaimRefused as e:
                await self._refuse_unverified(token, str(e))
                continue
            judged = await self._judge(claimed)
            if judged is not None:
                return judged

    async def _judge(self, claimed: Claimed) -> Claimed | None:
        """The claim as this machine's policy lets it run, or None after ending it `withdrawn:<reason>`."""
        rule = self._rules.agents.get(claimed.handle)
        workdir = rule.workdir if rule is not None else None
        cross_owner = policy.cross_owner_wake(claimed.owner_id, claimed.causers, claimed.words.cross_owner)
        reason = policy.listener_refusal(
            named=rule is not None,
            wake=rule is not None and rule.wake,
            cross_owner=cross_owner,
            accepts_cross_owner=rule is not None and rule.cross_owner,
            sandboxed=rule is not None and rule.sandbox,
            workdir_inside_root=workdir is None or self._rules.inside_root(workdir),
        )
        if reason is not None or rule is None:
            log.warning("listener.refused", run_id=claimed.run_id, agent=claimed.handle, reason=reason)
            self._say(self._refusal_line(claimed.run_id, claimed.handle, reason or "not_in_local_policy"))
            # Ended here, so its causer sees why (DESIGN §5 receipts that settle).
            if reason == Outcome.SANDBOX_REQUIRED:
                ending = Ending(RunState.FAILED, Outcome.SANDBOX_REQUIRED, StopSignal.NONE)
            else:
                ending = Ending(RunState.WITHDRAWN, withdrawn(reason or "not_in_local_policy"), StopSignal.NONE)
            with suppress(LeaseLost):
                await self.finish(claimed.run_id, claimed.lease, ending)
            return None
        try:
            env: dict[str, str] | None = self._env.open_for(claimed.handle, claimed.tool)
        except (HomeError, VaultError) as e:  # the run fails closed with env_unavailable
            # The message names the file and variable and the fix, never a value.
            log.warning(
                "listener.env_refused", run_id=claimed.run_id, agent=claimed.handle, error=type(e).__name__, why=str(e)
            )
            env = None
        # The hub's workdir is never used, and a cross-owner wake runs constrained whatever the hub said.
        return replace(
            claimed,
            workdir=str(workdir) if workdir is not None else None,
            constrained=claimed.constrained or cross_owner,
            sandbox=rule.sandbox,
            env=env,
        )

    def _refusal_line(self, run_id: str, handle: str, reason: str) -> str:
        path = self._rules.path
        why = {
            "cross_owner_refused_here": f"another owner's words caused it and {path} has cross_owner = false for"
            f" {handle}; to accept such wakes (sandboxed, read-only), set cross_owner = true under"
            f" [agents.{handle}] there and restart agent-rooms listen",
            "not_in_local_policy": f"{path} does not name {handle}",
            "not_wakeable_here": f"{path} has wake = false for {handle}",
            "workdir_outside_root": f"its workdir in {path} is not under workdir_root now",
        }.get(reason, reason)
        return f"refused: {run_id} of {handle}: {why}"

    async def _refuse_unverified(self, token: str, why: str) -> None:
        """A claim that does not verify is never run. Its run is ended so it does not stay held here for
        ever, by the run id and lease its unverified body names: a forged one only earns a 409."""
        log.warning("listener.claim_refused", reason=why)
        try:
            body = _unverified_body(token)
            run_id, lease = str(body["run_id"]), int(body["lease"])
        except (KeyError, TypeError, ValueError, EncodingError):
            return
        ending = Ending(RunState.WITHDRAWN, withdrawn("claim_unverified"), StopSignal.NONE)
        with suppress(LeaseLost):
            await self.finish(run_id, lease, ending)

    async def spawning(self, run_id: str, lease: int) -> None:
        await self._post("spawning", {"run_id": run_id, "lease": lease})

    async def started(self, run_id: str, lease: int, pid: int, pid_start: int | None) -> None:
        await self._post("started", {"run_id": run_id, "lease": lease, "pid": pid, "pid_start": pid_start})

    async def session(self, run_id: str, lease: int, session_id: str) -> None:
        await self._post("session", {"run_id": run_id, "lease": lease, "session_id": session_id})

    async def renew(self) -> dict[str, int]:
        # Said again at each renewal: an agent another listener held may be free by now, and one this
        # listener held may have been taken over (it then stops claiming it). Only the first hello takes
        # over, so two listeners started with --take-over do not take an agent back and forth.
        self._take_over = False
        await self.hello()
        held = (await self._post("renew", {}))["held"]
        return {str(k): int(v) for k, v in held.items()}

    async def stop_requests(self) -> set[str]:
        return {str(r) for r in (await self._post("stops", {}))["run_ids"]}

    async def finish(self, run_id: str, lease: int, ending: Ending) -> None:
        await self._post(
            "finish",
            {
                "run_id": run_id,
                "lease": lease,
                "state": ending.state,
                "outcome": ending.outcome,
                "stop_signal": ending.stop_signal,
                "reset_at": ending.reset_at,
                "input_tokens": ending.input_tokens,
                "output_tokens": ending.output_tokens,
                "cost_usd_micros": ending.cost_usd_micros,
                "tool_counts": ending.tool_counts,
            },
        )

    async def recover(self) -> list[LeftBehind]:
        left = (await self._post("recover", {}))["left_behind"]
        return [LeftBehind(str(x["run_id"]), int(x["pid"]), int(x["pid_start"])) for x in left]

    async def bye(self) -> list[str]:
        """Let go of the agents this listener holds (it is stopping): the handles the hub released."""
        return [str(h) for h in (await self._post("bye", {}))["released"]]

    async def wait_for_work(self, timeout_s: float) -> bool:
        # A long poll: the hub answers as soon as there is a wake to claim or a run to stop, and re-checks
        # time-freed wakes itself, so an idle listener costs a request every WAIT_MS, not every timeout_s.
        return bool((await self._post("wait", {"timeout_ms": WAIT_MS}))["work"])


def hold_changes(before: ListenerHello, after: ListenerHello) -> list[str]:
    """What changed in what this listener holds between two hellos, in words for its owner (DESIGN §9.1: the
    other devices are shown a take-over): an agent it was waiting for and holds now, and one it lost, with the
    device that took it."""
    lines = [f"holding: {h} (its wakes run here from now on)" for h in sorted(set(after.held) - set(before.held))]
    elsewhere = {e.agent: e for e in after.elsewhere}
    for handle in sorted(set(before.held) - set(after.held)):
        taker = elsewhere.get(handle)
        if taker is not None:
            lines.append(
                f"lost: {handle} was taken over by device {taker.device} on {taker.host}; its wakes run there now"
                " (listen --take-over here takes it back)"
            )
        else:
            lines.append(f"lost: {handle} is no longer held here (the hub no longer knows it as this owner's agent)")
    return lines


def _pause(answer: httpx2.Response, longest: float) -> float:
    """How long a 429 asks the book to wait: its `retry_after_ms`, else its Retry-After seconds, else a second;
    at most `longest`, and never less than a tenth of a second, so a hub saying 0 cannot make it spin."""
    try:
        data = answer.json()
        ms = data.get("retry_after_ms") if isinstance(data, dict) else None
    except ValueError:
        ms = None
    header = answer.headers.get("retry-after", "")
    seconds = ms / 1000 if isinstance(ms, int) else float(header) if header.isdigit() else 1.0
    return min(longest, max(0.1, seconds))


def _unverified_body(token: str) -> dict[str, Any]:
    payload = b64url_decode(token.removeprefix("v4.public.").split(".")[0])[:-64]
    body = json.loads(payload)
    if not isinstance(body, dict):
        raise ValueError("not an object")
    return body


def https_bridge(device: Device) -> OpenBridge:
    """A listener's runs reach the hub over HTTPS with their run token (`agent-rooms bridge`)."""

    @asynccontextmanager
    async def open_bridge(run_id: str, run_dir: Path, token_file: Path) -> AsyncIterator[dict[str, str]]:
        env = {TOKEN_FILE_ENV: str(token_file), HUB_URL_ENV: device.hub + "/mcp", "AGENT_ROOMS_RUN_ID": run_id}
        env.update({name: os.environ[name] for name in TRUST_VARS if os.environ.get(name)})
        if env.get("SSL_CERT_FILE"):
            # A copy in the run directory, which the sandbox binds and a root listener hands to its run-as user:
            # the certificates are public, the file they came from may be neither visible nor readable there.
            copy = run_dir / "ca.pem"
            write_private_file(copy, Path(env["SSL_CERT_FILE"]).read_bytes())
            env["SSL_CERT_FILE"] = str(copy)
        yield env

    return open_bridge


LOCK_FILE = "listen.lock"


@contextmanager
def only_listener(home: Path) -> Iterator[None]:
    """One listener per home: a second would hold the same device's agents against the first."""
    ensure_private_dir(home)
    with (home / LOCK_FILE).open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HomeError(f"another listener already runs from {home}") from None
        yield


def listener_holds_lock(home: Path) -> bool:
    """Does a listener run from `home` now? Asked by trying its lock shared, and letting go at once: a
    listener starting in that instant would be told another runs, and is simply started again."""
    try:
        with (home / LOCK_FILE).open("rb") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(lock, fcntl.LOCK_UN)
            return False
    except FileNotFoundError:
        return False


def listener_supervisor(
    settings: Settings, book: HttpWakeBook, device: Device, lease_s: float, say: Say = say_nothing
) -> Supervisor:
    """The supervisor over this listener's book, its leases kept on the hub's lease time (`lease_s`, from
    the hello): its renewals and its dead-man switch must keep the hub's time, not this machine's setting.
    `say` gets its plain lines: each wake it starts and ends, and a dead-man switch that fires."""
    local = Local(
        wake=replace(settings.wake, lease_s=lease_s),
        home=settings.home,
        runs_dir=settings.runs_dir,
        run_logs_dir=settings.run_logs_dir,
        limits=settings.limits,
    )
    return Supervisor(book, local, https_bridge(device), say)
