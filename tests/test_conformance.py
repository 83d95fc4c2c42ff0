"""The MCP conformance suite (npm `@modelcontextprotocol/conformance`, pinned with the Node 22 it needs in
tests/conformance/) against a real `agent-rooms serve --http`, at the 2026-07-28 spec (issue 17, DESIGN §9.4).

Two groups, one served hub each: the server scenarios against a loopback hub, and the authorization-server
scenarios against a public-mode hub behind TLS. Every failing check must be listed, with its reason, in
tests/conformance/baseline.json, and every listed one must still fail, so the baseline cannot rot; every
scenario the pinned suite knows is either run here or named under `not_run` with the reason.

Installed once with `npm ci` into .cache/conformance/; without npm or its registry the tests skip, saying why,
and CI (AGENT_ROOMS_REQUIRE_CONFORMANCE=1) fails instead.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.streams.text
import httpx2
import pytest
import uvicorn
from starlette import types as asgi

from agent_rooms_mcp.principals import Scope
from tests.conftest import World
from tests.hubprocess import free_port, serve_http
from tests.npmpins import NODE, NpmPins
from tests.test_oauth import alice
from tests.test_public import self_signed

ENTRY = Path("node_modules/@modelcontextprotocol/conformance/dist/index.js")
# On one xdist worker: the suite is installed once and its hubs served one group at a time, not on every worker.
pytestmark = pytest.mark.xdist_group("conformance")
PINNED = NpmPins(Path(__file__).parent / "conformance", "MCP conformance", "AGENT_ROOMS_REQUIRE_CONFORMANCE", ENTRY)
BASELINE_FILE = PINNED.pins / "baseline.json"
BASELINE: dict[str, Any] = json.loads(BASELINE_FILE.read_text())
Failed = dict[str, str]  # a check's id: what the suite said of it
SPEC = "2026-07-28"
# The server scenarios that mean something against a hub without the suite's fixture tools (`test_simple_text`,
# `test://static-text` …); the others are under `not_run` in the baseline, each with its reason.
SERVER_SCENARIOS = (
    "server-stateless",
    "http-header-validation",
    "caching",
    "dns-rebinding-protection",
    "tools-list",
    "server-sse-multiple-streams",
    "sep-2164-resource-not-found",
    "resources-list",
    "prompts-list",
)
AUTHORIZATION_SCENARIOS = ("authorization-server-metadata-endpoint", "authorization-code-grant")
LOOPBACK = "http://127.0.0.1"  # the code grant's callback: any port, the registered path (RFC 8252 §7.3)
# A generous bound for a loaded two-core machine, not an expectation: a scenario takes a few seconds.
SCENARIO_TIMEOUT_S = 120
PASSED = {"SUCCESS", "WARNING", "INFO"}
# Hop-by-hop headers, and the length the proxy recomputes; Host and Origin pass as the suite sent them.
HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"upgrade"}


@dataclass(frozen=True)
class Conformance:
    node: Path
    entry: Path
    scratch: Path

    async def run(self, *args: str) -> tuple[int, str]:
        """(exit status, stdout and stderr) of one invocation of the suite's CLI."""
        argv = [str(self.node), str(self.entry), *args]
        with anyio.fail_after(SCENARIO_TIMEOUT_S):
            done = await anyio.run_process(argv, env={"PATH": os.environ.get("PATH", "")}, check=False)
        return done.returncode, done.stdout.decode() + done.stderr.decode()

    async def failures(self, command: str, scenario: str, *args: str) -> Failed:
        """The checks of one scenario that did not pass, with what the suite said of each."""
        out = Path(tempfile.mkdtemp(dir=self.scratch))
        rc, said = await self.run(command, "--scenario", scenario, *args, "-o", str(out))
        failed = _failed_checks(out)
        assert list(failed) == [scenario], f"{scenario} wrote no checks (exit {rc}):\n{said[-4000:]}"
        return failed[scenario]

    async def authorization(
        self, args: list[str], env: dict[str, str], on_url: Callable[[str], Awaitable[None]]
    ) -> dict[str, Failed]:
        """Every authorization-server scenario, in the one run that shares the metadata between them: the URL the
        code grant prints for a person to open goes to `on_url`, while the suite waits on its callback."""
        out = Path(tempfile.mkdtemp(dir=self.scratch))
        argv = [str(self.node), str(self.entry), "authorization", *args, "-o", str(out)]
        said: list[str] = []
        opened = False
        with anyio.fail_after(SCENARIO_TIMEOUT_S):
            async with await anyio.open_process(argv, env={"PATH": os.environ.get("PATH", ""), **env}) as suite:
                assert suite.stdout is not None
                async for text in anyio.streams.text.TextReceiveStream(suite.stdout):
                    said.append(text)
                    url = re.search(r"^(https://\S+/authorize\?\S+)$", "".join(said), re.MULTILINE)
                    if url and not opened:
                        opened = True
                        await on_url(url[1])
                await suite.wait()
        failed = _failed_checks(out)
        assert failed, (
            f"the authorization scenarios wrote no checks (exit {suite.returncode}):\n{''.join(said)[-4000:]}"
        )
        return failed

    async def scenarios(self, *flags: str) -> set[str]:
        rc, said = await self.run("list", *flags)
        assert rc == 0, said
        return set(re.findall(r"^\s+- ([\w-]+)", said, re.MULTILINE))


