"""Client ID metadata documents (DESIGN §9.4, invariant 108): the whole flow with a document served by a local
HTTPS server the test trusts, and one SSRF test per fetching rule.

The test server listens on loopback, which a hub refuses to fetch from; these tests set the test-only allowance
(`oauth_cimd_test_ca`, AGENT_ROOMS_OAUTH_ALLOW_LOOPBACK_CIMD_FOR_TESTS), which also trusts the server's
certificate, and serve the hub with a loopback public URL, the only kind that allowance accepts."""

from __future__ import annotations

import json
import secrets
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from ipaddress import ip_address
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
import httpx2
import pytest
from anyio._core._sockets import idna2008_resolve
from anyio.abc import SocketStream
from anyio.streams.tls import TLSListener

from agent_rooms_mcp import policy
from agent_rooms_mcp.cimd import ClientDocuments, DocumentRefused, registrable_domain
from agent_rooms_mcp.http import open_http_app
from agent_rooms_mcp.public import BindRefused, Exposure
from tests.conftest import World
from tests.hubprocess import free_port, serve_http
from tests.test_oauth import CLAUDE, FORM, PUBLIC, Flow, mcp_status, oauth_error, served, whoami
from tests.test_public import self_signed

LOCAL_ISSUER = "https://localhost:8443"
LOCAL = Exposure(public=("https", "localhost"), public_origin=LOCAL_ISSUER)


