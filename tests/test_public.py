"""Public mode (DESIGN §9.3): what `serve --http` refuses to bind, which Host/Origin/peer it answers, and
whose forwarded headers count against the failed-authentication limit. The real TLS proxy is in
test_proxy.py."""

from __future__ import annotations

import secrets
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path

import httpx2
import pytest
from click.testing import CliRunner
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from agent_rooms_mcp.cli import cli
from agent_rooms_mcp.http import open_http_app
from agent_rooms_mcp.public import Exposure
from tests.conftest import World
from tests.hubprocess import free_port, serve_http

JSON_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
POST = {
    "jsonrpc": "2.0",
    "id": 2,
    "method": "tools/call",
    "params": {"name": "post_message", "arguments": {"room": "lobby", "text": "from afar"}},
}
PUBLIC = Exposure(public=("https", "hub.example"), proxies=frozenset({ip_address("127.0.0.1")}))


def serve(world: World, *flags: str) -> tuple[int, str]:
    env = {"AGENT_ROOMS_HOME": str(world.settings.home)}
    done = CliRunner().invoke(cli, ["serve", "--http", *flags], env=env)
    return done.exit_code, done.output


@pytest.mark.invariant(20, 95)
@pytest.mark.parametrize(
    "flags, named",
    [
        (["--host", "0.0.0.0"], "--public-url"),
        (["--host", "192.168.1.5"], "--public-url"),
        (["--host", "0.0.0.0", "--public-url", "https://hub.example"], "--trust-proxy"),
        (["--host", "0.0.0.0", "--public-url", "http://hub.example", "--trust-proxy", "127.0.0.1"], "https://"),
        (["--host", "0.0.0.0", "--public-url", "https://hub.example", "--trust-proxy", "8.8.8.8"], "private"),
        (["--host", "0.0.0.0", "--public-url", "https://hub.example", "--trust-proxy", "proxy.lan"], "IP address"),
        (["--trust-proxy", ","], "at least one address"),
    ],
)
async def test_a_bind_beyond_loopback_needs_a_public_url_and_tls_or_a_private_proxy(
    world: World, flags: list[str], named: str
) -> None:
    before = world.fingerprint()
    code, output = serve(world, *flags, "--port", str(free_port()))
    assert code == 2, output
    assert named in output
    assert world.fingerprint() == before


