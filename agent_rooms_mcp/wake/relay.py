"""`agent-rooms egress-relay`: the sandbox's one way out, run inside it as the woken CLI's command prefix.

    python -m agent_rooms_mcp egress-relay --socket RUN_DIR/egress.sock --port N -- CLI ARGV...

Inside `bwrap --unshare-net` the sandbox has a network namespace of its own, with only `lo`: no route to
the host's loopback ports or to the internet. This listens on 127.0.0.1:N there, in a forked child that
relays each TCP connection to the egress proxy's Unix socket (wake/egress.py, served by the supervisor
outside, which lets through the run's model API and the hub alone), then execs the CLI with HTTP(S)_PROXY
pointing at it. Exec, not a child: the supervisor signals the PID it read from bwrap's --info-fd, and a
signal must reach the CLI itself (DESIGN §5, stop through the sandbox).

The relay child ends with the CLI: PR_SET_PDEATHSIG kills it when the process it forked from (the CLI,
after exec) is gone, a look at its parent every second backs that up, and the PID namespace's end kills it
regardless. It holds none of the CLI's descriptors (stdout stays the CLI's alone, so the supervisor sees the
stream's end when the CLI ends).

Dispatched by `__main__` before the `agent-rooms` CLI's imports: this runs at every sandboxed wake's start,
ahead of the CLI. The parent imports only the standard library; anyio loads in the child, after the fork.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from anyio.abc import ByteReceiveStream, ByteStream, SocketStream

# The variables that send a CLI's HTTP through the relay. Both cases: curl and some libraries read only
# the lower-case ones; Node's and Rust's clients read either. NO_PROXY is emptied, never inherited: a
# bypass list would let a CLI try a host directly (which the namespace refuses anyway, but fails slower).
PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy")
NO_PROXY_VARS = ("NO_PROXY", "no_proxy")
# Inside a fresh network namespace every port is free; this one is the supervisor's default choice.
RELAY_PORT = 18080
SOCKET_NAME = "egress.sock"
_USAGE = "usage: agent-rooms egress-relay --socket PATH --port N -- CLI [ARG...]"
_PR_SET_PDEATHSIG = 1
_BACKLOG = 64


class UsageError(Exception):
    pass


def proxy_env(port: int) -> dict[str, str]:
    """What the relay sets in the CLI's environment (the supervisor need not set these itself)."""
    url = f"http://127.0.0.1:{port}"
    return {**dict.fromkeys(PROXY_VARS, url), **dict.fromkeys(NO_PROXY_VARS, "")}


def relay_argv(python: str, socket_path: Path, port: int = RELAY_PORT) -> list[str]:
    """The command prefix a sandboxed CLI's argv follows (the supervisor appends the CLI's own argv)."""
    return [python, "-m", "agent_rooms_mcp", "egress-relay", "--socket", str(socket_path), "--port", str(port), "--"]


def parse(argv: Sequence[str]) -> tuple[Path, int, list[str]]:
    """(socket, port, cli argv) from `--socket PATH --port N -- CLI...`; argparse is not needed for three."""
    args = list(argv)
    if "--" not in args:
        raise UsageError("no CLI given after --")
    split = args.index("--")
    opts, cli = args[:split], args[split + 1 :]
    if not cli:
        raise UsageError("no CLI given after --")
    if len(opts) != 4 or sorted(opts[0::2]) != ["--port", "--socket"]:
        raise UsageError("expected --socket PATH and --port N before --")
    values = dict(zip(opts[0::2], opts[1::2], strict=True))
    port_text = values["--port"]
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise UsageError(f"--port {port_text!r}: expected a TCP port, 1..65535")
    path = Path(values["--socket"])
    if not path.is_absolute():
        raise UsageError(f"--socket {path}: expected an absolute path (the run directory's egress.sock)")
    return path, int(port_text), cli