@pytest.fixture(scope="module")
def conformance(tmp_path_factory: pytest.TempPathFactory) -> Conformance:
    home = PINNED.install()
    return Conformance(home / NODE, home / ENTRY, tmp_path_factory.mktemp("conformance"))


def _failed_checks(out: Path) -> dict[str, Failed]:
    """Per scenario in a results folder (`server-<scenario>-<time>/checks.json`, or `authorization-server-…`), the
    ids of the checks that did not pass: a warning is a SHOULD and does not count, a skipped check does."""
    failed = {}
    for found in out.glob("*/checks.json"):
        scenario = re.sub(r"^(authorization-)?server-|-\d{4}-\d\d-\d\dT[\d-]+Z$", "", found.parent.name)
        checks = json.loads(found.read_text())
        assert checks, f"{scenario} ran no checks"
        failed[scenario] = {c["id"]: c.get("errorMessage") or c["status"] for c in checks if c["status"] not in PASSED}
    return failed


def assert_as_baselined(baselined: dict[str, Failed], scenarios: tuple[str, ...], failed: dict[str, Failed]) -> None:
    """Every scenario ran; each check that did not pass is in the baseline, and each in the baseline still fails."""
    assert set(failed) == set(scenarios)
    unexpected = {
        f"{s}:{c}": said for s, checks in failed.items() for c, said in checks.items() if c not in baselined.get(s, {})
    }
    assert not unexpected, f"checks that fail and are not in {BASELINE_FILE.name}: {unexpected}"
    stale = [f"{s}:{c}" for s, checks in baselined.items() for c in checks if c not in failed.get(s, {})]
    assert not stale, f"checks in {BASELINE_FILE.name} that now pass: remove them: {stale}"


class BearerProxy:
    """A client holding an agent's bearer token, in front of the hub: the suite's `server` command takes a URL and
    nothing else, and /mcp answers 401 without a credential (DESIGN §2). Everything else passes as the suite
    sent it, Host and Origin included, so the hub's own checks judge what the suite sent."""

    def __init__(self, upstream: str, token: str, http: httpx2.AsyncClient) -> None:
        self._upstream, self._token, self._http = upstream, token, http

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        assert scope["type"] == "http"
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP | {b"authorization"}]
        headers.append((b"authorization", f"Bearer {self._token}".encode()))
        query = scope["query_string"].decode()
        url = self._upstream + scope["raw_path"].decode() + (f"?{query}" if query else "")
        request = self._http.build_request(scope["method"], url, headers=headers, content=body)
        async with anyio.create_task_group() as tg:
            # A stream the suite walks away from (a subscription) ends here too, or it would hold the hub's open.
            tg.start_soon(_cancel_on_disconnect, receive, tg.cancel_scope)
            await self._relay(request, send)
            tg.cancel_scope.cancel()

    async def _relay(self, request: httpx2.Request, send: asgi.Send) -> None:
        answer = await self._http.send(request, stream=True)
        try:
            headers = [(k, v) for k, v in answer.headers.raw if k.lower() not in HOP_BY_HOP]
            await send({"type": "http.response.start", "status": answer.status_code, "headers": headers})
            async for chunk in answer.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await answer.aclose()


async def _cancel_on_disconnect(receive: asgi.Receive, scope: anyio.CancelScope) -> None:
    message: asgi.Message = {"type": ""}
    while message["type"] != "http.disconnect":
        message = await receive()
    scope.cancel()


@asynccontextmanager
async def bearer_proxy(upstream: str, token: str) -> AsyncIterator[str]:
    """The proxy's /mcp URL, served by uvicorn in this process while the block runs."""
    port = free_port()
    async with httpx2.AsyncClient(timeout=SCENARIO_TIMEOUT_S) as http:
        app = BearerProxy(upstream, token, http)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, lifespan="off", log_level="warning", timeout_graceful_shutdown=5
        )
        server = uvicorn.Server(config)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            with anyio.fail_after(SCENARIO_TIMEOUT_S):
                while not server.started:
                    await anyio.sleep(0.05)  # uvicorn offers no event to wait on
            try:
                yield f"http://127.0.0.1:{port}/mcp"
            finally:
                server.should_exit = True