@dataclass
class DocServer:
    """An HTTPS server on loopback answering each path with canned bytes (None: never answers)."""

    port: int = 0
    answers: dict[str, bytes | None] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)

    def url(self, path: str = "/client.json") -> str:
        return f"https://localhost:{self.port}{path}"

    def document(self, path: str = "/client.json", **fields: Any) -> str:
        """Serve a valid document at `path` (fields override or, as None, drop its members); its URL."""
        url = self.url(path)
        doc = {
            "client_id": url,
            "client_name": "Claude Code",
            "redirect_uris": [CLAUDE, "http://localhost/callback"],
            "token_endpoint_auth_method": "none",
            **fields,
        }
        self.answer(path, json.dumps({k: v for k, v in doc.items() if v is not None}).encode())
        return url

    def answer(self, path: str, body: bytes, *, status: str = "200 OK", headers: dict[str, str] | None = None) -> None:
        head = {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}
        lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in head.items() if v), "Connection: close"]
        self.answers[path] = ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def handle(self, stream: SocketStream) -> None:
        async with stream:
            request = b""
            try:
                while b"\r\n\r\n" not in request:
                    request += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, ssl.SSLError):
                return
            path = request.split(b" ", 2)[1].decode()
            self.hits.append(path)
            answer = self.answers.get(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            if answer is None:
                await anyio.sleep_forever()
            await stream.send(answer)


@asynccontextmanager
async def doc_server(tmp_path: Path) -> AsyncIterator[tuple[DocServer, Path]]:
    cert, key = self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(str(cert), str(key))
    server = DocServer()
    listener = await anyio.create_tcp_listener(local_host="localhost", local_port=0)
    server.port = listener.listeners[0].extra(anyio.abc.SocketAttribute.local_port)
    # One port for both loopback addresses `localhost` may resolve to.
    for extra in listener.listeners[1:]:
        await extra.aclose()
    async with anyio.create_task_group() as tg:
        tg.start_soon(TLSListener(listener.listeners[0], tls, standard_compatible=False).serve, server.handle)
        try:
            yield server, cert
        finally:
            tg.cancel_scope.cancel()
    await listener.listeners[0].aclose()


def trusting(world: World, ca: Path, **limits: Any) -> World:
    settings = replace(world.settings, oauth_cimd_test_ca=ca, limits=replace(world.settings.limits, **limits))
    return replace(world, settings=settings)


@asynccontextmanager
async def local_flow(world: World) -> AsyncIterator[Flow]:
    async with served(world, LOCAL) as http:
        yield Flow(world, http, issuer=LOCAL_ISSUER)


@pytest.mark.invariant(97, 108)
async def test_a_metadata_document_client_authorizes_exchanges_and_calls(world: World, tmp_path: Path) -> None:
    async with doc_server(tmp_path) as (docs, ca), local_flow(trusting(world, ca)) as f:
        f.client_id = docs.document()
        server = (await f.http.get("/.well-known/oauth-authorization-server")).json()
        assert server["client_id_metadata_document_supported"] is True
        pair = await f.tokens()
        assert (await whoami(f.http, pair["access_token"], LOCAL_ISSUER))["agent"]["handle"] == "alice-claude"
        refreshed = await f.refresh(pair["refresh_token"])
        assert refreshed.status_code == 200
        # Loopback redirects of a document take any port too.
        f.redirect_uri = "http://localhost:50123/callback"
        assert (await f.authorize()).status_code == 302
        # Fetched once: the document is cached (at least five minutes whatever it says).
        assert docs.hits == ["/client.json"]
        async with world.hub() as hub:
            pending = await hub.oauth.pending(await f.request_id())
        assert (pending.client_name, pending.client_host, pending.loopback) == ("Claude Code", "localhost", True)


async def refused(f: Flow, client_id: str) -> str:
    f.client_id = client_id
    before = f.world.fingerprint()
    answer = await f.authorize()
    assert (answer.status_code, oauth_error(answer)) == (400, "invalid_client"), answer.text
    assert "location" not in answer.headers
    assert f.world.fingerprint() == before
    return str(answer.json()["error_description"])


@pytest.mark.invariant(108)
async def test_a_document_naming_another_client_id_is_refused(world: World, tmp_path: Path) -> None:
    async with doc_server(tmp_path) as (docs, ca), local_flow(trusting(world, ca)) as f:
        url = docs.document(client_id=docs.url("/other.json"))
        assert "another client_id" in await refused(f, url)
        # Byte for byte: the same URL spelled differently is another client.
        url = docs.document("/upper.json", client_id=docs.url("/upper.json").replace("localhost", "LOCALHOST"))
        assert "another client_id" in await refused(f, url)


@pytest.mark.invariant(108)
@pytest.mark.parametrize(
    "fields, named",
    [
        ({"client_name": None}, "client_name"),
        ({"redirect_uris": None}, "redirect_uris"),
        ({"redirect_uris": ["https://evil.example/cb"]}, "redirect URI"),
        ({"token_endpoint_auth_method": "client_secret_basic"}, "token_endpoint_auth_method"),
        ({"token_endpoint_auth_method": None}, "token_endpoint_auth_method"),
    ],
)
async def test_a_document_missing_what_it_must_name_is_refused(
    world: World, tmp_path: Path, fields: dict[str, Any], named: str
) -> None:
    async with doc_server(tmp_path) as (docs, ca), local_flow(trusting(world, ca)) as f:
        assert named in await refused(f, docs.document(**fields))


@pytest.mark.invariant(108)
@pytest.mark.parametrize(
    "make_url",
    [
        lambda port: f"http://localhost:{port}/client.json",  # not https
        lambda port: f"https://localhost:{port}",  # no path
        lambda port: f"https://localhost:{port}/",
        lambda port: f"https://user@localhost:{port}/client.json",  # userinfo
        lambda port: f"https://localhost:{port}/client.json?x=1",  # query
        lambda port: f"https://localhost:{port}/client.json#f",  # fragment
    ],
)
async def test_a_client_id_url_of_the_wrong_shape_is_never_fetched(
    world: World, tmp_path: Path, make_url: Callable[[int], str]
) -> None:
    async with doc_server(tmp_path) as (docs, ca), local_flow(trusting(world, ca)) as f:
        docs.document()
        await refused(f, make_url(docs.port))
        assert docs.hits == []


@pytest.mark.invariant(108)
@pytest.mark.parametrize(
    "host, reason",
    [
        ("localhost", "not a public address"),  # loopback, by name: refused on its addresses
        # An IP literal is refused by the URL rule before anything else: a client id names a domain.
        ("127.0.0.1", "is an IP address"),
        ("[::1]", "not an IP address"),
        ("10.0.0.1", "is an IP address"),  # private
        ("192.168.1.1", "is an IP address"),
        ("172.16.0.1", "is an IP address"),
        ("169.254.169.254", "is an IP address"),  # link-local (cloud metadata)
        ("[fe80::1]", "not an IP address"),
        ("100.64.0.1", "is an IP address"),  # CGNAT
        ("224.0.0.1", "is an IP address"),  # multicast
        ("0.0.0.0", "is an IP address"),  # unspecified
        ("[::]", "not an IP address"),
        ("[::ffff:127.0.0.1]", "not an IP address"),  # loopback in IPv6 clothing
        ("2130706433", "is an IP address"),  # 127.0.0.1 as one number, as inet_aton reads it
        ("0x7f000001", "is an IP address"),
    ],
)
async def test_a_document_is_never_fetched_from_an_address_that_is_not_public(
    world: World, tmp_path: Path, host: str, reason: str
) -> None:
    # Without the test-only allowance, as every real hub runs.
    async with doc_server(tmp_path) as (docs, _ca), served(world, PUBLIC) as http:
        f = Flow(world, http)
        docs.document()
        assert reason in await refused(f, f"https://{host}:{docs.port}/client.json")
        assert docs.hits == []


@pytest.mark.invariant(108)
def test_every_internal_address_class_is_refused_and_a_public_one_is_not() -> None:
    for text in ("127.0.0.2", "10.1.2.3", "172.31.0.1", "192.168.0.1", "169.254.1.1", "100.127.255.254",
                 "224.1.1.1", "0.0.0.0", "255.255.255.255", "::1", "fe80::2", "fc00::1", "ff02::1", "::",
                 "::ffff:10.0.0.1", "192.0.2.1"):  # fmt: skip
        assert policy.cimd_address_refused(ip_address(text), allow_loopback=False), text
    for text in ("1.1.1.1", "2606:4700:4700::1111", "93.184.216.34"):
        assert not policy.cimd_address_refused(ip_address(text), allow_loopback=False), text
    # The test-only allowance opens loopback and nothing else.
    assert not policy.cimd_address_refused(ip_address("127.0.0.1"), allow_loopback=True)
    assert policy.cimd_address_refused(ip_address("10.0.0.1"), allow_loopback=True)


@pytest.mark.invariant(108)
async def test_dns_is_resolved_once_so_a_rebinding_name_never_reaches_the_internal_server(
    world: World, tmp_path: Path
) -> None:
    """A name server that answers a public address first and loopback after (DNS rebinding): the hub connects to
    the address it checked, so the loopback server is never reached; and a name with any internal address among
    its answers is refused outright."""
    async with doc_server(tmp_path) as (docs, _ca):
        docs.document("/rebind.json")
        asked: list[str] = []

        async def rebinding(host: str, port: int) -> list[str]:
            asked.append(host)
            return ["1.1.1.1"] if len(asked) == 1 else ["127.0.0.1"]

        limits = replace(world.settings.limits, oauth_cimd_timeout_s=2.0)
        documents = ClientDocuments(limits, resolve=rebinding)
        with pytest.raises(DocumentRefused):
            await documents.get(f"https://rebind.test:{docs.port}/rebind.json", None)
        assert asked == ["rebind.test"] and docs.hits == []

        async def mixed(host: str, port: int) -> list[str]:
            return ["1.1.1.1", "10.0.0.5"]

        with pytest.raises(DocumentRefused, match="not a public address"):
            await ClientDocuments(limits, resolve=mixed).get(f"https://mixed.test:{docs.port}/rebind.json", None)


@pytest.mark.invariant(108)
async def test_a_redirect_is_not_followed(world: World, tmp_path: Path) -> None:
    async with doc_server(tmp_path) as (docs, ca), local_flow(trusting(world, ca)) as f:
        target = docs.document("/target.json")
        docs.answer("/client.json", b"", status="302 Found", headers={"Location": target})
        assert "redirects are not followed" in await refused(f, docs.url())
        assert docs.hits == ["/client.json"]


@pytest.mark.invariant(108)
async def test_a_document_not_answered_in_time_is_refused(world: World, tmp_path: Path) -> None:
    async with doc_server(tmp_path) as (docs, ca), local_flow(trusting(world, ca, oauth_cimd_timeout_s=0.5)) as f:
        docs.answers["/client.json"] = None  # the server reads the request and never answers
        assert "not fetched within" in await refused(f, docs.url())


@pytest.mark.invariant(108)
async def test_a_document_over_the_size_cap_is_refused_with_or_without_a_length(world: World, tmp_path: Path) -> None:
    async with doc_server(tmp_path) as (docs, ca), local_flow(trusting(world, ca)) as f:
        url = docs.url()
        big = json.dumps({"client_id": url, "client_name": "x" * 6000}).encode()
        docs.answer("/client.json", big)
        assert "larger than" in await refused(f, url)
        url = docs.url("/unsized.json")
        big = json.dumps({"client_id": url, "client_name": "x" * 6000}).encode()
        docs.answer("/unsized.json", big, headers={"Content-Length": ""})
        assert "larger than" in await refused(f, url)


@pytest.mark.invariant(108)
async def test_a_document_that_is_not_json_is_refused(world: World, tmp_path: Path) -> None:
    async with doc_server(tmp_path) as (docs, ca), local_flow(trusting(world, ca)) as f:
        url = docs.url()
        body = json.dumps({"client_id": url, "client_name": "x", "redirect_uris": [CLAUDE],
                           "token_endpoint_auth_method": "none"}).encode()  # fmt: skip
        docs.answer("/client.json", body, headers={"Content-Type": "text/html"})
        assert "application/json" in await refused(f, url)


async def test_failures_are_cached_for_a_minute_and_fetches_are_limited_per_domain(
    world: World, tmp_path: Path
) -> None:
    async with doc_server(tmp_path) as (docs, ca), local_flow(trusting(world, ca)) as f:
        await refused(f, docs.url("/missing.json"))
        docs.document("/missing.json")  # fixed now, but the failure stands for a minute
        await refused(f, docs.url("/missing.json"))
        assert docs.hits == ["/missing.json"]
    world = trusting(world, ca, oauth_cimd_fetches_per_domain_per_min=2)
    (tmp_path / "2").mkdir()
    async with doc_server(tmp_path / "2") as (docs, ca), local_flow(trusting(world, ca)) as f:
        for n in range(3):
            docs.document(f"/c{n}.json")
        for n in range(2):
            f.client_id = docs.url(f"/c{n}.json")
            assert (await f.authorize()).status_code == 302
        assert "too many" in await refused(f, docs.url("/c2.json"))
        assert docs.hits == ["/c0.json", "/c1.json"]


async def test_made_up_subdomains_share_one_domains_fetch_budget_and_another_domain_keeps_its_own(
    world: World,
) -> None:
    """`a1.evil.example`, `a2.evil.example`, ...: each name is new, but all are one registrable domain, so 100 of
    them get no more fetches than one domain's budget. The resolver stands for the network: a name asked of it
    is a fetch the budget let through (it answers no address, so nothing is fetched for real)."""
    asked: list[str] = []

    async def nowhere(host: str, port: int) -> list[str]:
        asked.append(host)
        return []

    documents = ClientDocuments(world.settings.limits, resolve=nowhere)
    budget = world.settings.limits.oauth_cimd_fetches_per_domain_per_min
    refusals = []
    for n in range(100):
        with pytest.raises(DocumentRefused) as refused:
            await documents.get(f"https://a{n}.{secrets.token_hex(4)}.evil.example/client.json", None)
        refusals.append(str(refused.value))
    assert len(asked) == budget and all(h.endswith(".evil.example") for h in asked)
    assert refusals.count("too many metadata document fetches; try again in a minute") == 100 - budget
    # Another domain, and another registrable domain under a two-label public suffix, are unaffected.
    for url in ("https://client.other.example/c.json", "https://x.y.evil.co.uk/c.json", "https://z.evil.co.uk/c.json"):
        with pytest.raises(DocumentRefused, match="no address"):
            await documents.get(url, None)
    assert asked[budget:] == ["client.other.example", "x.y.evil.co.uk", "z.evil.co.uk"]


# Spellings of one domain or address that a resolver or socket folds together, while the Public Suffix List,
# which splits on '.' only, would count each as a registrable domain of its own (hostile review h-R).
SPELLINGS: dict[str, Callable[[int], str]] = {
    # IDNA (UTS 46, what anyio.getaddrinfo asks DNS) maps these to '.'.
    "ideographic-dots": lambda n: f"a{n}\u3002evil\u3002example",
    "fullwidth-dot": lambda n: f"a{n}\uff0eevil.example",
    # Fullwidth letters fold to ASCII (UTS 46): 16 spellings of evil.example.
    "fullwidth-letters": lambda n: (
        "".join(chr(ord(c) + 0xFEE0) if n >> i & 1 else c for i, c in enumerate("evil")) + ".example"
    ),
    # glibc inet_aton takes one number for the whole address, with any leading zeros: all connect to 1.1.1.1.
    "ipv4-as-one-number": lambda n: "0x" + "0" * n + "1010101",
    # One IPv6 address, its zero groups spelled 0, 00, 000 or 0000: 256 strings, one address.
    "ipv6-one-address": lambda n: (
        "[2001:4860:4860:" + ":".join("0" * (1 + (n >> 2 * i & 3)) for i in range(4)) + ":8888]"
    ),
    # The addresses of one /64 (what a cheap VPS is given).
    "ipv6-one-64": lambda n: f"[2001:db8:1:1::{n:x}]",
}


@pytest.mark.invariant(108)
@pytest.mark.parametrize("spell", SPELLINGS.values(), ids=SPELLINGS.keys())
async def test_no_spelling_of_one_domain_or_address_gets_a_fetch_budget_of_its_own(
    world: World, spell: Callable[[int], str]
) -> None:
    """The resolver stands for the network and records what getaddrinfo would really hand DNS or inet_aton: the
    URL rule refuses every such spelling, so together they get no more fetches than one domain's budget."""
    asked: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append(idna2008_resolve(host).decode())
        return []

    documents = ClientDocuments(world.settings.limits, resolve=resolver)
    budget = world.settings.limits.oauth_cimd_fetches_per_domain_per_min
    for n in range(budget * 3):
        with pytest.raises(DocumentRefused):
            await documents.get(f"https://{spell(n)}/client.json", None)
    assert len(asked) <= budget, f"{len(asked)} fetches of one target in a minute, budget {budget}: {asked[:4]}"


@pytest.mark.invariant(108)
@pytest.mark.parametrize(
    "host, problem",
    [
        ("claude.ai", None),
        ("localhost:8443", None),  # one label, a port
        ("a-1.xn--bcher-kva.example", None),  # an IDN in its xn-- form
        ("1password.com", None),  # a label may begin with a digit
        ("b\u00fccher.example", "must be a DNS name"),  # an IDN not in its xn-- form
        ("a\u3002evil.example", "must be a DNS name"),
        ("Evil.example", "must be a DNS name"),
        ("evil.example.", "must be a DNS name"),
        ("a..evil.example", "must be a DNS name"),
        ("-a.evil.example", "must be a DNS name"),
        ("a_b.evil.example", "must be a DNS name"),
        ("a%2eevil.example", "must be a DNS name"),
        ("x" * 64 + ".example", "must be a DNS name"),
        ("[2001:db8::1]", "must be a DNS name"),
        ("1.1.1.1", "is an IP address"),
        ("16843009", "is an IP address"),
        ("0x01010101", "is an IP address"),
        ("0177.1", "is an IP address"),
    ],
)
def test_a_client_id_host_must_be_a_plain_ascii_dns_name(host: str, problem: str | None) -> None:
    found = policy.cimd_url_problem(f"https://{host}/client.json")
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found and found.startswith("host "), found


@pytest.mark.parametrize(
    "host, domain",
    [
        ("a1.evil.example", "evil.example"),
        ("A.B.Evil.Example.", "evil.example"),
        ("evil.example", "evil.example"),
        ("x.y.evil.co.uk", "evil.co.uk"),
        ("someone.github.io", "github.io"),  # a private suffix: one operator's servers, one budget
        ("co.uk", "co.uk"),  # a public suffix itself
        ("203.0.113.9", "203.0.113.9"),
    ],
)
def test_the_fetch_budget_counts_by_registrable_domain(host: str, domain: str) -> None:
    assert registrable_domain(host) == domain


async def test_the_loopback_allowance_is_refused_for_a_hub_with_a_public_address(world: World, tmp_path: Path) -> None:
    ca, _key = self_signed(tmp_path)
    with pytest.raises(BindRefused, match="test suite only"):
        async with open_http_app(trusting(world, ca).settings, exposure=PUBLIC):
            pass


@pytest.mark.invariant(97, 108)
async def test_the_whole_flow_against_a_served_hub_behind_tls(world: World, tmp_path: Path) -> None:
    """A real `serve --http` process with TLS of its own, a public URL on loopback, and the test-only
    allowance: discover, register (a metadata document, then registration), approve, exchange, call,
    refresh, revoke, over real sockets."""
    (tmp_path / "hub").mkdir()
    hub_cert, hub_key = self_signed(tmp_path / "hub")
    port = free_port()
    issuer = f"https://localhost:{port}"
    flags = ["--public-url", issuer, "--tls-cert", str(hub_cert), "--tls-key", str(hub_key)]
    async with doc_server(tmp_path) as (docs, docs_ca):
        env = {"AGENT_ROOMS_OAUTH_ALLOW_LOOPBACK_CIMD_FOR_TESTS": str(docs_ca)}
        async with (
            serve_http(world.settings.home, *flags, env=env, port=port, base="https://localhost"),
            httpx2.AsyncClient(verify=ssl.create_default_context(cafile=str(hub_cert)), base_url=issuer) as http,
        ):
            challenge = (await http.post("/mcp", json={})).headers["www-authenticate"]
            assert challenge == f'Bearer resource_metadata="{issuer}/.well-known/oauth-protected-resource/mcp"'
            server = (await http.get("/.well-known/oauth-authorization-server")).json()
            assert server["issuer"] == issuer and server["client_id_metadata_document_supported"] is True
            for registration in ("document", "dcr"):
                f = Flow(world, http, issuer=issuer)
                if registration == "document":
                    f.client_id = docs.document()
                pair = await f.tokens()
                assert (await whoami(http, pair["access_token"], issuer))["agent"]["handle"] == "alice-claude"
                second = (await f.refresh(pair["refresh_token"])).json()
                assert (await whoami(http, second["access_token"], issuer))["agent"]["handle"] == "alice-claude"
                form = {"token": second["access_token"], "client_id": f.client_id}
                assert (await http.post("/revoke", content=urlencode(form), headers=FORM)).status_code == 200
                assert await mcp_status(http, second["access_token"]) == 401
                assert oauth_error(await f.refresh(second["refresh_token"])) == "invalid_grant"
