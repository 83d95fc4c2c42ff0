"""The Claude.ai connector's OAuth 2.1 (DESIGN §9.4, invariants 32, 97, 108): which scopes an OAuth client may
hold, which redirect URIs and metadata-document URLs and addresses are allowed, how a refresh token is treated."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from enum import StrEnum
from urllib.parse import urlsplit

from agent_rooms_mcp.errors import invalid
from agent_rooms_mcp.principals import Scope

# What an OAuth client may ever hold: never `consent`, `manage` or `invoke` (invariant 32).
OAUTH_SCOPES = frozenset({Scope.READ, Scope.POST, Scope.TASK})
# Claude's callbacks, matched exactly; every other non-loopback redirect is refused whatever a client lists.
CLAUDE_CALLBACKS = frozenset({"https://claude.ai/api/mcp/auth_callback", "https://claude.com/api/mcp/auth_callback"})
OAUTH_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
_LOOPBACK_AUTHORITY = re.compile(r"(?P<host>localhost|127\.0\.0\.1|\[::1\])(?::(?P<port>[0-9]{1,5}))?")
# A DNS name as the letter-digit-hyphen rule spells it (RFC 1123 §2.1): labels of 1-63 lowercase ASCII letters,
# digits and inner hyphens, joined by single dots, no trailing dot. An IDN is in its `xn--` form.
_DNS_NAME = re.compile(r"(?=.{1,253}\Z)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")
# A name whose last label is a number, decimal or 0x hex, is an IPv4 address to inet_aton and to the WHATWG URL
# parser (`0x1010101`, `16843009`, `1.1.1.1`, `0177.1`): no top-level domain is numeric.
_NUMERIC_LAST_LABEL = re.compile(r"(?:\A|\.)(?:[0-9]+|0x[0-9a-f]*)\Z")


def _loopback_redirect(uri: str) -> tuple[str, str] | None:
    """(host, path) of a loopback `http` redirect URI (RFC 8252 §7.3), or None for anything else: userinfo,
    a query or a fragment make it something else."""
    parts = urlsplit(uri)
    if parts.scheme != "http" or parts.username or parts.password or parts.query or parts.fragment:
        return None
    # The whole authority is a loopback host and at most a numeric port: `[::1]evil.example` or a host
    # glued to anything else is not read as loopback, whatever a lenient parser would make of it.
    authority = _LOOPBACK_AUTHORITY.fullmatch(parts.netloc.lower())
    if authority is None or (authority["port"] is not None and not 0 < int(authority["port"]) < 65536):
        return None
    host = authority["host"]
    return host, parts.path or "/"


def oauth_redirect_registrable(uri: str) -> bool:
    """A redirect URI a client may register: one of Claude's callbacks, or a loopback one (DESIGN §9.4)."""
    return uri in CLAUDE_CALLBACKS or _loopback_redirect(uri) is not None


def oauth_redirect_matches(presented: str, registered: Iterable[str]) -> bool:
    """Whether `presented` is one of the client's registered redirect URIs: byte for byte for Claude's
    callbacks; for loopback the same host and path with any port (Claude Code picks a random one)."""
    if presented in CLAUDE_CALLBACKS:
        return presented in registered
    loopback = _loopback_redirect(presented)
    return loopback is not None and any(_loopback_redirect(r) == loopback for r in registered)


def oauth_requested_scopes(text: str | None) -> frozenset[Scope] | None:
    """The scopes an authorization request asks for (space-separated; none given: all an OAuth client may
    hold), or None when it names any other (then `invalid_scope`)."""
    names = (text or "").split()
    if not names:
        return OAUTH_SCOPES
    if not set(names) <= {s.value for s in OAUTH_SCOPES}:
        return None
    return frozenset(Scope(n) for n in names)


