"""Two machines, honestly separated, behind a real TLS proxy (issue 15, "What must be shown"; DESIGN §9.1, §9.3).

The hub's machine: a `serve --http --public-url https://localhost:PORT --trust-proxy 127.0.0.1` process with its
own home, behind Debian's Caddy (`tls internal`), and an environment with no agent CLI at all (no
AGENT_ROOMS_*_BIN, no `claude` on its PATH). The operator's commands run with the CLI on that home.

Bob's machine: another HOME and AGENT_ROOMS_HOME, trusting Caddy's root through SSL_CERT_FILE, enrolled by
code (`login https://localhost:PORT --code …` as a process), working only through the owner API, and running
`agent-rooms listen` as a process of its own with the fake CLIs in its own directory. Bob is not a local
owner: the hub never spawns his agents. Alice's and Bob's agents speak MCP over HTTPS through Caddy.

Alice's words reach Bob's agent through grant and consent, and then meet DESIGN §5's rule that a wake another
owner caused runs only in a working sandbox, which this version does not have: Bob's listener refuses it
(`sandbox_required`). The runs that execute are caused by Bob's own agent.

Without `caddy` these skip, saying so; AGENT_ROOMS_REQUIRE_CADDY=1 makes that a failure (tests/test_proxy.py).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import ssl
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.test_listener import listening, policy
from tests.test_proxy import caddy_root, need_caddy, served_behind_caddy
from tests.test_remote_cli import HubCli, HubMachine, Machine
from tests.wakeworld import FINAL, Fakes, until

CLI_NAMES = ("claude", "codex", "openclaw")
# What bob's listener may run: his agent, in a workdir under his own root, woken by alice's words.
BOB_POLICY = '[agents.bob-bot]\nworkdir = "ROOT/app"\nsandbox = "off"\ncross_owner = true\n'
# Only in the fake CLI's events (its assistant text and its init line): never in anything sent to the hub.
EVENT_MARKERS = ("posted seq=", "claude_code_version")
# Claude's turn marker after an interrupt: the fake writes it only when SIGINT reaches it mid-turn.
INTERRUPT_MARK = "[Request interrupted by user]"


@dataclass
class Two:
    hub: HubMachine
    bob: Machine
    fakes: Fakes
    tls: ssl.SSLContext
    alice_token: str
    bob_token: str
    relay: Tamper | None

    def runs(self, state_in: tuple[str, ...] = FINAL) -> list[sqlite3.Row]:
        marks = ",".join("?" * len(state_in))
        return self.hub.sql(
            "SELECT r.* FROM runs r JOIN agents a ON a.agent_id = r.agent_id WHERE a.handle = 'bob-bot'"
            f" AND r.state IN ({marks}) ORDER BY r.created_at",
            state_in,
        )

    def spawned(self) -> list[sqlite3.Row]:
        """Bob's running runs whose CLI's pid his listener has reported."""
        return [r for r in self.runs(("running",)) if r["pid"]]

    def dump(self) -> str:
        conn = sqlite3.connect(self.hub.machine.home / "hub.db")
        try:
            return "\n".join(conn.iterdump())
        finally:
            conn.close()

    async def mention(self, token: str, text: str) -> dict[str, Any]:
        """An agent mentions bob-bot in the lobby through a real MCP client over HTTPS, through Caddy."""
        origin = self.hub.url
        http = httpx2.AsyncClient(verify=self.tls, headers={"Authorization": f"Bearer {token}", "Origin": origin})
        async with http, Client(streamable_http_client(f"{origin}/mcp", http_client=http)) as agent:
            posted = await agent.call_tool("post_message", {"room": "lobby", "text": f"@bob-bot {text}"})
        assert not posted.is_error, posted.content
        [mention] = posted.structured_content["mentions"]  # type: ignore[index]
        assert mention["handle"] == "bob-bot", mention
        return dict(mention)

    async def mention_accepted(self, text: str) -> str:
        """Alice's agent mentions bob-bot; the wake waits for Bob, who accepts it from his machine. The
        proposal's id."""
        mention = await self.mention(self.alice_token, text)
        assert mention["outcome"] == "pending_consent", mention
        pending = (await self.bob.ok("consent", "list", "--owner", "bob"))["proposals"]
        assert [p["proposal_id"] for p in pending] == [mention["proposal_id"]]
        decided = await self.bob.ok("consent", "accept", mention["proposal_id"], "--owner", "bob")
        assert decided["consent_state"] == "accepted"
        return str(mention["proposal_id"])

    async def bobs_own(self, text: str) -> None:
        """Bob's own agent mentions bob-bot: his words only, so no consent and no sandbox are needed."""
        assert (await self.mention(self.bob_token, text))["outcome"] == "queued"