async def test_the_server_scenarios_fail_only_as_the_baseline_says(world: World, conformance: Conformance) -> None:
    """server-stateless (server/discover, the per-request _meta), http-header-validation (Mcp-Method and Mcp-Name),
    caching (ttlMs and cacheScope on list results), dns-rebinding-protection and the rest that apply, at
    2026-07-28, against one served loopback hub."""
    failed: dict[str, Failed] = {}
    async with (
        serve_http(world.settings.home) as served,
        bearer_proxy(served.base, world.tokens["alice-claude"]) as url,
    ):
        for scenario in SERVER_SCENARIOS:
            failed[scenario] = await conformance.failures("server", scenario, "--url", url, "--spec-version", SPEC)
    assert_as_baselined(BASELINE["server"], SERVER_SCENARIOS, failed)


async def test_the_authorization_server_scenarios_fail_only_as_the_baseline_says(
    world: World, conformance: Conformance, tmp_path: Path
) -> None:
    """The hub as the OAuth authorization server of its own /mcp in public mode (DESIGN §9.4), behind TLS with a
    certificate the suite is told to trust: its metadata, and the authorization code grant, whose approval the
    owner gives on the console (here through the service the page calls, as test_oauth.py does)."""
    cert, key = self_signed(tmp_path)
    port, callback = free_port(), free_port()
    issuer = f"https://localhost:{port}"
    flags = ["--public-url", issuer, "--tls-cert", str(cert), "--tls-key", str(key)]
    tls = ssl.create_default_context(cafile=str(cert))
    async with (
        serve_http(world.settings.home, *flags, port=port, base="https://localhost"),
        httpx2.AsyncClient(verify=tls, base_url=issuer) as http,
    ):
        client = {"client_name": "conformance", "redirect_uris": [f"{LOOPBACK}/callback"]}
        registered = await http.post("/register", json={**client, "token_endpoint_auth_method": "none"})
        assert registered.status_code == 201, registered.text
        args = ["--url", issuer, "--client-id", registered.json()["client_id"], "--resource", f"{issuer}/mcp"]
        failed = await conformance.authorization(
            [*args, "-p", str(callback), "--spec-version", SPEC],
            {"NODE_EXTRA_CA_CERTS": str(cert)},
            lambda url: approve(world, http, url),
        )
    assert_as_baselined(BASELINE["authorization"], AUTHORIZATION_SCENARIOS, failed)


async def approve(world: World, http: httpx2.AsyncClient, authorize: str) -> None:
    """What the owner's browser does with the URL the suite prints: /authorize, approval as alice's agent, and
    the redirect back to the suite's loopback callback."""
    answer = await http.get(authorize)
    assert answer.status_code == 302, answer.text
    request_id = parse_qs(urlsplit(answer.headers["location"]).query)["request"][0]
    async with world.hub() as hub:
        redirect = await hub.oauth.approve(request_id, alice(world), "alice-claude", frozenset({Scope.READ}))
    async with httpx2.AsyncClient() as browser:
        assert (await browser.get(redirect)).status_code == 200


async def test_every_scenario_of_the_pinned_suite_is_run_or_named_with_why_not(conformance: Conformance) -> None:
    """A newer pin brings scenarios of its own: each must be run above or listed under `not_run` with a reason;
    and a scenario run is never also excused as not run."""
    known = await conformance.scenarios("--server", "--authorization", "--spec-version", SPEC)
    run = set(SERVER_SCENARIOS) | set(AUTHORIZATION_SCENARIOS)
    not_run = BASELINE["not_run"]
    assert run.isdisjoint(not_run)
    assert known == run | set(not_run)
    assert all(isinstance(why, str) and why for why in not_run.values())
    assert set(BASELINE["server"]) <= set(SERVER_SCENARIOS)
    assert set(BASELINE["authorization"]) <= set(AUTHORIZATION_SCENARIOS)
    for group in ("server", "authorization"):
        for checks in BASELINE[group].values():
            assert all(isinstance(why, str) and why for why in checks.values())


@pytest.mark.parametrize(
    ("failed", "complaint"),
    [
        ({"stateless": {"known": "fixture", "new": "broke"}}, "not in baseline.json: {'stateless:new': 'broke'}"),
        ({"stateless": {}}, r"now pass: remove them: \['stateless:known'\]"),
        ({}, "assert set"),
    ],
)
def test_the_baseline_fails_a_run_on_a_new_failure_a_stale_entry_or_a_scenario_not_run(
    failed: dict[str, Failed], complaint: str
) -> None:
    with pytest.raises(AssertionError, match=complaint):
        assert_as_baselined({"stateless": {"known": "needs a fixture"}}, ("stateless",), failed)
    assert_as_baselined({"stateless": {"known": "needs a fixture"}}, ("stateless",), {"stateless": {"known": "x"}})
