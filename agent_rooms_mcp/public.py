"""Public mode (DESIGN §9.3): what `serve --http` may bind, which Host and Origin it answers, which peers it
serves and whose forwarded headers it believes. Pure functions of the flags and a request's headers: the
CLI checks a bind here before anything listens, and http.py asks here on every request.

Why the peer matters: the failed-authentication limit (auth/failures.py) counts per client address. Behind a
proxy every request comes from the proxy, so the client's address has to come from the proxy's
`X-Forwarded-For` or `Forwarded` header; but a header is only as good as whoever wrote it, so it counts
only when the connection comes from a proxy the operator named. Anyone else could write any address there
and start afresh against the limit with each request.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class BindRefused(ValueError):
    """A bind or flag combination that would expose the hub unsafely; the message names the flag that fixes it."""


@dataclass(frozen=True, slots=True)
class Exposure:
    """How this server is reached. The default is today's loopback-only hub."""

    # (scheme, host) of the public URL, host as it appears in a Host header ("hub.example", "[2001:db8::1]").
    public: tuple[str, str] | None = None
    # Peers whose forwarded headers count; when not empty, the only peers served.
    proxies: frozenset[Address] = frozenset()
    # The public URL's scheme://host[:port], as given (lowercased): the OAuth issuer (DESIGN §9.4). Derived
    # from `public` when not given.
    public_origin: str | None = None

    @property
    def issuer(self) -> str | None:
        """The OAuth issuer, in public mode only: the public URL."""
        if self.public is None:
            return None
        return self.public_origin or f"{self.public[0]}://{self.public[1]}"

    @property
    def resource(self) -> str | None:
        """The canonical MCP resource (RFC 8707) OAuth access tokens are bound to: the public URL plus /mcp."""
        issuer = self.issuer
        return None if issuer is None else issuer + "/mcp"

    @property
    def hosts(self) -> tuple[str, ...]:
        """Host header values (without port) this server answers."""
        return LOOPBACK_HOSTS if self.public is None else (*LOOPBACK_HOSTS, self.public[1])

    @property
    def origins(self) -> frozenset[tuple[str, str]]:
        """(scheme, host) of the Origins a browser may call from: loopback over http, and the public URL."""
        local = {("http", h) for h in LOOPBACK_HOSTS}
        return frozenset(local if self.public is None else {*local, self.public})

    def peer_allowed(self, peer: str | None) -> bool:
        """Once a proxy is named, only it may connect: a request straight from elsewhere skipped the TLS and
        the limits the proxy applies."""
        return not self.proxies or _ip(peer) in self.proxies

    def refusal(self, peer: str | None, headers: dict[str, str]) -> tuple[int, str] | None:
        """Why a request may not be served at all, as (HTTP status, code), before anything reads its body:
        the same rule in front of /mcp and the owner API."""
        if not self.peer_allowed(peer):
            # Public mode behind a named proxy: a request straight from elsewhere skipped its TLS (DESIGN §9.3).
            return 403, "FORBIDDEN_PEER"
        if host_of(headers.get("host", "")).lower() not in self.hosts:
            return 421, "INVALID_HOST"
        origin = headers.get("origin")
        if origin is not None:
            parts = urlsplit(origin)
            if (parts.scheme, host_of(parts.netloc).lower()) not in self.origins:
                return 403, "FORBIDDEN_ORIGIN"
        return None

    def client_address(self, peer: str | None, headers: dict[str, str]) -> str | None:
        """The address to count a request against: the peer's, or, when the peer is a named proxy, the first
        address the proxies did not add themselves (read from the right, the end a proxy appends to)."""
        if not self.proxies or _ip(peer) not in self.proxies:
            return peer
        hops = _forwarded_for(headers)
        for hop in reversed(hops):
            address = _ip(hop)
            if address is None:
                return hop  # an obfuscated or unknown hop: counted as its own source, never as the proxy
            if address not in self.proxies:
                return str(address)
        return peer


def exposure_for(
    host: str, public_url: str | None, trust_proxy: str | None, tls: tuple[str | None, str | None]
) -> Exposure:
    """Check `serve --http`'s flags (DESIGN §9.3, invariant 20) and return the exposure they describe."""
    cert, key = tls
    if (cert is None) != (key is None):
        raise BindRefused("--tls-cert and --tls-key go together: give both files, or neither")
    proxies = frozenset(_proxy(a) for a in (trust_proxy or "").split(",") if a.strip())
    if trust_proxy is not None and not proxies:
        raise BindRefused("--trust-proxy needs at least one address (e.g. --trust-proxy 127.0.0.1)")
    public = None if public_url is None else _public(public_url)
    origin = None if public_url is None else "https://" + urlsplit(public_url).netloc.lower()
    if not is_loopback(host):
        if public is None:
            raise BindRefused(
                f"refusing to bind {host}: beyond loopback the hub needs --public-url https://HUB (the address"
                " clients use), and TLS: --tls-cert/--tls-key, or --trust-proxy naming the TLS proxy in front"
            )
        if cert is None and not proxies:
            raise BindRefused(
                f"refusing to bind {host} without TLS: give --tls-cert F --tls-key F, or put a TLS proxy in"
                " front and name it with --trust-proxy ADDR (see examples/Caddyfile)"
            )
    return Exposure(public, proxies, origin)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    address = _ip(host.strip("[]"))
    return address is not None and address.is_loopback


def host_of(value: str) -> str:
    """A Host header or URL netloc without its port: "[::1]:8765" -> "[::1]", "localhost:8765" -> "localhost"."""
    if value.startswith("["):
        return value.split("]", 1)[0] + "]"
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _public(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise BindRefused(f"--public-url {url}: give the https:// address clients reach the hub at")
    if parts.username or parts.password or parts.query or parts.fragment or parts.path not in ("", "/", "/mcp"):
        raise BindRefused(f"--public-url {url}: give only scheme, host and port (https://hub.example.com)")
    return parts.scheme, host_of(parts.netloc).lower()


def _proxy(text: str) -> Address:
    address = _ip(text.strip())
    if address is None:
        raise BindRefused(f"--trust-proxy {text.strip()}: give the proxy's IP address, not a name")
    if not (address.is_loopback or address.is_private):
        raise BindRefused(
            f"--trust-proxy {address}: the proxy must be on a loopback or private address; a proxy across"
            " the internet would reach the hub in plaintext"
        )
    return address


def _ip(text: str | None) -> Address | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _forwarded_for(headers: dict[str, str]) -> list[str]:
    """The client hops a proxy reports, oldest first: `X-Forwarded-For`, or RFC 7239 `Forwarded: for=` when
    there is none. X-Forwarded-For comes first because it is what Caddy and nginx set (replacing or appending
    to the client's own): Caddy passes a client's `Forwarded` header through untouched, so preferring it
    would let any client choose its address."""
    xff = [h.strip() for h in headers.get("x-forwarded-for", "").split(",") if h.strip()]
    if xff:
        return xff
    hops = []
    for element in headers.get("forwarded", "").split(","):
        for pair in element.split(";"):
            name, _, value = pair.strip().partition("=")
            if name.lower() == "for":
                value = value.strip().strip('"')
                if value.startswith("["):
                    value = value[1:].split("]", 1)[0]  # "[2001:db8::1]:4711" -> "2001:db8::1"
                elif value.count(":") == 1:
                    value = value.split(":", 1)[0]
                hops.append(value)
    return hops