def hub_environment(home: Path) -> dict[str, str]:
    """The hub process's environment: its home, and no agent CLI anywhere it could look."""
    env = {k: v for k, v in os.environ.items() if not (k.startswith("AGENT_ROOMS_") or k.startswith("FAKE_"))}
    path = os.pathsep.join(
        d for d in env.get("PATH", "/usr/bin:/bin").split(os.pathsep)
        if d and not any(shutil.which(name, path=d) for name in CLI_NAMES)
    )  # fmt: skip
    env.update(PATH=path, AGENT_ROOMS_HOME=str(home), AGENT_ROOMS_HOST_ID="hub-machine")
    for name in CLI_NAMES:
        assert shutil.which(name, path=path) is None
    return env


async def hub_home(root: Path) -> HubCli:
    """The hub's home as its operator sets it up: two verified owners, neither local; alice's agent and room."""
    hub = HubCli(root, "hub")
    assert (await hub.ar("init")).code == 0
    for owner in ("alice", "bob"):
        await hub.ok("owner", "add", owner)
        await hub.ok("owner", "verify", owner)
    assert not any(o["local"] for o in (await hub.ok("owner", "list"))["owners"])
    await hub.ok("agent", "add", "alice-claude", "--owner", "alice", "--tool", "claude")
    await hub.ok("room", "create", "lobby", "--owner", "alice", "--agent", "alice-claude")
    return hub


async def bob_machine(hub: HubMachine, root: Path, login_url: str) -> Machine:
    """Bob's machine, enrolled by code, sets up his agent from there: invoke, a grant to alice, the room."""
    made = await hub.machine.ok("owner", "enroll", "bob", "--url", login_url)
    bob = Machine(root, "bob-laptop")
    bob.env.update(SSL_CERT_FILE=str(caddy_root(root)))
    for name in CLI_NAMES:
        bob.env.pop(f"AGENT_ROOMS_{name.upper()}_BIN", None)
    await bob.ok("login", login_url, "--code", made["code"], "--name", "bob-laptop")
    await bob.ok("agent", "add", "bob-bot", "--owner", "bob", "--tool", "claude")
    await bob.ok("agent", "scopes", "bob-bot", "read,post,task,invoke", "--yes")
    await bob.ok("agent", "add", "bob-claude", "--owner", "bob", "--tool", "claude")
    await bob.ok("agent", "scopes", "bob-claude", "read,post,task")
    await bob.ok("grant", "add", "--from", "bob", "--to", "alice")
    invite = await hub.machine.ok("invite", "create", "lobby", "--by", "alice")
    await bob.ok("invite", "accept", invite["code"], "--owner", "bob", "--agent", "bob-bot", "--agent", "bob-claude")
    policy(bob, bob.home.parent, BOB_POLICY)
    return bob


