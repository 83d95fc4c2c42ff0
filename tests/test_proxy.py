"""Public mode behind a real TLS-terminating reverse proxy: Debian's Caddy running examples/Caddyfile with its
local CA, in front of a real `agent-rooms serve --http --public-url … --trust-proxy 127.0.0.1` process, and a
real MCP client over HTTPS that trusts only that CA (DESIGN §9.3).

Without `caddy` on PATH the test skips, saying so; AGENT_ROOMS_REQUIRE_CADDY=1 (set by .ci/run where it
could install Caddy) makes that a failure, so a failed install cannot hide the test."""

from __future__ import annotations

import os
import secrets
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
from anyio.abc import Process
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import World
from tests.hubprocess import free_port, wait_listening

CADDYFILE = Path(__file__).resolve().parent.parent / "examples" / "Caddyfile"
CADDY = shutil.which("caddy")
JSON_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
POST = {
    "jsonrpc": "2.0",
    "id": 2,
    "method": "tools/call",
    "params": {"name": "post_message", "arguments": {"room": "lobby", "text": "never"}},
}
# The root of Caddy's local CA, under its data directory.
ROOT_CERT = Path("caddy/pki/authorities/local/root.crt")


def need_caddy() -> str:
    if CADDY is None:
        reason = "caddy is not installed (apt-get install caddy): the TLS proxy test cannot run"
        if os.environ.get("AGENT_ROOMS_REQUIRE_CADDY") == "1":
            pytest.fail(reason + ", and AGENT_ROOMS_REQUIRE_CADDY=1 says it must")
        print(reason)  # shown with -rs as well; said here so a log of the run says why
        pytest.skip(reason)
    return CADDY


def caddy_env(tmp: Path, https_port: int, upstream_port: int) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        # Caddy keeps its CA and certificates under these: the test's own directory, never the machine's.
        "HOME": str(tmp),
        "XDG_DATA_HOME": str(tmp / "data"),
        "XDG_CONFIG_HOME": str(tmp / "config"),
        "CADDY_ADMIN": f"localhost:{free_port()}",
        "CADDY_HTTP_PORT": str(free_port()),
        "CADDY_HTTPS_PORT": str(https_port),
        "AGENT_ROOMS_SITE": "localhost",
        "AGENT_ROOMS_UPSTREAM": f"127.0.0.1:{upstream_port}",
    }


async def stop(process: Process) -> None:
    process.terminate()
    with anyio.move_on_after(10):
        await process.wait()
        return
    process.kill()
    await process.wait()


def caddy_root(tmp: Path) -> Path:
    """The root certificate of the Caddy that `served_behind_caddy(…, tmp, …)` runs: what a client trusts."""
    return tmp / "data" / ROOT_CERT


@asynccontextmanager
async def hub_behind_caddy(world: World, tmp: Path) -> AsyncIterator[tuple[str, ssl.SSLContext, int]]:
    """(the public https URL of /mcp, a TLS context trusting Caddy's CA only, the hub's own port)."""
    hub_env = {
        **os.environ,
        "AGENT_ROOMS_HOME": str(world.settings.home),
        "AGENT_ROOMS_LIMIT_FAILED_AUTH_LIMIT": "3",
        "AGENT_ROOMS_LIMIT_FAILED_AUTH_WINDOW_S": str(10**9),
    }
    async with served_behind_caddy(hub_env, tmp) as (public, context, hub_port):
        yield f"{public}/mcp", context, hub_port


@asynccontextmanager
async def served_behind_caddy(hub_env: dict[str, str], tmp: Path) -> AsyncIterator[tuple[str, ssl.SSLContext, int]]:
    """A `serve --http --public-url https://localhost:PORT --trust-proxy 127.0.0.1` process with exactly
    `hub_env` (its home in AGENT_ROOMS_HOME), behind Caddy: (the public origin, a TLS context trusting
    Caddy's CA only, the hub's own port)."""
    caddy = need_caddy()
    hub_port, https_port = free_port(), free_port()
    public = f"https://localhost:{https_port}"
    hub_argv = [sys.executable, "-m", "agent_rooms_mcp", "serve", "--http", "--port", str(hub_port)]
    hub_argv += ["--public-url", public, "--trust-proxy", "127.0.0.1"]
    env = caddy_env(tmp, https_port, hub_port)
    caddy_argv = [caddy, "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"]
    async with AsyncExitStack() as stack:
        hub = await stack.enter_async_context(await anyio.open_process(hub_argv, env=hub_env))
        stack.push_async_callback(stop, hub)
        proxy = await stack.enter_async_context(
            await anyio.open_process(caddy_argv, env=env, cwd=tmp, stdout=subprocess.DEVNULL)
        )
        stack.push_async_callback(stop, proxy)
        with anyio.fail_after(60):
            await wait_listening(hub_port)
            await wait_listening(https_port)
            root = caddy_root(tmp)
            while not root.exists():
                await anyio.sleep(0.1)  # Caddy makes its CA once it runs; nothing to wait on but the file
            context = ssl.create_default_context(cafile=str(root))
            await until_tls_answers(f"{public}/mcp", context)
        yield public, context, hub_port