def oauth_approvable_scopes(chosen: frozenset[Scope], requested: frozenset[Scope], agent: frozenset[Scope]) -> None:
    """The owner approves scopes the client asked for, that the agent holds, and that an OAuth client may
    hold at all: INVALID_ARGUMENT naming the first that is not."""
    if not chosen:
        raise invalid("scopes", "choose at least one of the scopes the client asked for")
    for scope in sorted(chosen):
        if scope not in OAUTH_SCOPES:
            raise invalid("scopes", f"{scope} is never given to an OAuth client (only read, post, task)")
        if scope not in requested:
            raise invalid("scopes", f"the client did not ask for {scope}")
        if scope not in agent:
            raise invalid("scopes", f"the agent does not hold {scope}; give it first, or choose fewer")


def oauth_held_scopes(agent_held: frozenset[Scope], granted: frozenset[Scope]) -> frozenset[Scope]:
    """What an OAuth access token may do at this call: what its agent holds now, within what was granted,
    and never more than an OAuth client may hold (DESIGN §9.4)."""
    return agent_held & granted & OAUTH_SCOPES


class RefreshUse(StrEnum):
    FRESH = "fresh"  # the family's current refresh token: rotate it
    GRACE = "grace"  # the one just replaced, within the grace: the same new pair again
    REUSE = "reuse"  # replaced earlier, or its pair was already handed out twice: revoke the family


def oauth_refresh_use(replaced_at: str | None, has_successor: bool, now: str, grace_ends: str | None) -> RefreshUse:
    """How a presented refresh token is treated (DESIGN §9.4): `grace_ends` is `replaced_at` + 30 s, ISO like
    `now`, so they compare as strings."""
    if replaced_at is None:
        return RefreshUse.FRESH
    if has_successor and grace_ends is not None and now < grace_ends:
        return RefreshUse.GRACE
    return RefreshUse.REUSE


def cimd_url_problem(url: str) -> str | None:
    """Why `url` cannot be a client ID metadata document's address (DESIGN §9.4), or None: https, a host that is
    a plain ASCII DNS name, a path beyond `/`, and no userinfo, query or fragment."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        return "must be an https URL"
    if "@" in parts.netloc:
        return "must not carry userinfo"
    if parts.query or parts.fragment or "?" in url or "#" in url:
        return "must not carry a query or fragment"
    if parts.path in ("", "/"):
        return "must have a path"
    try:
        parts.port  # noqa: B018 - a port that is not a number is refused
    except ValueError:
        return "has a port that is not a number"
    return _cimd_host_problem(parts.netloc.rpartition(":")[0] if parts.port is not None else parts.netloc)


def _cimd_host_problem(host: str) -> str | None:
    """Why the host, as the URL spells it, is not a plain DNS name, or None. A client id names a domain
    (Claude's is on claude.ai), and the fetch budget counts by registrable domain (cimd.registrable_domain): a
    host any resolver or socket would read as another spelling of one domain or address (Unicode dots, fullwidth
    letters, upper case, a trailing dot, an IP literal in any of its forms) would otherwise get a budget of its
    own for every spelling."""
    shown = host.encode("ascii", "backslashreplace").decode()
    if _DNS_NAME.fullmatch(host) is None:
        return (
            f"host {shown} must be a DNS name in lowercase ASCII: letters, digits, hyphens, dots between labels "
            "(an IDN in its xn-- form), no trailing dot, not an IP address"
        )
    if _NUMERIC_LAST_LABEL.search(host) is not None:
        return f"host {shown} is an IP address; a client id must name a domain"
    return None


# 100.64.0.0/10 (RFC 6598, carrier-grade NAT): neither private nor global to `ipaddress`, and as internal.
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


def cimd_address_refused(address: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_loopback: bool) -> bool:
    """Whether the hub must not fetch a metadata document from `address` (invariant 108): anything but a public
    unicast address. `allow_loopback` is for the test suite's own HTTPS server only."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return not allow_loopback
    return (
        address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or address.is_reserved
        or address in _CGNAT
        or not address.is_global
    )
