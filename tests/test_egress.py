"""The sandbox's egress (DESIGN §5, Network): a network namespace whose one way out is the run's proxy.

The proxy runs as a process of its own (tests/egress_process.py, the supervisor's stand-in) on a real
Unix socket; the sandbox is real bubblewrap with `--unshare-net`, and inside it `egress-relay` execs a
probe standing in for the CLI, which tries every way out it can think of. Where bwrap is absent or cannot
give a network namespace, the sandbox tests skip and say why; the proxy's own refusals are tested anyway.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from agent_rooms_mcp.cli import cli
from agent_rooms_mcp.policy import allowed_hosts
from agent_rooms_mcp.principals import AgentTool
from agent_rooms_mcp.sockets import connect_unix
from agent_rooms_mcp.wake.egress import BadRequest, canonical_host, loopback_listeners, parse_head
from agent_rooms_mcp.wake.relay import RELAY_PORT, SOCKET_NAME, parse, proxy_env, relay_argv
from tests.conftest import World

ROOT = Path(__file__).resolve().parent.parent
# Generous: only to end a hang on a loaded box, never a measure of speed.
DEADLINE_S = 60.0
NOBODY = 65534
# Header values a CLI might send a proxy: none may reach the proxy's log.
SECRET = "sk-ant-api03-SENTINEL-never-logged"


@contextmanager
def host_http_server() -> Iterator[int]:
    """A real HTTP server on the host's loopback, standing for a local owner's model API."""

    class Hello(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"hello from the host {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            sent = self.rfile.read(int(self.headers["Content-Length"]))
            body = f"{self.path} got {len(sent)} bytes: {sent[:10].decode()}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(DEADLINE_S)


@contextmanager
def silent_listener() -> Iterator[socket.socket]:
    """A host loopback port that accepts connections and never answers; tests check it accepted none."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        s.setblocking(False)
        yield s


def accepted_nothing(listener: socket.socket) -> bool:
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


@dataclass
class Proxy:
    path: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()

    def refusals(self) -> list[dict[str, object]]:
        lines = [json.loads(line) for line in self.log().splitlines() if line.startswith("{")]
        return [e for e in lines if e.get("event") == "egress.refused"]


def read_line(stream: object, what: str) -> bytes:
    fd = stream.fileno()  # type: ignore[attr-defined]
    ready, _, _ = select.select([fd], [], [], DEADLINE_S)
    assert ready, f"{what}: no line within {DEADLINE_S} s"
    return stream.readline()  # type: ignore[attr-defined,no-any-return]


@contextmanager
def running_proxy(
    directory: Path, allowed: list[tuple[str, int]], chown: int | None = None, **limits: float
) -> Iterator[Proxy]:
    path, log_path = directory / SOCKET_NAME, directory / "proxy.log"
    env = {**os.environ, **{f"AGENT_ROOMS_LIMIT_{k.upper()}": str(v) for k, v in limits.items()}}
    args = [sys.executable, "-m", "tests.egress_process", str(path), *(f"{h}:{p}" for h, p in allowed)]
    args += ["--chown", str(chown)] if chown is not None else []
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log)
    try:
        assert process.stdout is not None
        ready = read_line(process.stdout, "the proxy's start")
        assert ready == b"ready\n", log_path.read_text()
        yield Proxy(path, log_path)
    finally:
        process.terminate()
        process.wait(DEADLINE_S)
        if process.stdout is not None:
            process.stdout.close()


def exchange(path: Path, data: bytes) -> tuple[socket.socket, bytes]:
    """Send `data` to the proxy; its answer's head (through the blank line), with the connection still open."""
    sock = connect_unix(path)
    sock.settimeout(DEADLINE_S)
    sock.sendall(data)
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return sock, got


def ask(path: Path, data: bytes) -> bytes:
    """The proxy's whole answer to `data`, up to its close."""
    sock, got = exchange(path, data)
    with sock:
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except ConnectionResetError:
            pass  # a refusal closes with the client's request unread: a reset, after the answer
    return got


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


# The proxy, driven over its socket by a client in this process.