@pytest.mark.invariant(20)
async def test_tls_cert_and_key_go_together(world: World, tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("not used: refused before it is read\n")
    code, output = serve(world, "--host", "0.0.0.0", "--public-url", "https://hub.example", "--tls-cert", str(cert))
    assert code == 2 and "--tls-key" in output


@asynccontextmanager
async def public_hub(world: World, exposure: Exposure) -> AsyncIterator[httpx2.AsyncClient]:
    """The HTTP hub in-process in public mode; requests come from 127.0.0.1 (the named proxy) by default."""
    async with open_http_app(world.settings, exposure=exposure) as app:
        transport = httpx2.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx2.AsyncClient(transport=transport, base_url="http://hub.example") as client:
            yield client


@pytest.mark.invariant(19, 95)
async def test_host_and_origin_follow_from_the_public_url(world: World) -> None:
    auth = {**JSON_HEADERS, "Authorization": f"Bearer {world.tokens['alice-claude']}"}
    async with open_http_app(world.settings, exposure=PUBLIC) as app:
        for base, origin in [("http://hub.example", "https://hub.example"), ("http://localhost:8765", None)]:
            headers = {"Authorization": auth["Authorization"], **({"Origin": origin} if origin else {})}
            transport = httpx2.ASGITransport(app=app, client=("127.0.0.1", 40000))
            http = httpx2.AsyncClient(transport=transport, headers=headers)
            async with http, Client(streamable_http_client(f"{base}/mcp", http_client=http)) as c:
                who = await c.call_tool("whoami", {})
            assert who.structured_content["agent"]["handle"] == "alice-claude", who
    async with public_hub(world, PUBLIC) as client:
        before = world.fingerprint()
        for headers, status in [
            ({"Host": "evil.example"}, 421),
            ({"Origin": "https://evil.example"}, 403),
            ({"Origin": "http://hub.example"}, 403),  # the public URL is https: a plaintext page is not it
        ]:
            refused = await client.post("/mcp", json=POST, headers={**auth, **headers})
            assert refused.status_code == status, (headers, refused.text)
    assert world.fingerprint() == before


@pytest.mark.invariant(95)
async def test_once_a_proxy_is_named_other_peers_are_refused(world: World) -> None:
    auth = {**JSON_HEADERS, "Authorization": f"Bearer {world.tokens['alice-claude']}"}
    before = world.fingerprint()
    async with open_http_app(world.settings, exposure=PUBLIC) as app:
        transport = httpx2.ASGITransport(app=app, client=("10.0.0.9", 40000))
        async with httpx2.AsyncClient(transport=transport, base_url="http://hub.example") as client:
            refused = await client.post("/mcp", json=POST, headers=auth)
    assert (refused.status_code, refused.json()) == (403, {"error": "FORBIDDEN_PEER"})
    assert world.fingerprint() == before


def limited(world: World, limit: int) -> World:
    limits = replace(world.settings.limits, failed_auth_limit=limit, failed_auth_window_s=10**9)
    return replace(world, settings=replace(world.settings, limits=limits))


async def fail_from_many_forged_addresses(send: httpx2.AsyncClient, url: str, attempts: int) -> list[int]:
    bad = {**JSON_HEADERS, "Authorization": f"Bearer art_{secrets.token_urlsafe(32)}"}
    answers = []
    for n in range(attempts):
        forged = {"X-Forwarded-For": f"203.0.113.{n}", "Forwarded": f"for=198.51.100.{n}"}
        answers.append((await send.post(url, json=POST, headers={**bad, **forged})).status_code)
    return answers


@pytest.mark.invariant(68, 95)
async def test_a_forged_forwarded_for_counts_only_from_a_named_proxy(world: World) -> None:
    world = limited(world, 3)
    # From a peer that is not a named proxy, every forged address is the same source: the limit holds.
    untrusted = Exposure(public=("https", "hub.example"))
    async with public_hub(world, untrusted) as client:
        assert await fail_from_many_forged_addresses(client, "/mcp", 5) == [401, 401, 401, 429, 429]
    # From the named proxy, the address it reports is the client's: each is a source of its own.
    async with public_hub(world, PUBLIC) as client:
        assert await fail_from_many_forged_addresses(client, "/mcp", 5) == [401] * 5
    sources = {r["target"] for r in world.sql("SELECT target FROM audit WHERE action = 'auth.authenticate'")}
    assert sources == {"127.0.0.1"} | {f"203.0.113.{n}" for n in range(5)}


@pytest.mark.invariant(95)
def test_the_client_address_is_the_last_hop_no_named_proxy_added() -> None:
    proxy, other = "127.0.0.1", "10.0.0.9"
    two_proxies = Exposure(proxies=frozenset({ip_address("127.0.0.1"), ip_address("10.0.0.2")}))
    cases = [
        (proxy, {"x-forwarded-for": "6.6.6.6, 203.0.113.5, 10.0.0.2"}, "203.0.113.5"),  # forged first hop
        (proxy, {"forwarded": 'for="[2001:db8::1]:4711";proto=https'}, "2001:db8::1"),
        (proxy, {"forwarded": "for=198.51.100.7", "x-forwarded-for": "203.0.113.5"}, "203.0.113.5"),
        (proxy, {"x-forwarded-for": "10.0.0.2"}, proxy),  # only proxies: the peer
        (proxy, {"x-forwarded-for": "unknown"}, "unknown"),  # never the proxy's own budget
        (other, {"x-forwarded-for": "203.0.113.5"}, other),  # not a named proxy: its headers are its own
    ]
    for peer, headers, expected in cases:
        assert two_proxies.client_address(peer, headers) == expected, (peer, headers)


@pytest.mark.invariant(68, 95)
async def test_the_served_hub_ignores_forwarded_headers_unless_a_proxy_is_named(world: World) -> None:
    """uvicorn on its own believes X-Forwarded-For from 127.0.0.1: the real `serve` process must not."""
    env = {"AGENT_ROOMS_LIMIT_FAILED_AUTH_LIMIT": "3", "AGENT_ROOMS_LIMIT_FAILED_AUTH_WINDOW_S": str(10**9)}
    async with serve_http(world.settings.home, env=env) as served, httpx2.AsyncClient() as client:
        assert await fail_from_many_forged_addresses(client, served.mcp, 5) == [401, 401, 401, 429, 429]
    trusting = serve_http(world.settings.home, "--trust-proxy", "127.0.0.1", env=env)
    async with trusting as served, httpx2.AsyncClient() as client:
        assert await fail_from_many_forged_addresses(client, served.mcp, 5) == [401] * 5


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for localhost and its key, made by openssl for this test only."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: no certificate to serve TLS with")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    argv = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    argv += ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost", "-days", "2"]
    subprocess.run([*argv, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.mark.invariant(20)
async def test_the_hub_serves_tls_of_its_own(world: World, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    flags = ["--public-url", f"https://localhost:{port}", "--tls-cert", str(cert), "--tls-key", str(key)]
    async with serve_http(world.settings.home, *flags, port=port, base="https://localhost") as served:
        tls = ssl.create_default_context(cafile=str(cert))
        bearer = {"Authorization": f"Bearer {world.tokens['alice-claude']}"}
        http = httpx2.AsyncClient(verify=tls, headers=bearer)
        async with http, Client(streamable_http_client(served.mcp, http_client=http)) as c:
            who = await c.call_tool("whoami", {})
        assert who.structured_content["agent"]["handle"] == "alice-claude"
        # Plaintext to the TLS port gets no answer from the hub.
        async with httpx2.AsyncClient() as plain:
            with pytest.raises(httpx2.HTTPError):
                await plain.post(f"http://localhost:{port}/mcp", json=POST, headers=JSON_HEADERS)