async def until_tls_answers(url: str, context: ssl.SSLContext) -> None:
    """Caddy issues the site's certificate just after it starts listening: wait for a verified handshake."""
    async with httpx2.AsyncClient(verify=context) as client:
        while True:
            try:
                await client.get(url)
                return
            except httpx2.ConnectError:
                await anyio.sleep(0.1)


def unknown_bearer() -> dict[str, str]:
    return {**JSON_HEADERS, "Authorization": f"Bearer art_{secrets.token_urlsafe(32)}"}


@pytest.mark.invariant(19, 20, 68, 95)
async def test_a_real_mcp_client_reaches_the_hub_through_a_real_tls_proxy(world: World, tmp_path: Path) -> None:
    async with hub_behind_caddy(world, tmp_path) as (url, tls, hub_port):
        public_origin = url.removesuffix("/mcp")
        bearer = {"Authorization": f"Bearer {world.tokens['alice-claude']}", "Origin": public_origin}
        http = httpx2.AsyncClient(verify=tls, headers=bearer)
        async with http, Client(streamable_http_client(url, http_client=http)) as c:
            who = await c.call_tool("whoami", {})
            posted = await c.call_tool("post_message", {"room": "lobby", "text": "through caddy"})
        assert who.structured_content["agent"]["handle"] == "alice-claude"
        assert not posted.is_error, posted

        before = world.fingerprint()
        async with httpx2.AsyncClient(verify=tls) as client:
            # The proxy's certificate comes from its local CA: a client that does not trust it gets nowhere.
            with pytest.raises(httpx2.ConnectError):
                await _default_trust_refuses(url)
            # The Origin allow-list follows from the public URL, checked by the hub behind the proxy.
            foreign = {**JSON_HEADERS, "Authorization": bearer["Authorization"], "Origin": "https://evil.example"}
            assert (await client.post(url, json=POST, headers=foreign)).status_code == 403
            # Forwarded headers from the client are not the proxy's word: Caddy replaces them, and the
            # failed-authentication limit keeps counting against the one real source.
            answers, bad = [], unknown_bearer()
            for n in range(5):
                forged = {"X-Forwarded-For": f"203.0.113.{n}", "Forwarded": f"for=198.51.100.{n}"}
                answers.append((await client.post(url, json=POST, headers={**bad, **forged})).status_code)
            assert answers == [401, 401, 401, 429, 429]
        # Straight to the hub from a peer that is not the named proxy: refused before anything else.
        direct = httpx2.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx2.AsyncClient(transport=direct) as client:
            refused = await client.post(f"http://127.0.0.1:{hub_port}/mcp", json=POST, headers=JSON_HEADERS)
        assert (refused.status_code, refused.json()) == (403, {"error": "FORBIDDEN_PEER"})
    assert world.fingerprint() == before
    assert [r["text"] for r in world.sql("SELECT text FROM messages")] == ["through caddy"]
    sources = {r["target"] for r in world.sql("SELECT target FROM audit WHERE action = 'auth.authenticate'")}
    assert sources == {"127.0.0.1"}


async def _default_trust_refuses(url: str) -> None:
    async with httpx2.AsyncClient() as client:
        await client.get(url)


async def test_the_example_caddyfile_is_valid(tmp_path: Path) -> None:
    caddy = need_caddy()
    env = caddy_env(tmp_path, free_port(), free_port())
    argv = [caddy, "validate", "--config", str(CADDYFILE), "--adapter", "caddyfile"]
    done = await anyio.run_process(argv, env=env, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


# Settings that switch the run sandbox off: absent from the unit, and so are those that imply NoNewPrivileges=.
SANDBOX_BREAKERS = (
    "RestrictNamespaces", "PrivateUsers", "NoNewPrivileges", "SystemCallFilter", "SystemCallArchitectures",
    "RestrictAddressFamilies", "PrivateDevices", "ProtectKernelTunables", "ProtectKernelModules",
    "ProtectKernelLogs", "ProtectClock", "MemoryDenyWriteExecute", "RestrictRealtime", "RestrictSUIDSGID",
    "DynamicUser", "LockPersonality",
)  # fmt: skip


def test_the_example_systemd_unit_delegates_cgroups_and_leaves_the_sandbox_possible() -> None:
    unit = (CADDYFILE.parent / "agent-rooms.service").read_text()
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.lstrip().startswith("#")
    )
    assert settings["Delegate"] == "yes"
    assert not set(settings) & set(SANDBOX_BREAKERS)
    assert "serve --http" in settings["ExecStart"] and "--trust-proxy 127.0.0.1" in settings["ExecStart"]


def test_the_example_nginx_config_streams_caps_bodies_and_keeps_logins_out_of_the_log() -> None:
    conf = (CADDYFILE.parent / "nginx.conf").read_text()
    for needed in (
        "proxy_buffering off;",
        "client_max_body_size 4m;",
        "~^/console/login 0;",
        "proxy_set_header X-Forwarded-For $remote_addr;",
    ):
        assert needed in conf, needed
