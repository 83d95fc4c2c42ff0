"""A sandboxed run's egress proxy: the supervisor's side of the sandbox's one way out (DESIGN §5, Network).

The sandbox has a network namespace of its own with only `lo`; its `egress-relay` (wake/relay.py) carries
each TCP connection of the CLI to this proxy's Unix socket in the run directory, the one socket besides the
bridge's that the sandbox holds. The proxy speaks just enough HTTP for what CLIs send to a proxy:

- `CONNECT host:port` (HTTPS and WebSockets over TLS): a tunnel, after the answer 200;
- an absolute-URI request, `GET http://127.0.0.1:8080/v1/... HTTP/1.1` (a model API on the owner's own
  loopback, such as a local model server or a test's fake): forwarded in origin form, one request per
  connection;

each only when (host, port) is on the run's list exactly (policy.allowed_hosts): a listed name is resolved
here, by the proxy, never taken as an address from the client; an IP literal passes only when the list
has that literal. Anything else is answered 403 and logged with its host and port alone: never a header,
a path or a body, which may carry the CLI's credentials.

Bounded by named limits: the request head's size and time to arrive, connections at once, a tunnel's idle
time and the time to connect upstream (Limits.egress_*).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import structlog
from anyio.abc import SocketListener, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from agent_rooms_mcp.settings import DEFAULT_LIMITS, Limits
from agent_rooms_mcp.sockets import bind_private_unix
from agent_rooms_mcp.wake.relay import SOCKET_NAME, splice

__all__ = [
    "SOCKET_NAME",
    "EgressProxy",
    "canonical_host",
    "egress_proxy",
    "loopback_listeners",
    "network_namespace_problem",
]

log = structlog.get_logger("agent_rooms_mcp.wake.egress")

_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")
# Hop-by-hop headers of the client's hop to us, never passed on; the proxy's own credentials above all.
_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "upgrade"})


class BadRequest(Exception):
    """The head is not a proxy request we serve; the message is safe to log (no header values)."""


def canonical_host(host: str) -> str:
    """One spelling per host: names lower-cased, IP literals in their canonical text (`::1`, not `0::1`).

    Raises BadRequest for anything that is neither a DNS name nor an IP literal.
    """
    try:
        return str(ip_address(host))
    except ValueError:
        pass
    name = host.lower()
    if not _NAME.fullmatch(name):
        raise BadRequest("the host is not a DNS name or an IP address")
    return name


@dataclass(frozen=True, slots=True)
class Request:
    connect: bool
    host: str
    port: int
    head: bytes  # for a forwarded request: its head as the upstream gets it; for CONNECT unused


def _authority(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise BadRequest("expected [ADDRESS]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise BadRequest("expected HOST:PORT")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise BadRequest("the port is not 1..65535")
    return canonical_host(host), int(port_text)


def parse_head(head: bytes) -> Request:
    """A request head (through its blank line) as a proxy request, or BadRequest."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("the request head is not ASCII") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest("the request line is not METHOD TARGET HTTP/1.x")
    method, target, version = parts
    if method == "CONNECT":
        host, port = _authority(target)
        return Request(True, host, port, b"")
    if not target.startswith("http://"):
        raise BadRequest("expected CONNECT HOST:PORT, or an absolute http:// URI")
    url = urlsplit(target)
    if "@" in url.netloc or not url.netloc:
        raise BadRequest("the URI has no host, or has user information")
    try:
        host, port = _authority(url.netloc) if url.port is not None else (canonical_host(url.hostname or ""), 80)
    except ValueError:
        raise BadRequest("the URI's port is not 1..65535") from None
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    headers = [line for line in lines[1:] if line and line.split(":", 1)[0].strip().lower() not in _HOP]
    forwarded = [f"{method} {path} {version}", *headers, "Connection: close", "", ""]
    return Request(False, host, port, "\r\n".join(forwarded).encode("ascii"))


def _answer(status: int, reason: str, body: str) -> bytes:
    data = body.encode()
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(data)}\r\n"
    return f"{head}Connection: close\r\n\r\n".encode() + data


