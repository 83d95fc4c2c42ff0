"""Client ID metadata documents (DESIGN §9.4, invariant 108): the hub fetches a client's metadata from the URL
that is its `client_id`, which anyone on the internet chooses. Fetching a URL a stranger names is a request
forgery risk (SSRF): the rules below keep it to public web servers and small JSON documents.

- the URL: https, a host that is a plain ASCII DNS name (never an IP address), a path, no userinfo, query or
  fragment (policy.cimd_url_problem);
- DNS is resolved once, and every address it gives must be public and not the hub's own; the connection
  goes to one of those very addresses, and the connected socket's peer is checked again, so a name that
  resolves differently a moment later (DNS rebinding) changes nothing;
- no redirects, one deadline for the whole fetch, a byte cap, `application/json` only;
- the answer, or the failure, is cached (max-age clamped; failures briefly), and fetches are counted per
  registrable domain and in all, so a flood of made-up client ids cannot make the hub a scanner: every name
  under `evil.example` (`a1.evil.example`, `a2.evil.example`, ...) spends the one budget of `evil.example`.

The cache and the counts live in this process's memory. A restart forgets them, which buys a caller nothing it
could not have by waiting: the counts cover one minute, and a forgotten document is fetched again under the
same budget. Nobody outside can restart the hub.

No library does this on the server side. HTTP/1.1 framing is h11's; the socket, TLS and every check are ours.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import structlog
from anyio.abc import SocketAttribute

from agent_rooms_mcp import policy
from agent_rooms_mcp.settings import Limits

if TYPE_CHECKING:
    from publicsuffixlist import PublicSuffixList

log = structlog.get_logger("agent_rooms_mcp.cimd")

_MAX_AGE_RE = re.compile(r"(?:^|[,\s])max-age\s*=\s*(\d+)", re.IGNORECASE)
_HEAD_BYTES = 16 * 1024
_MINUTE = 60.0
_NAME_CHARS = 100


@functools.cache
def _suffixes() -> PublicSuffixList:
    """The ICANN section of the Public Suffix List the package bundles (read from its file, never fetched). Its
    private section (github.io, trycloudflare.com, ...) is left out on purpose: the budget spares the servers a
    fetch goes to, and every name under such a suffix is served by the one operator who registered it. Read
    once, on first need: it takes about 0.35 s, which no CLI command should pay (nor its import)."""
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList(only_icann=True)


def registrable_domain(host: str) -> str:
    """What the fetch budget counts against: the registrable domain (eTLD+1) of `host`, `evil.example` for
    `a1.evil.example`; an IP address, or a name that is itself a public suffix, counts as itself. The host is
    one policy.cimd_url_problem let through, a plain ASCII DNS name: one spelling for one name, so no spelling
    of a domain has a budget of its own."""
    host = host.lower().rstrip(".")
    if _ip(host) is not None:
        return host
    return _suffixes().privatesuffix(host) or host


# (host, port) -> the addresses DNS gives, as text.
Resolver = Callable[[str, int], Awaitable[list[str]]]


class DocumentRefused(Exception):
    """Why a client's metadata document is not used; the message names the rule, never the document's text."""


@dataclass(frozen=True, slots=True)
class ClientDocument:
    client_id: str
    client_name: str
    redirect_uris: tuple[str, ...]
    application_type: str


class ClientDocuments:
    """Fetches, checks and caches metadata documents; one per serving hub."""

    def __init__(self, limits: Limits, test_ca: Path | None = None, resolve: Resolver | None = None) -> None:
        self._limits = limits
        # DNS; a test gives a resolver of its own to play a rebinding name server.
        self._resolve: Resolver = resolve or _getaddrinfo
        # Only the test suite sets this (settings.py): loopback allowed, and its own CA trusted.
        self._allow_loopback = test_ca is not None
        self._test_ca = test_ca
        self._cache: dict[str, tuple[float, ClientDocument | DocumentRefused]] = {}
        self._domains: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()

    @functools.cached_property
    def _tls(self) -> ssl.SSLContext:
        """Made at the first fetch, not with the hub: loading the system's CA certificates costs about 250 M
        instructions (6 % of a stdio session's CPU, and of every CLI command's), and most hubs never fetch one."""
        tls = ssl.create_default_context()
        if self._test_ca is not None:
            tls.load_verify_locations(cafile=str(self._test_ca))
        return tls

    async def get(self, url: str, own_host: str | None) -> ClientDocument:
        """The checked document at `url`, or DocumentRefused. `own_host`: the hub's public host name, whose
        addresses are never fetched from."""
        if (problem := policy.cimd_url_problem(url)) is not None:
            raise DocumentRefused(f"client_id {problem}")
        now = anyio.current_time()
        cached = self._cache.get(url)
        if cached is not None and cached[0] > now:
            if isinstance(cached[1], DocumentRefused):
                raise cached[1]
            return cached[1]
        host = (urlsplit(url).hostname or "").lower()
        if _suffixes.cache_info().currsize == 0:  # the first fetch reads the list, off the event loop
            await anyio.to_thread.run_sync(_suffixes)
        if not self._admit(registrable_domain(host), now):
            # Not cached: the limit says nothing about the document.
            raise DocumentRefused("too many metadata document fetches; try again in a minute")
        limits = self._limits
        try:
            document, max_age = await self._fetch(url, own_host)
        except DocumentRefused as refused:
            log.info("cimd.refused", host=host, reason=str(refused))
            self._remember(url, now + limits.oauth_cimd_failure_cache_s, refused)
            raise
        keep = min(max(max_age or 0, limits.oauth_cimd_cache_min_s), limits.oauth_cimd_cache_max_s)
        self._remember(url, now + keep, document)
        return document

    def _remember(self, url: str, until: float, value: ClientDocument | DocumentRefused) -> None:
        if len(self._cache) >= 4096:  # bounded: the oldest entry goes first
            del self._cache[next(iter(self._cache))]
        self._cache[url] = (until, value)

    def _admit(self, domain: str, now: float) -> bool:
        for q in (self._all, *self._domains.values()):
            while q and q[0] <= now - _MINUTE:
                q.popleft()
        self._domains = {d: q for d, q in self._domains.items() if q}
        mine = self._domains.setdefault(domain, deque())
        limits = self._limits
        if (
            len(mine) >= limits.oauth_cimd_fetches_per_domain_per_min
            or len(self._all) >= limits.oauth_cimd_fetches_per_min
        ):
            return False
        mine.append(now)
        self._all.append(now)
        return True

    async def _fetch(self, url: str, own_host: str | None) -> tuple[ClientDocument, int | None]:
        import h11  # here and in _exchange, not at the top: a hub that never fetches never loads it (DESIGN §11)

        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or 443
        try:
            with anyio.fail_after(self._limits.oauth_cimd_timeout_s):
                address = await self._address(host, port, own_host)
                stream = await anyio.connect_tcp(str(address), port, tls=True, ssl_context=self._tls, tls_hostname=host)
                try:
                    # Checked again on the socket actually connected: what was resolved is not evidence.
                    peer = _ip(stream.extra(SocketAttribute.remote_address)[0])
                    if peer is None or self._refused(peer) or peer in await self._own(own_host):
                        raise DocumentRefused("its host is not a public address")
                    raw, max_age = await self._exchange(stream, parts.netloc, parts.path)
                finally:
                    # The document is read whole: no TLS close_notify is waited for (many servers never send it).
                    await anyio.aclose_forcefully(stream)
        except TimeoutError:
            raise DocumentRefused(f"not fetched within {self._limits.oauth_cimd_timeout_s:g} s") from None
        except (OSError, ssl.SSLError, anyio.BrokenResourceError, anyio.EndOfStream, h11.ProtocolError) as e:
            raise DocumentRefused(f"could not be fetched ({type(e).__name__})") from None
        return _document(raw, url), max_age

    async def _address(
        self, host: str, port: int, own_host: str | None
    ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """Resolve once; every address must be allowed, and the first is the one connected to."""
        addresses = [a for a in (_ip(text) for text in await self._resolve(host, port)) if a is not None]
        if not addresses:
            raise DocumentRefused("its host has no address")
        own = await self._own(own_host)
        if any(self._refused(a) or a in own for a in addresses):
            raise DocumentRefused("its host is not a public address")
        return addresses[0]

    async def _own(self, own_host: str | None) -> frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """The hub's own public addresses: a document must not come from the hub itself (its own endpoints are
        not for a stranger to make it call). Empty under the test-only loopback allowance, where they are one."""
        if own_host is None or self._allow_loopback:
            return frozenset()
        try:
            found = await self._resolve(own_host.strip("[]"), 443)
        except OSError:
            return frozenset()
        return frozenset(a for a in (_ip(text) for text in found) if a is not None)

    def _refused(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return policy.cimd_address_refused(address, allow_loopback=self._allow_loopback)

    async def _exchange(self, stream: Any, netloc: str, path: str) -> tuple[bytes, int | None]:
        import h11

        cap = self._limits.oauth_cimd_bytes
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_HEAD_BYTES)
        request = h11.Request(
            method="GET",
            target=path,
            headers=[("Host", netloc), ("Accept", "application/json"), ("User-Agent", "agent-rooms-mcp"),
                     ("Connection", "close")],
        )  # fmt: skip
        await stream.send(conn.send(request) + (conn.send(h11.EndOfMessage()) or b""))
        body = bytearray()
        max_age: int | None = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    chunk = await stream.receive(8192)
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    chunk = b""
                conn.receive_data(chunk)
            elif isinstance(event, h11.Response):
                if event.status_code != 200:
                    # A redirect included: following one would let the document's host send the hub anywhere.
                    raise DocumentRefused(f"answered HTTP {event.status_code}, not 200 (redirects are not followed)")
                headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
                if headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
                    raise DocumentRefused("is not application/json")
                length = headers.get("content-length")
                if length is not None and (not length.isdigit() or int(length) > cap):
                    raise DocumentRefused(f"is larger than {cap} bytes")
                if (found := _MAX_AGE_RE.search(headers.get("cache-control", ""))) is not None:
                    max_age = int(found.group(1))
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > cap:
                    raise DocumentRefused(f"is larger than {cap} bytes")
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body), max_age
            else:  # ConnectionClosed before the end of the message, or anything unexpected
                raise DocumentRefused("ended before its end")


async def _getaddrinfo(host: str, port: int) -> list[str]:
    return [str(info[4][0]) for info in await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _document(raw: bytes, url: str) -> ClientDocument:
    """The document's fields, checked: it must name itself (`client_id` equal to its URL, byte for byte), a name,
    redirect URIs DESIGN §9.4 allows, and no client secret."""
    try:
        doc = json.loads(raw)
    except ValueError:
        raise DocumentRefused("is not JSON") from None
    if not isinstance(doc, dict):
        raise DocumentRefused("is not a JSON object")
    if doc.get("client_id") != url:
        raise DocumentRefused("names another client_id than its own URL")
    name = doc.get("client_name")
    if not isinstance(name, str) or not name.strip() or len(name) > _NAME_CHARS:
        raise DocumentRefused(f"needs a client_name of 1-{_NAME_CHARS} characters")
    if doc.get("token_endpoint_auth_method") != "none":
        raise DocumentRefused("must say token_endpoint_auth_method: none")
    uris = doc.get("redirect_uris")
    if not isinstance(uris, list) or not uris or not all(isinstance(u, str) for u in uris):
        raise DocumentRefused("needs redirect_uris")
    allowed = tuple(u for u in uris if policy.oauth_redirect_registrable(u))
    if not allowed:
        raise DocumentRefused("lists no redirect URI this hub allows (Claude's callbacks or loopback)")
    application_type = doc.get("application_type", "web")
    if application_type not in ("web", "native"):
        raise DocumentRefused("has an application_type other than web or native")
    return ClientDocument(url, name.strip(), allowed, application_type)