def own_network_namespace() -> bool:
    """Only `lo`: a namespace of our own (bwrap --unshare-net). On a shared network the port would be the
    host's, where another user could reach the proxy through it."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    try:
        socket_path, port, cli = parse(sys.argv[2:] if argv is None else argv)
    except UsageError as e:
        sys.stderr.write(f"agent-rooms egress-relay: {e}\n{_USAGE}\n")
        return 2
    if not own_network_namespace():
        sys.stderr.write(
            "agent-rooms egress-relay: this process shares a network with others; run it inside a network "
            "namespace of its own (bwrap --unshare-net), where its port cannot be reached from outside\n"
        )
        return 2
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", port))
        listener.listen(_BACKLOG)  # before the fork: the CLI may connect the moment it starts
    except OSError as e:
        sys.stderr.write(f"agent-rooms egress-relay: cannot listen on 127.0.0.1:{port}: {e.strerror}\n")
        return 2
    parent = os.getpid()
    if os.fork() == 0:
        _child(listener, socket_path, parent)
    listener.close()  # also close-on-exec (Python's sockets are not inheritable): the CLI never holds it
    child_env = {**env, **proxy_env(port)}
    # Python ignores SIGPIPE and SIGXFSZ for itself, and an ignored signal stays ignored across exec: the CLI
    # (and every shell command it runs) must get the defaults back, as subprocess's restore_signals does.
    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    try:
        os.execvpe(cli[0], cli, child_env)
    except OSError as e:
        sys.stderr.write(f"agent-rooms egress-relay: cannot run {cli[0]}: {e.strerror}\n")
    return 127


def _child(listener: socket.socket, socket_path: Path, parent: int) -> NoReturn:
    try:
        _die_with_parent()
        if os.getppid() != parent:
            os._exit(0)  # the parent was gone before the death signal was armed
        # The CLI's Ctrl-C (SIGINT from the supervisor, or to the group) is for the CLI: it may still be
        # talking to its API while it stops. The relay ends when the CLI does.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        keep = listener.fileno()
        os.closerange(3, keep)
        os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
        import anyio

        anyio.run(_serve, listener, _reachable(socket_path), parent)
    except BaseException:
        pass  # nothing to report to: stderr is gone, and the CLI runs on regardless
    os._exit(0)


def _die_with_parent() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _reachable(path: Path) -> str:
    """A path `connect` takes: sun_path holds 108 bytes, so a long one goes through its directory's fd."""
    from agent_rooms_mcp.sockets import SUN_PATH_MAX

    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        return str(path)
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)  # kept open for the relay's life
    return f"/proc/self/fd/{fd}/{path.name}"


async def _serve(sock: socket.socket, target: str, parent: int) -> None:
    import anyio
    from anyio.abc import SocketListener

    listener = await SocketListener.from_socket(sock)

    async def relay_one(client: SocketStream) -> None:
        async with client:
            try:
                upstream = await anyio.connect_unix(target)
            except OSError:
                return  # the proxy is gone (the run is ending): the CLI sees its connection close
            async with upstream:
                await splice(client, client, upstream, idle_s=None)

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, relay_one, tg)
        while os.getppid() == parent:
            await anyio.sleep(1)
        tg.cancel_scope.cancel()


async def splice(
    client_rx: ByteReceiveStream, client_tx: ByteStream, upstream: ByteStream, idle_s: float | None
) -> None:
    """Copy both ways until the upstream ends (or either side breaks, or nothing moves for idle_s).

    The client's end of sending is passed on (half-close) and the answer still flows back; the upstream's
    end closes the tunnel, as HTTP proxies do.
    """
    import anyio

    broken = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
    with anyio.CancelScope() as scope:

        def moved() -> None:
            if idle_s is not None:
                scope.deadline = anyio.current_time() + idle_s

        async def up() -> None:
            try:
                async for chunk in client_rx:
                    await upstream.send(chunk)
                    moved()
                await upstream.send_eof()
            except broken:
                scope.cancel()

        async def down() -> None:
            with suppress(*broken):
                async for chunk in upstream:
                    await client_tx.send(chunk)
                    moved()
            scope.cancel()

        moved()
        async with anyio.create_task_group() as tg:
            tg.start_soon(up)
            tg.start_soon(down)


if __name__ == "__main__":
    sys.exit(main())