@dataclass(slots=True)
class EgressProxy:
    """A running proxy. `path` is its socket (0600): chown it to a run-as user before that user's run."""

    path: Path
    allowed: frozenset[tuple[str, int]]
    limits: Limits
    open: int = 0

    def allows(self, host: str, port: int) -> bool:
        return (host, port) in self.allowed

    async def handle(self, client: SocketStream) -> None:
        async with client:
            if self.open >= self.limits.egress_connections:
                log.warning("egress.refused", reason="too_many_connections", limit=self.limits.egress_connections)
                with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    await client.send(_answer(503, "Service Unavailable", "too many connections at once\n"))
                return
            self.open += 1
            try:
                await self._serve(client)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError):
                pass  # the client went away mid-answer: nothing to tell it
            except Exception as e:
                # One connection's surprise must not end the listener's task group, and with it every other
                # connection of the run: logged by its type alone (its text could quote what was sent).
                log.error("egress.failed", error=type(e).__name__)
            finally:
                self.open -= 1

    async def _serve(self, client: SocketStream) -> None:
        rx = BufferedByteReceiveStream(client)
        limits = self.limits
        head = b""
        with anyio.move_on_after(limits.egress_head_timeout_s) as waited:
            try:
                head = await rx.receive_until(b"\r\n\r\n", limits.egress_head_bytes)
                # receive_until stops reading at the limit but returns a head that arrived whole in one read
                # past it (at most a read's size more): the limit is ours to apply.
                if len(head) > limits.egress_head_bytes:
                    raise anyio.DelimiterNotFound(limits.egress_head_bytes)
            except anyio.DelimiterNotFound:
                log.warning("egress.refused", reason="head_too_large", limit=limits.egress_head_bytes)
                await client.send(_answer(431, "Request Header Fields Too Large", "the request head is too large\n"))
                return
            except anyio.IncompleteRead:
                return
        if waited.cancelled_caught:
            log.warning("egress.refused", reason="head_timeout", limit=limits.egress_head_timeout_s)
            await client.send(_answer(408, "Request Timeout", "the request head did not arrive in time\n"))
            return
        try:
            request = parse_head(head + b"\r\n\r\n")
        except BadRequest as e:
            log.warning("egress.refused", reason="bad_request", problem=str(e))
            await client.send(_answer(400, "Bad Request", f"{e}\n"))
            return
        where = f"[{request.host}]:{request.port}" if ":" in request.host else f"{request.host}:{request.port}"
        if not self.allows(request.host, request.port):
            log.warning("egress.refused", reason="not_allowed", host=request.host, port=request.port)
            body = f"{where} is not a destination of this run: a sandboxed run reaches its model API and the hub\n"
            await client.send(_answer(403, "Forbidden", body))
            return
        try:
            with anyio.fail_after(limits.egress_connect_timeout_s):
                upstream = await anyio.connect_tcp(request.host, request.port)
        except (OSError, TimeoutError) as e:
            log.warning("egress.upstream_failed", host=request.host, port=request.port, error=type(e).__name__)
            await client.send(_answer(502, "Bad Gateway", f"{where} could not be reached\n"))
            return
        log.info("egress.open", host=request.host, port=request.port, connect=request.connect)
        async with upstream:
            if request.connect:
                await client.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                await upstream.send(request.head)
            await splice(rx, client, upstream, limits.egress_idle_s)


@asynccontextmanager
async def egress_proxy(
    socket_path: Path, allowed: Collection[tuple[str, int]], limits: Limits = DEFAULT_LIMITS
) -> AsyncIterator[EgressProxy]:
    """Serve the proxy on `socket_path` (0600, replacing a socket left there) until the block ends.

    `allowed` is the run's list of (host, port), as policy.allowed_hosts gives it; each host is compared
    in its canonical spelling (canonical_host).
    """
    proxy = EgressProxy(socket_path, frozenset((canonical_host(h), p) for h, p in allowed), limits)
    listener = await SocketListener.from_socket(bind_private_unix(socket_path, limits.egress_connections))
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, proxy.handle, tg)
            try:
                yield proxy
            finally:
                tg.cancel_scope.cancel()
    finally:
        await listener.aclose()
        with suppress(FileNotFoundError):
            socket_path.unlink()


# Where the host gives no network namespace (doctor, DESIGN §5): a sandboxed run then shares the host's
# network, and the owner should know which local services it could reach.

PROBE_TIMEOUT_S = 30.0
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


def network_namespace_problem(bwrap: str | None) -> str | None:
    """Why bwrap cannot give a sandbox a network namespace of its own here, or None when it can."""
    if bwrap is None:
        return "bwrap is not installed"
    try:
        done = subprocess.run(
            [bwrap, "--ro-bind", "/", "/", "--unshare-net", "--", "true"],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bwrap --unshare-net did not run: {e}"
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return f"bwrap --unshare-net failed: {said[:200]}"
    return None


def _proc_address(text: str) -> IPv4Address | IPv6Address:
    """/proc/net/tcp{,6} print addresses as 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(text)
    return ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))


def _reachable_from_loopback(address: IPv4Address | IPv6Address) -> bool:
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


def loopback_listeners(proc_net: Path = Path("/proc/net")) -> list[str] | None:
    """`127.0.0.1:5432`, `[::1]:631`, `0.0.0.0:22`...: the TCP ports listening on this host's loopback or on
    every address, sorted by port. None where /proc/net cannot be read (not Linux)."""
    found: set[tuple[int, str]] = set()
    readable = False
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc_net / name).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] != _LISTEN:
                continue
            address_text, _, port_text = fields[1].partition(":")
            try:
                address, port = _proc_address(address_text), int(port_text, 16)
            except ValueError:
                continue
            if _reachable_from_loopback(address):
                found.add((port, f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"))
    return [where for _, where in sorted(found)] if readable else None