async def sealed_variable(machine: Machine, handle: str, name: str) -> str:
    """`agent env set HANDLE NAME` on `machine`, the value on stdin as a user would pipe it; the value."""
    value = f"sk-ant-{secrets.token_hex(16)}"
    argv = [sys.executable, "-m", "agent_rooms_mcp", "agent", "env", "set", handle, name, "--json"]
    done = await anyio.run_process(argv, input=value.encode(), env=machine.env, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["names"] == [name]
    return value


def files_holding(home: Path, needle: bytes) -> list[Path]:
    return [p for p in home.rglob("*") if p.is_file() and needle in p.read_bytes()]


@asynccontextmanager
async def two_machines(root: Path, *, relayed: bool = False) -> AsyncIterator[Two]:
    """The hub behind Caddy and Bob's enrolled machine. `relayed`: Bob reaches the hub through `Tamper`."""
    need_caddy()
    hub_cli = await hub_home(root)
    async with served_behind_caddy(hub_environment(hub_cli.home), root) as (public, tls, _port):
        hub = HubMachine(hub_cli, public)
        alice_token = (await hub_cli.ok("token", "issue", "alice-claude"))["token"]
        relay = Tamper(public, caddy_root(root)) if relayed else None
        with relay or nullcontext():
            bob = await bob_machine(hub, root, relay.url if relay else public)
            bob_token = (await bob.ok("token", "issue", "bob-claude"))["token"]
            yield Two(hub, bob, Fakes(bob.home.parent / "fakes"), tls, alice_token, bob_token, relay)


@pytest.mark.invariant(92, 94, 99, 104)
async def test_bobs_listener_runs_his_agent_on_his_machine_behind_a_tls_proxy(tmp_path: Path) -> None:
    async with two_machines(tmp_path) as two:
        hub, bob, fakes = two.hub, two.bob, two.fakes
        device = json.loads((bob.home / "device.json").read_text())
        assert device["hub"] == hub.url and hub.url.startswith("https://")
        async with listening(bob, fakes) as listener:
            # 0. Alice's words reach Bob's agent only once Bob accepts them from his machine; and then his
            # listener runs a wake another owner caused only in a sandbox (DESIGN §5), which this version
            # does not have: it refuses it on Bob's side, `sandbox_required`, and the CLI never runs.
            fakes.scenario("dump_env")
            proposal = await two.mention_accepted("please review")
            [refused] = await until(lambda: two.runs(), "bob's listener refuses alice's wake")
            assert (refused["state"], refused["outcome"], refused["spawned_at"]) == ("failed", "sandbox_required", None)
            assert (refused["trigger"], refused["cause_id"], refused["constrained"]) == ("wake_proposal", proposal, 1)
            assert fakes.calls() == []

            # 1. Bob's own agent wakes bob-bot: his listener runs it on his machine, with the variable Bob
            # sealed there.
            secret = await sealed_variable(bob, "bob-bot", "ANTHROPIC_API_KEY")
            await two.bobs_own("please review")
            [run] = await until(lambda: two.runs()[1:], "bob's listener ends the run")
            assert (run["state"], run["outcome"], run["constrained"]) == ("completed", "ok", 0), dict(run)
            [call] = fakes.calls()
            assert call["cwd"] == str(bob.home.parent / "work" / "app")
            assert call["env"]["ANTHROPIC_API_KEY"] == secret
            # The fake CLI replied in the room over the bridge, with its run token, to the hub it knows by
            # its https address only (the bridge's one URL is the device's hub).
            assert (call["run_id"], call["room"]) == (run["run_id"], "lobby") and call["posted_seq"] is not None
            replies = hub.sql(
                "SELECT m.seq FROM messages m JOIN agents a ON a.agent_id = m.agent_id WHERE a.handle = 'bob-bot'"
            )
            assert [r["seq"] for r in replies] == [call["posted_seq"]]
            [token] = hub.sql("SELECT token_id FROM tokens WHERE run_id = ?", (run["run_id"],))
            posts = hub.sql("SELECT 1 FROM audit WHERE cred_id = ? AND outcome = 'ok' AND action = 'message.post'",
                            (token["token_id"],))  # fmt: skip
            assert posts, "the reply was not made with the run's own token"
            # The events stay on Bob's machine: the markers the fake writes only there never reach the hub.
            events = (bob.home / "run-logs" / run["run_id"] / "events.jsonl").read_text()
            assert all(marker in events for marker in EVENT_MARKERS)
            dump = two.dump()
            assert not [m for m in EVENT_MARKERS if m in dump]
            # Nor Bob's variable: neither its value nor its name, in the database or any file of the hub's home.
            assert "ANTHROPIC_API_KEY" not in dump and not files_holding(hub.machine.home, secret.encode())
            assert not (hub.machine.home / "run-logs").exists() or not any((hub.machine.home / "run-logs").iterdir())

            # 2. `agent stop` typed at the hub ends the run on Bob's machine by SIGINT.
            fakes.scenario("hang")
            await two.bobs_own("please hang")
            [held] = await until(two.spawned, "bob's CLI runs")
            # The pid is reported at the spawn, before the CLI has started (behind the cgroup join and setpriv):
            # a stop sent then would find it still starting. The fake logs its start as it takes SIGINT over.
            await until(lambda: len(fakes.calls()) == 2, "bob's CLI is up")
            stopped = await hub.machine.ok("agent", "stop", "bob-bot")
            assert [(s["run_id"], s["state"], s["stop_signal"]) for s in stopped["stopped"]] == [
                (held["run_id"], "stopped", "SIGINT")
            ]
            assert len(fakes.calls()) == 2
            # On Bob's side: his CLI got the interrupt (the fake writes its partial turn only on SIGINT), and
            # what it wrote stayed there.
            interrupted = (bob.home / "run-logs" / held["run_id"] / "events.jsonl").read_text()
            assert INTERRUPT_MARK in interrupted and INTERRUPT_MARK not in two.dump()

            # 3. Revoking Bob's device at the hub: his listener stops its run and exits 1; his CLI is refused.
            await two.bobs_own("please hang again")
            [running] = await until(two.spawned, "bob's third run runs")
            await hub.machine.ok("device", "revoke", device["device_id"])
            with anyio.fail_after(60):
                await listener.wait()  # it leaves by itself, having stopped its run first
            assert listener.returncode == 1
        with pytest.raises(ProcessLookupError):
            os.kill(running["pid"], 0)
        assert len(fakes.calls()) == 3
        await bob.refused("UNAUTHENTICATED", "agent", "list")
        [ended] = hub.sql("SELECT state FROM runs WHERE run_id = ?", (running["run_id"],))
        # Its end could not be confirmed to the hub (the device was refused): never reported `stopped`.
        assert ended["state"] == "stop_pending"
        assert not hub.sql("SELECT 1 FROM tokens WHERE run_id = ? AND revoked_at IS NULL", (running["run_id"],))
    # The hub spawned nothing of its own: every claim was his device's, every call of the fake CLI in his workdir.
    claims = hub.sql("SELECT json_extract(detail, '$.host') AS host FROM audit WHERE action = 'run.claim'")
    assert len(claims) == 4 and all(c["host"].startswith(device["device_id"] + "@") for c in claims)
    assert {c["cwd"] for c in fakes.calls()} == {str(bob.home.parent / "work" / "app")}


@pytest.mark.invariant(104)
async def test_a_claim_altered_in_transit_is_refused_by_the_listener_and_never_runs(tmp_path: Path) -> None:
    async with two_machines(tmp_path, relayed=True) as two:
        fakes = two.fakes
        fakes.scenario("ok")
        async with listening(two.bob, fakes):
            proposal = await two.mention_accepted("please run this")
            [run] = await until(lambda: two.runs(), "the listener refuses the claim")
            assert two.relay is not None
            relay_saw = list(two.relay.tampered)
    assert (run["state"], run["outcome"], run["spawned_at"]) == ("withdrawn", "withdrawn:claim_unverified", None)
    assert run["cause_id"] == proposal and len(relay_saw) == 1
    assert fakes.calls() == []
    # Claimed once, never reported spawned, never claimed again.
    assert len(two.hub.sql("SELECT 1 FROM audit WHERE action = 'run.claim'")) == 1
    assert two.hub.sql("SELECT 1 FROM audit WHERE action = 'run.spawn'") == []


class Tamper:
    """A loopback HTTP relay between Bob's machine and Caddy that flips one byte of the signature of every
    claim the hub hands a listener (`/owner/v1/listener/claim`); everything else passes through unchanged.
    Upstream it speaks HTTPS, trusting Caddy's root only."""

    def __init__(self, upstream: str, root_cert: Path) -> None:
        self.upstream = upstream
        self.root_cert = root_cert
        self.tampered: list[str] = []
        self.client = httpx2.Client(verify=ssl.create_default_context(cafile=str(root_cert)), timeout=60)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _relay(self))
        # Closing waits for the requests in flight (a long poll ends within the hub's wait), so the client is
        # closed only once nothing uses it.
        self._server.daemon_threads, self._server.block_on_close = False, True
        self._thread = threading.Thread(target=self._server.serve_forever, name="tamper-relay", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Tamper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        self.client.close()  # its pooled TLS connections to Caddy, or they warn as unclosed sockets later

    def alter(self, path: str, body: bytes) -> bytes:
        if path != "/owner/v1/listener/claim":
            return body
        answer = json.loads(body)
        if isinstance(answer.get("claim"), str):
            answer["claim"] = flip_signature_byte(answer["claim"])
            self.tampered.append(answer["claim"])
        return json.dumps(answer).encode()


def flip_signature_byte(token: str) -> str:
    """`v4.public.<payload+signature>.<footer>` with one character of the signature changed: the body still
    reads, so the listener can name the run it refuses; the signature no longer verifies."""
    head, _, rest = token.partition("v4.public.")
    body, dot, footer = rest.partition(".")
    i = len(body) - 10  # inside the last 64 bytes (the signature), clear of the final, partial character
    swapped = "B" if body[i] != "B" else "C"
    return f"{head}v4.public.{body[:i]}{swapped}{body[i + 1 :]}{dot}{footer}"


_HOP = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "accept-encoding"}


def _relay(relay: Tamper) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _forward(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            sent = self.rfile.read(length) if length else b""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            try:
                answer = relay.client.request(self.command, relay.upstream + self.path, content=sent, headers=headers)
            except httpx2.HTTPError:
                self.send_error(502)
                return
            body = relay.alter(self.path.split("?")[0], answer.content) if answer.status_code == 200 else answer.content
            self.send_response(answer.status_code)
            for k, v in answer.headers.items():
                if k.lower() not in _HOP:
                    self.send_header(k, v)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = _forward

    return Handler
