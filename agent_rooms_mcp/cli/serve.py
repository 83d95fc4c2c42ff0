"""`agent-rooms serve`: the hub over stdio or HTTP (DESIGN §9), and the flags that say how HTTP is reached.

Its own module, importing little at the top: a stdio client launches `agent-rooms serve` for every session, so
what this module and its imports load is paid at each cold start (DESIGN §11). The HTTP stack is imported only
under `--http`; the stdio transport only without it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import click

from agent_rooms_mcp.cli.common import Failed, guarded, settings
from agent_rooms_mcp.errors import ErrorCode
from agent_rooms_mcp.hub import check_home
from agent_rooms_mcp.logs import configure_logging
from agent_rooms_mcp.public import BindRefused, exposure_for
from agent_rooms_mcp.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def exposure_options(*, files_must_exist: bool) -> Callable[[F], F]:
    """The flags that say how `serve --http` is reached (DESIGN §9.3): `serve` takes them, `doctor` judges
    them, one definition for both. Doctor reports a missing TLS file as a check, so it need not exist."""
    tls = click.Path(exists=files_must_exist, dir_okay=False)

    def apply(fn: F) -> F:
        for option in (
            click.option("--tls-key", type=tls, default=None, help="Serve TLS: key."),
            click.option("--tls-cert", type=tls, default=None, help="Serve TLS: cert."),
            click.option(
                "--trust-proxy", default=None, help="ADDR[,ADDR]: the TLS proxy in front; only it may connect."
            ),
            click.option(
                "--public-url", default=None, help="The https:// address clients reach the hub at (public mode)."
            ),
            click.option("--host", default="127.0.0.1", show_default=True),
        ):
            fn = option(fn)
        return fn

    return apply


@click.command()
@click.option("--http", "use_http", is_flag=True, help="Serve streamable HTTP at /mcp instead of stdio.")
@exposure_options(files_must_exist=True)
@click.option("--port", default=8765, show_default=True, type=click.IntRange(1, 65535))
def serve(
    use_http: bool,
    host: str,
    port: int,
    public_url: str | None,
    trust_proxy: str | None,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    """Serve MCP: stdio (what `claude mcp add … -- agent-rooms serve` launches) or HTTP with --http.

    \b
    Public mode (DESIGN §9.3), behind a TLS proxy on this machine:
        agent-rooms serve --http --public-url https://hub.example.com --trust-proxy 127.0.0.1
    """
    network = (public_url, trust_proxy, tls_cert, tls_key)
    if not use_http and any(v is not None for v in network):
        raise click.UsageError("--public-url, --trust-proxy and --tls-* apply to --http only")
    if use_http:
        # Refused before the home is even read: an unsafe bind is a usage error (exit 2) naming its fix.
        try:
            exposure = exposure_for(host, public_url, trust_proxy, (tls_cert, tls_key))
        except BindRefused as e:
            raise click.UsageError(str(e)) from None
    configure_logging()
    s: Settings = settings()
    # Refuse an unsafe or missing home here, with its fix, rather than after announcing a server.
    guarded(lambda: check_home(s))
    if not use_http:
        guarded(lambda: anyio.run(_serve_stdio, s))
        return
    import uvicorn

    from agent_rooms_mcp.http import HttpHub
    from agent_rooms_mcp.serving import Server, bounded_protocol

    try:
        socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET).close()
    except OSError as e:
        raise Failed(ErrorCode.CONFLICT.value, f"cannot listen on {host}:{port}: {e.strerror}", False) from e

    scheme = "https" if tls_cert else "http"
    shown = f" as {public_url}" if public_url else ""
    click.echo(f"agent-rooms serving {scheme}://{host}:{port}/mcp{shown} (Ctrl-C to stop)", err=True)
    # Our protocol: uvicorn's h11 one with head and body timers and a connection cap (serving.py).
    app = HttpHub(s, exposure)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        http=bounded_protocol(s.limits),
        # uvicorn believes X-Forwarded-* from 127.0.0.1 by default, rewriting the client address the
        # failed-authentication limit counts against: forwarded headers are ours to judge (public.py).
        proxy_headers=False,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        # Told to stop, the server answers its long polls at once (`on_stop`); a request still running after
        # this long (a slow client's upload, a stream) is cancelled, so a stop never waits without end.
        timeout_graceful_shutdown=s.limits.http_shutdown_grace_s,
    )
    Server(config, on_stop=app.stop_long_polls).run()


async def _serve_stdio(s: Settings) -> None:
    from agent_rooms_mcp.stdio import serve_stdio

    await serve_stdio(s)