def test_the_proxy_lets_through_exactly_the_listed_destinations(tmp_path: Path) -> None:
    with (
        host_http_server() as api,
        silent_listener() as other,
        running_proxy(tmp_path, [("127.0.0.1", api), ("LocalHost", other.getsockname()[1] + 1)]) as proxy,
    ):
        other_port = other.getsockname()[1]
        # A plain request to the listed loopback API is forwarded, in origin form, with its answer.
        answer = ask(proxy.path, f"GET http://127.0.0.1:{api}/v1/messages?x=1 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert status(answer) == 200 and answer.endswith(b"hello from the host /v1/messages?x=1")
        # ...with its body, however it was split into reads (the head's read may hold its first bytes).
        body = '{"model":"x"}' + "b" * 100_000
        post = f"POST http://127.0.0.1:{api}/v1/messages HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n{body}"
        assert ask(proxy.path, post.encode()).endswith(b'/v1/messages got 100013 bytes: {"model":"')
        # A tunnel to it carries whatever the client sends (here plain HTTP; TLS in real runs).
        tunnel, head = exchange(proxy.path, f"CONNECT 127.0.0.1:{api} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        with tunnel:
            assert head.startswith(b"HTTP/1.1 200 ")
            tunnel.sendall(b"GET /tunnelled HTTP/1.0\r\n\r\n")
            got = b""
            while chunk := tunnel.recv(65536):
                got += chunk
            assert got.endswith(b"hello from the host /tunnelled")

        refused = {
            f"CONNECT 127.0.0.1:{other_port} HTTP/1.1": ("127.0.0.1", other_port),  # a port not listed
            f"CONNECT localhost:{api} HTTP/1.1": ("localhost", api),  # a listed name, another port
            f"CONNECT 127.1:{api} HTTP/1.1": ("127.1", api),  # the listed address spelled another way
            f"CONNECT [::ffff:127.0.0.1]:{api} HTTP/1.1": ("::ffff:7f00:1", api),
            "CONNECT api.anthropic.com:443 HTTP/1.1": ("api.anthropic.com", 443),  # not this run's
            f"GET http://127.0.0.1:{other_port}/ HTTP/1.1": ("127.0.0.1", other_port),
        }
        for line, (host, port) in refused.items():
            request = f"{line}\r\nProxy-Authorization: Basic {SECRET}\r\nX-Api-Key: {SECRET}\r\n\r\n"
            answer = ask(proxy.path, request.encode())
            assert status(answer) == 403, (line, answer)
            assert f"{port} is not a destination of this run".encode() in answer
            assert {"host": host, "port": port}.items() <= proxy.refusals()[-1].items(), line
        assert accepted_nothing(other), "a refused destination was connected to"
        # The listed name, with its own port, would be tried (nothing listens there: 502, not 403).
        assert status(ask(proxy.path, f"CONNECT localhost:{other_port + 1} HTTP/1.1\r\n\r\n".encode())) == 502

        for bad in (
            f"GET https://127.0.0.1:{api}/ HTTP/1.1",  # TLS goes through CONNECT, never as a URI
            f"GET http://user:{SECRET}@127.0.0.1:{api}/ HTTP/1.1",
            "GET /v1/messages HTTP/1.1",  # not a proxy request
            "CONNECT 127.0.0.1 HTTP/1.1",
            "CONNECT bad_name!:443 HTTP/1.1",
            "CONNECT 127.0.0.1:99999 HTTP/1.1",
        ):
            assert status(ask(proxy.path, f"{bad}\r\nX-Api-Key: {SECRET}\r\n\r\n".encode())) == 400, bad

        # An oversized head is refused before it is parsed, whatever it asks for.
        big = f"CONNECT 127.0.0.1:{api} HTTP/1.1\r\nX-Api-Key: {SECRET}{'a' * 20_000}\r\n\r\n"
        assert status(ask(proxy.path, big.encode())) == 431
        assert proxy.refusals()[-1]["reason"] == "head_too_large"
    # Hosts and ports only: no header, path, user information or body ever reaches the log.
    assert SECRET not in proxy.log() and "/v1/messages" not in proxy.log()
    assert "x=1" not in proxy.log() and "Proxy-Authorization" not in proxy.log()


def test_the_proxy_bounds_connections_heads_and_idle_tunnels(tmp_path: Path) -> None:
    with (
        silent_listener() as upstream,
        running_proxy(
            tmp_path,
            [("127.0.0.1", upstream.getsockname()[1])],
            egress_connections=2,
            egress_head_timeout_s=3,
            egress_idle_s=2,
        ) as proxy,
    ):
        port = upstream.getsockname()[1]
        # Two connections that never send a head hold both places: the third is turned away at once.
        first, second = connect_unix(proxy.path), connect_unix(proxy.path)
        with first, second:
            first.settimeout(DEADLINE_S)
            second.settimeout(DEADLINE_S)
            answer = ask(proxy.path, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
            assert status(answer) == 503
            # ...and each silent one is answered 408 and closed once its head is overdue.
            for sock in (first, second):
                assert sock.recv(65536).startswith(b"HTTP/1.1 408 ")
        # A tunnel nobody uses is closed after egress_idle_s, although the upstream keeps it open.
        tunnel, head = exchange(proxy.path, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
        with tunnel:
            assert head.startswith(b"HTTP/1.1 200 ")
            assert tunnel.recv(65536) == b""
    reasons = [e["reason"] for e in proxy.refusals()]
    assert reasons.count("too_many_connections") == 1 and reasons.count("head_timeout") == 2


def test_request_heads_are_read_strictly() -> None:
    assert canonical_host("API.Anthropic.COM") == "api.anthropic.com"
    assert canonical_host("0:0::1") == "::1"
    for bad in ("", "a..b", "-a.com", "a_b.com", "ex ample.com", "é.com", "a" * 64 + ".com"):
        with pytest.raises(BadRequest):
            canonical_host(bad)
    forwarded = parse_head(
        b"POST http://127.0.0.1:8080/v1/x HTTP/1.1\r\nHost: h\r\nProxy-Authorization: Basic s\r\n"
        b"Connection: keep-alive\r\nX-Api-Key: k\r\n\r\n"
    )
    assert (forwarded.connect, forwarded.host, forwarded.port) == (False, "127.0.0.1", 8080)
    # The proxy's own credentials and the client's hop headers stop here; the API's own go on.
    assert forwarded.head == b"POST /v1/x HTTP/1.1\r\nHost: h\r\nX-Api-Key: k\r\nConnection: close\r\n\r\n"
    assert parse_head(b"GET http://Example.COM/ HTTP/1.1\r\n\r\n").host == "example.com"
    assert parse_head(b"CONNECT [::1]:443 HTTP/1.1\r\n\r\n").host == "::1"
    for bad in (
        b"GET http://h:0/ HTTP/1.1",
        b"GET http://h:x/ HTTP/1.1",
        b"CONNECT h:0 HTTP/1.1",
        b"GET http:// HTTP/1.1",
    ):
        with pytest.raises(BadRequest):
            parse_head(bad + b"\r\n\r\n")


def test_each_tool_reaches_its_model_api_its_base_url_and_the_hub() -> None:
    assert allowed_hosts(AgentTool.CLAUDE, {}, None) == {("api.anthropic.com", 443)}
    env = {"ANTHROPIC_BASE_URL": "http://127.0.0.1:8080/v1", "OPENAI_BASE_URL": "https://x.example"}
    assert allowed_hosts(AgentTool.CLAUDE, env, "https://Hub.Example.com:8443/mcp") == {
        ("api.anthropic.com", 443),
        ("127.0.0.1", 8080),
        ("hub.example.com", 8443),
    }
    assert allowed_hosts(AgentTool.CODEX, env, None) == {
        ("api.openai.com", 443),
        ("chatgpt.com", 443),
        ("auth.openai.com", 443),
        ("x.example", 443),
    }
    # OpenClaw reaches the providers whose keys it was given; with none, the two its stored logins use.
    assert allowed_hosts(AgentTool.OPENCLAW, {"GEMINI_API_KEY": "k"}, None) == {
        ("generativelanguage.googleapis.com", 443)
    }
    assert allowed_hosts(AgentTool.OPENCLAW, {}, None) == {("api.anthropic.com", 443), ("api.openai.com", 443)}
    # A malformed or non-HTTP base URL opens nothing.
    assert allowed_hosts(AgentTool.CLAUDE, {"ANTHROPIC_BASE_URL": "file:///etc/passwd"}, "x:1") == {
        ("api.anthropic.com", 443)
    }
    assert allowed_hosts(AgentTool.CHAT, env, None) == set()


def test_the_relay_refuses_a_shared_network_and_bad_arguments(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "agent_rooms_mcp", "egress-relay"]
    shared = subprocess.run(
        [*cli, "--socket", str(tmp_path / "e.sock"), "--port", "1", "--", "true"],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    # Outside a network namespace of its own its port would be the host's: it never execs the CLI there.
    assert shared.returncode == 2 and "network namespace of its own" in shared.stderr
    for args in (["--port", "1", "--", "true"], ["--socket", "/x", "--port", "0", "--", "true"], ["--socket", "/x"]):
        done = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=DEADLINE_S)
        assert done.returncode == 2 and "usage: agent-rooms egress-relay" in done.stderr, args
    assert parse(["--port", "9", "--socket", "/r/e.sock", "--", "claude", "-p"]) == (
        Path("/r/e.sock"),
        9,
        ["claude", "-p"],
    )
    assert relay_argv("/py", Path("/r/e.sock")) == [
        "/py", "-m", "agent_rooms_mcp", "egress-relay", "--socket", "/r/e.sock", "--port", str(RELAY_PORT), "--"
    ]  # fmt: skip
    assert proxy_env(9)["HTTPS_PROXY"] == proxy_env(9)["all_proxy"] == "http://127.0.0.1:9"
    assert proxy_env(9)["NO_PROXY"] == proxy_env(9)["no_proxy"] == ""


# The sandbox: real bwrap with a network namespace of its own.

PROBE = textwrap.dedent(
    '''
    """Stands in for a woken CLI: tries each way out of the sandbox and prints what happened, as JSON."""
    import errno, json, os, socket, stat, sys, urllib.error, urllib.request

    api, closed = int(sys.argv[1]), int(sys.argv[2])
    host_unix, abstract, run_dir = sys.argv[3], sys.argv[4], sys.argv[5]

    def attempt(fn):
        try:
            return fn()
        except urllib.error.HTTPError as e:
            return f"HTTP {e.code}"
        except OSError as e:
            return f"{type(e).__name__}:{errno.errorcode.get(e.errno, '')}"

    def tcp(host, port):
        socket.create_connection((host, port), timeout=10).close()
        return "connected"

    def unix(address):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(address)
        return "connected"

    def proxy_connect(target):
        # Straight to the relay's port, as a CLI's HTTPS client would.
        with socket.create_connection(("127.0.0.1", int(os.environ["HTTPS_PROXY"].rsplit(":", 1)[1])), timeout=30) as s:
            s.sendall(f"CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\n".encode())
            return s.recv(4096).split(b"\\r\\n")[0].decode()

    def sockets():
        found = []
        for top in ("/usr", "/etc", "/tmp", run_dir, os.path.dirname(sys.executable), os.getcwd()):
            for base, dirs, files in os.walk(top):
                for name in files + dirs:
                    path = os.path.join(base, name)
                    try:
                        if stat.S_ISSOCK(os.lstat(path).st_mode):
                            found.append(path)
                    except OSError:
                        pass
        return sorted(set(found))

    through = urllib.request.build_opener()  # HTTP(S)_PROXY from the environment the relay set
    out = {
        "uid": os.getuid(),
        "proxy": [os.environ.get(v) for v in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")],
        "allowed": attempt(lambda: through.open(f"http://127.0.0.1:{api}/through", timeout=30).read().decode()),
        "not_allowed": attempt(lambda: through.open(f"http://127.0.0.1:{closed}/", timeout=30).read().decode()),
        "connect_denied": attempt(lambda: proxy_connect("example.com:443")),
        "direct_api": attempt(lambda: tcp("127.0.0.1", api)),
        "direct_closed": attempt(lambda: tcp("127.0.0.1", closed)),
        "internet": attempt(lambda: tcp("1.1.1.1", 443)),
        "host_unix": attempt(lambda: unix(host_unix)),
        "host_abstract": attempt(lambda: unix("\\0" + abstract)),
        "sockets": sockets(),
    }
    print(json.dumps(out), flush=True)
    sys.stdin.readline()  # until the test has looked at the process tree and signalled us
    '''
)


def bwrap_unshare_net() -> str | None:
    """Why the sandbox tests cannot run here, or None when bwrap gives a network namespace."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bwrap is not installed (Debian: apt install bubblewrap)"
    done = subprocess.run(
        [bwrap, "--ro-bind", "/", "/", "--unshare-net", "--", "true"], capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        return f"bwrap cannot unshare the network here: {done.stderr.strip()}"
    return None


def sandbox_argv(run_dir: Path, *, pid_ns: bool, as_nobody: bool) -> list[str]:
    """A minimal sandbox: the system read-only, private /proc /dev /tmp, the Python install and this checkout
    read-only, the run directory, and a network namespace of its own. No other host path."""
    argv = ["bwrap", "--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    for top in ("/bin", "/lib", "/lib64", "/sbin"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
    python_home = Path(sys.base_prefix).resolve()
    # bwrap makes a bound path's missing parents 0700, which a run-as user cannot pass: each is made 0755.
    made: set[Path] = set()
    for path, how in ((python_home, "--ro-bind"), (ROOT, "--ro-bind"), (run_dir, "--bind")):
        for parent in reversed(path.parents[:-1]):
            if parent not in made and str(parent) not in ("/usr", "/etc", "/tmp"):
                made.add(parent)
                argv += ["--dir", str(parent)]
        argv += [how, str(path), str(path)]
    argv += ["--chdir", str(run_dir)]
    argv += ["--unshare-net", "--die-with-parent", "--new-session"]
    argv += ["--unshare-pid"] if pid_ns else []
    argv += ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"] if as_nobody else []
    return argv


def processes() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, command line) of every process on the host."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat_line = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            fields = stat_line.rsplit(")", 1)[1].split()
            found[int(entry.name)] = (int(fields[1]), fields[0], cmdline)
    return found


@pytest.mark.invariant(89)
@pytest.mark.parametrize(
    "pid_ns, as_nobody",
    [(True, False), (True, True), (False, False)],
    ids=["root-pid-namespace", "never-root", "no-pid-namespace"],
)
def test_a_sandboxed_cli_reaches_only_the_proxy_and_through_it_only_its_listed_hosts(
    tmp_path: Path, pid_ns: bool, as_nobody: bool
) -> None:
    if (why := bwrap_unshare_net()) is not None:
        pytest.skip(why)
    if as_nobody and shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed (util-linux)")
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    (run_dir / "probe.py").write_text(PROBE)
    if as_nobody:
        os.chown(run_dir, NOBODY, NOBODY)  # the run directory is the run-as user's, as the supervisor makes it
    abstract = f"agent-rooms-test-{os.getpid()}-{id(tmp_path)}"
    with (
        host_http_server() as api,
        silent_listener() as closed,
        socket.socket(socket.AF_UNIX) as host_unix,
        socket.socket(socket.AF_UNIX) as host_abstract,
    ):
        host_unix.bind(str(tmp_path / "host.sock"))
        host_unix.listen(1)
        host_abstract.bind("\0" + abstract)
        host_abstract.listen(1)
        closed_port = closed.getsockname()[1]
        with running_proxy(run_dir, [("127.0.0.1", api)], chown=NOBODY if as_nobody else None) as proxy:
            probe = [sys.executable, str(run_dir / "probe.py"), str(api), str(closed_port)]
            probe += [str(tmp_path / "host.sock"), abstract, str(run_dir)]
            argv = sandbox_argv(run_dir, pid_ns=pid_ns, as_nobody=as_nobody)
            argv += relay_argv(sys.executable, proxy.path) + probe
            sandbox = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                assert sandbox.stdout is not None and sandbox.stdin is not None
                line = read_line(sandbox.stdout, "the probe's report")
                assert line, sandbox.communicate(timeout=DEADLINE_S)[1].decode()
                out = json.loads(line)
                # The CLI is the relay's own process, exec'd (the PID the supervisor signals), and the relay
                # child is the CLI's child: the only process left running the relay's code.
                ps = processes()
                (cli_pid,) = [p for p, (_, _, cmd) in ps.items() if cmd.startswith(" ".join(probe[:2]))]
                relay = " ".join(relay_argv(sys.executable, proxy.path))
                (relay_pid,) = [p for p, (_, _, cmd) in ps.items() if cmd.startswith(relay)]
                assert ps[relay_pid][0] == cli_pid
                os.kill(cli_pid, signal.SIGTERM)  # as the stop ladder does
                sandbox.wait(DEADLINE_S)
            finally:
                if sandbox.poll() is None:
                    sandbox.kill()
                    sandbox.wait(DEADLINE_S)
                for stream in (sandbox.stdin, sandbox.stdout, sandbox.stderr):
                    if stream is not None:
                        stream.close()
            # The relay ends with the CLI: with a PID namespace by its end, without one by its death signal.
            deadline = time.monotonic() + DEADLINE_S
            while (state := processes().get(relay_pid)) is not None and state[1] != "Z":
                assert time.monotonic() < deadline, f"the relay outlived its CLI: {state}"
                select.select([], [], [], 0.05)
            assert not sandbox.returncode or sandbox.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM, 143)

        assert out["uid"] == (NOBODY if as_nobody else 0)
        url = f"http://127.0.0.1:{RELAY_PORT}"
        assert out["proxy"] == [url, url, url, ""]
        # Through the proxy: the listed API answers, anything else is refused by the proxy.
        assert out["allowed"] == "hello from the host /through"
        assert out["not_allowed"] == "HTTP 403"
        assert out["connect_denied"] == "HTTP/1.1 403 Forbidden"
        # Around it: no host loopback port, no route out, no host socket by path or in the abstract namespace.
        assert out["direct_api"] == out["direct_closed"] == "ConnectionRefusedError:ECONNREFUSED"
        assert out["internet"] == "OSError:ENETUNREACH"
        assert out["host_unix"] == "FileNotFoundError:ENOENT"
        assert out["host_abstract"] == "ConnectionRefusedError:ECONNREFUSED"
        # The one socket file the sandbox holds is its proxy's (a real run has its bridge's beside it).
        assert out["sockets"] == [str(proxy.path)]
        assert accepted_nothing(closed)
        assert [e["port"] for e in proxy.refusals()] == [closed_port, 443]


# doctor: whether this host gives a sandbox a network namespace, and if not, what a run could reach.


def invoke(args: list[str], env: dict[str, str]) -> Result:
    """On a thread of its own: doctor opens the hub with an event loop of its own (not this test's)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(CliRunner().invoke, cli, args, env=env).result()


def sandbox_network(home: Path, path: str) -> tuple[dict[str, object], bool]:
    done = invoke(["doctor", "--json"], {"AGENT_ROOMS_HOME": str(home), "PATH": path})
    report = json.loads(done.stdout)
    return next(c for c in report["checks"] if c["id"] == "wake.network"), report["ok"]


async def test_doctor_lists_the_loopback_ports_a_run_could_reach_where_bwrap_gives_no_network_namespace(
    world: World, tmp_path: Path
) -> None:
    refusing, empty = tmp_path / "refusing", tmp_path / "empty"
    refusing.mkdir()
    empty.mkdir()
    fake = refusing / "bwrap"  # a host where user namespaces are off answers like this
    fake.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(0o755)
    with silent_listener() as local:
        port = local.getsockname()[1]
        check, ok = sandbox_network(world.settings.home, f"{refusing}:{os.environ['PATH']}")
        assert check["status"] == "warn" and ok, check  # a warning: the owner judges the ports
        assert "setting up uid map: Permission denied" in str(check["message"])
        assert f"127.0.0.1:{port}" in str(check["message"]) and "user namespaces" in str(check["fix"])
        check, ok = sandbox_network(world.settings.home, str(empty))
        assert check["status"] == "warn" and "bwrap is not installed" in str(check["message"]), check
        assert f"127.0.0.1:{port}" in str(check["message"]) and "apt install bubblewrap" in str(check["fix"])
    if bwrap_unshare_net() is None:
        check, ok = sandbox_network(world.settings.home, os.environ["PATH"])
        assert check["status"] == "ok" and check["fix"] is None, check


def test_the_listed_ports_are_those_listening_on_loopback_or_every_address() -> None:
    with silent_listener() as local, socket.socket() as every, socket.socket() as unlistened:
        every.bind(("0.0.0.0", 0))
        every.listen(1)
        unlistened.bind(("127.0.0.1", 0))  # bound, not listening: nothing to reach
        ports = loopback_listeners()
        assert ports is not None
        assert f"127.0.0.1:{local.getsockname()[1]}" in ports
        assert f"0.0.0.0:{every.getsockname()[1]}" in ports
        assert not any(p.endswith(f":{unlistened.getsockname()[1]}") for p in ports)
        if socket.has_ipv6:
            with socket.socket(socket.AF_INET6) as six:
                try:
                    six.bind(("::1", 0))
                except OSError:
                    return  # no IPv6 loopback on this host
                six.listen(1)
                assert f"[::1]:{six.getsockname()[1]}" in (loopback_listeners() or [])


def test_the_cli_starts_with_no_signal_ignored_that_the_relay_ignored(tmp_path: Path) -> None:
    """Python ignores SIGPIPE for itself; a CLI exec'd from it would inherit that (`yes | head` never ends)."""
    if (why := bwrap_unshare_net()) is not None:
        pytest.skip(why)
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    grep = shutil.which("grep") or "/usr/bin/grep"
    with running_proxy(run_dir, []) as proxy:
        argv = sandbox_argv(run_dir, pid_ns=True, as_nobody=False) + relay_argv(sys.executable, proxy.path)
        done = subprocess.run([*argv, grep, "^SigIgn", "/proc/self/status"], capture_output=True, timeout=DEADLINE_S)
    assert done.returncode == 0, done.stderr
    ignored = int(done.stdout.split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)) and not ignored & (1 << (signal.SIGXFSZ - 1)), hex(ignored)
