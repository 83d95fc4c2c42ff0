"""The real Claude Code CLI connects to a public-mode hub over OAuth, its browser step driven in Chromium (issue 17).

Opt-in by presence, like tests/test_connect_real.py: skipped unless a `claude` binary is found
(AGENT_ROOMS_TEST_CLAUDE_BIN, else PATH; `npm install --prefix /tmp/clis @anthropic-ai/claude-code`, whose binary
is node_modules/@anthropic-ai/claude-code/bin/claude.exe) and Debian's Chromium with its chromedriver is installed
(the `browser` fixture of tests/test_console_browser.py). The CLI runs in a throwaway HOME; its model, when a
session calls a tool, is tests/fake_anthropic.py on loopback. Nothing here needs the network.

What the CLI does (2.1.197): `claude mcp add --transport http NAME URL` stores the server; `claude mcp list` probes
it, follows the 401 to our metadata and says "Needs authentication"; `claude mcp login NAME` opens the authorize
URL with $BROWSER (here a script that hands it to the test's Chromium) and waits on a loopback /callback. It runs
only on a terminal (else: "stdin isn't a terminal"), so it gets a pty. By default its client is Claude's metadata
document, https://claude.ai/oauth/claude-code-client-metadata, which the hub must fetch from claude.ai. The first
test serves that document from a stand-in claude.ai (root and bwrap: the hub alone gets an /etc/hosts naming a
loopback address claude.ai, and the test-only allowance to fetch from loopback). The second shows what a hub that
cannot reach claude.ai does (refuses the client: invalid_client) and connects the other way Claude Code offers,
a client registered in advance (`claude mcp add --client-id --callback-port`).
"""

from __future__ import annotations

import json
import os
import pty
import secrets
import shutil
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.to_thread
import httpx2
import pytest
from click.testing import CliRunner

from agent_rooms_mcp.cli import cli
from agent_rooms_mcp.owner_actions import perform
from agent_rooms_mcp.principals import Human
from tests import test_console_browser
from tests.conftest import OPERATOR, World
from tests.fake_anthropic import FakeAnthropic, Reply, Request, Text, ToolUse
from tests.hubprocess import Served, free_port, serve_http
from tests.test_console_browser import _mint, _wait
from tests.test_public import self_signed
from tests.wakeworld import until

# The console tests' Chromium (skipping, or failing under AGENT_ROOMS_REQUIRE_BROWSER=1, when it is missing) and
# their screenshot folder: fixtures are found by name in this module.
browser, shots = test_console_browser.browser, test_console_browser.shots

CLAUDE = os.environ.get("AGENT_ROOMS_TEST_CLAUDE_BIN") or shutil.which("claude")
pytestmark = pytest.mark.skipif(
    CLAUDE is None, reason="Claude Code is not installed (set AGENT_ROOMS_TEST_CLAUDE_BIN or put claude on PATH)"
)
CLI_DEADLINE_S = 240  # bounds a hung CLI only; it says nothing about speed
CLAUDE_CODE_CLIENT = "https://claude.ai/oauth/claude-code-client-metadata"
# The document Claude publishes at that URL, as quoted in anthropics/claude-code issues 37747 and 64705.
CLAUDE_CODE_DOCUMENT = {
    "client_id": CLAUDE_CODE_CLIENT,
    "client_name": "Claude Code",
    "redirect_uris": ["http://localhost/callback", "http://127.0.0.1/callback"],
    "grant_types": ["authorization_code", "refresh_token"],
    "response_types": ["code"],
    "token_endpoint_auth_method": "none",
}
SERVER = "agent-rooms"
WHOAMI = f"mcp__{SERVER}__whoami"


class Cli:
    """The real CLI in a HOME of its own, trusting the hub's test certificate and opening URLs through a script
    that writes them to a file for the test's Chromium."""

    def __init__(self, root: Path, cert: Path) -> None:
        self.user, self.opened = root / "user", root / "opened-urls"
        self.user.mkdir()
        self.browser = root / "browser.sh"
        self.browser.write_text(f'#!/bin/sh\nprintf "%s\\n" "$1" >> "{self.opened}"\n')
        self.browser.chmod(0o755)
        self.cert = cert

    def env(self, **more: str) -> dict[str, str]:
        return {
            "HOME": str(self.user),
            "PATH": "/usr/bin:/bin",
            "NODE_EXTRA_CA_CERTS": str(self.cert),
            "BROWSER": str(self.browser),
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            **more,
        }

    async def run(self, *args: str, **env: str) -> str:
        assert CLAUDE is not None
        argv = [CLAUDE, *args]

        def run() -> str:
            done = subprocess.run(
                argv, env=self.env(**env), cwd=self.user, capture_output=True, text=True, timeout=CLI_DEADLINE_S
            )
            return done.stdout + done.stderr

        # Off this test's loop, which stays free meanwhile (as tests/test_connect_real.py runs the CLI).
        return await anyio.to_thread.run_sync(run)

    async def health(self) -> str:
        """`claude mcp list`'s line for our server: its status after a real probe."""
        listed = await self.run("mcp", "list")
        assert f"{SERVER}:" in listed, listed
        return listed.split(f"{SERVER}:")[1].splitlines()[0]

    async def opened_url(self) -> str:
        await until(lambda: self.opened.exists() and self.opened.read_text().strip(), "the CLI opens a browser")
        url = self.opened.read_text().splitlines()[-1]
        self.opened.unlink()
        return url

    @contextmanager
    def login(self) -> Iterator[tuple[subprocess.Popen[bytes], list[str]]]:
        """`claude mcp login` on a pseudo-terminal: without one it refuses to wait for the browser."""
        assert CLAUDE is not None
        master, terminal = pty.openpty()
        process = subprocess.Popen(
            [CLAUDE, "mcp", "login", SERVER],
            stdin=terminal, stdout=terminal, stderr=terminal, env=self.env(), cwd=self.user,
        )  # fmt: skip
        os.close(terminal)
        said: list[str] = []

        def read() -> None:
            while True:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the CLI closed its end of the terminal
                    return
                if not chunk:
                    return
                said.append(chunk.decode(errors="replace"))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            yield process, said
        finally:
            if process.poll() is None:
                process.terminate()
            process.wait(30)
            reader.join(5)
            os.close(master)


def model(request: Request) -> Reply:
    """The fake model: asked who it is, it calls our whoami; shown the result, it ends the turn."""
    turns = [m for m in request.body.get("messages") or [] if m.get("role") != "system"] or [{}]
    last = turns[-1].get("content")
    blocks = last if isinstance(last, list) else [{"type": "text", "text": str(last)}]
    if any(b.get("type") == "tool_result" for b in blocks):
        return Text("that is who I am")
    if "who am I" in " ".join(str(b.get("text", "")) for b in blocks):
        return ToolUse(WHOAMI, {})
    return Text("nothing to do")


def whoami_results(api: FakeAnthropic) -> list[dict[str, Any]]:
    """Every whoami answer the CLI showed its model, parsed (once each: a later call repeats the history)."""
    found: dict[str, dict[str, Any]] = {}
    for call in api.messages():
        for message in call.body.get("messages") or []:
            content = message.get("content")
            for block in content if isinstance(content, list) else []:
                if block.get("type") != "tool_result":
                    continue
                inner = block.get("content")
                text = inner if isinstance(inner, str) else "".join(p.get("text", "") for p in inner or [])
                found[block.get("tool_use_id", "")] = json.loads(text)
    return list(found.values())


async def ar(world: World, *args: str) -> dict[str, Any]:
    """The operator's `agent-rooms` command on the served hub's home (in a thread: it runs an event loop)."""
    env = {"AGENT_ROOMS_HOME": str(world.settings.home)}
    done = await anyio.to_thread.run_sync(lambda: CliRunner().invoke(cli, [*args, "--json"], env=env))
    assert done.exit_code == 0, (args, done.output, done.exception)
    return dict(json.loads(done.stdout))


@asynccontextmanager
async def hub_with_chat(
    world: World, tmp_path: Path, *, env: dict[str, str] | None = None, wrap: Sequence[str] = ()
) -> AsyncIterator[tuple[Served, Cli]]:
    """A public-mode hub with TLS of its own on a loopback public URL, alice's chat agent on it, and the CLI."""
    async with world.hub() as hub:
        chat = {"handle": "alice-chat", "owner": "alice", "tool": "chat", "scopes": "read,post"}
        await perform(hub, Human(OPERATOR), "agent.add", chat)
    (tmp_path / "hub").mkdir()
    cert, key = self_signed(tmp_path / "hub")
    port = free_port()
    flags = ["--public-url", f"https://localhost:{port}", "--tls-cert", str(cert), "--tls-key", str(key)]
    async with serve_http(world.settings.home, *flags, env=env, port=port, base="https://localhost", wrap=wrap) as hub:
        claude = Cli(tmp_path, cert)
        # Added as Claude Code's docs say; its probe follows the 401 to our metadata and asks for a login.
        added = await claude.run("mcp", "add", "--transport", "http", SERVER, hub.mcp)
        assert f"Added HTTP MCP server {SERVER}" in added, added
        assert "Needs authentication" in await claude.health()
        yield hub, claude


async def log_in(claude: Cli, hub: Served, world: World, browser: Any, shot: Path, shown: dict[str, str]) -> str:
    """`claude mcp login` with its browser step in Chromium: alice logs in by a console link and approves it as
    alice-chat; the CLI's callback listener gets the code. The authorize URL the CLI opened."""
    from selenium.webdriver.common.by import By

    with claude.login() as (login, said):
        url = await claude.opened_url()
        assert url.startswith(f"{hub.base}/authorize?"), url
        callback = urlsplit(parse_qs(urlsplit(url).query)["redirect_uri"][0])
        # The owner is not logged in: the page says how; the login by link comes back to the request.
        browser.get(url)
        _wait(browser, lambda d: d.find_elements(By.ID, "authorize-login"), "the log-in-to-approve page")
        browser.get(await _mint(world, "alice", hub.base))
        browser.find_element(By.ID, "login").click()
        _wait(browser, lambda d: d.find_elements(By.ID, "approve"), "the approval page after the login")
        assert {key: browser.find_element(By.ID, key).text for key in shown} == shown
        assert browser.find_element(By.ID, "redirect").text == f"http://localhost:{callback.port}"
        assert browser.find_element(By.ID, "loopback-warning").is_displayed()
        assert browser.find_element(By.ID, "agent-alice-chat").is_selected()
        browser.save_screenshot(str(shot))
        browser.find_element(By.ID, "approve").click()
        # Chromium lands on the CLI's own callback listener, which exchanges the code and says so.
        await until(lambda: login.poll() is not None, "the CLI finishes its login")
        assert login.returncode == 0 and f'Authenticated with "{SERVER}"' in "".join(said), "".join(said)
    return url


async def acts_as_chat_until_revoked(claude: Cli, world: World) -> None:
    """After the login: the CLI is connected, its session's whoami is alice-chat with the scopes approved, the
    approval is audited, `token list` shows the connector and `token revoke` ends it."""
    assert "Connected" in await claude.health()
    with FakeAnthropic(model) as api:
        session = await claude.run(
            "-p", "who am I?", "--allowedTools", WHOAMI, "--output-format", "json",
            ANTHROPIC_BASE_URL=api.url, ANTHROPIC_API_KEY="sk-ant-fake",
        )  # fmt: skip
        answers = whoami_results(api)
    assert len(answers) == 1, session
    # alice-chat holds no credential but the one this approval issued: the session used the CLI's token.
    [who] = answers
    assert who["agent"]["handle"] == "alice-chat" and sorted(who["scopes"]) == ["post", "read"], who

    chat_id = world.sql("SELECT agent_id FROM agents WHERE handle = 'alice-chat'")[0]["agent_id"]
    by_action = {(r["action"], r["actor_kind"]): r for r in world.audit_rows() if r["target"] == chat_id}
    assert by_action[("oauth.approve", "owner")]["via"] == "console", by_action
    assert ("oauth.token.code", "oauth_client") in by_action, by_action
    [issued] = world.sql("SELECT token_id, grant_id FROM tokens WHERE agent_id = ?", (chat_id,))
    assert issued["grant_id"] is not None
    listed = [t for t in (await ar(world, "token", "list"))["tokens"] if t["agent"] == "alice-chat"]
    assert [(t["token_id"], t["status"]) for t in listed] == [(issued["token_id"], "active")], listed

    # Revoked one by one: the CLI is asked to log in again (its refresh token died with the grant).
    await ar(world, "token", "revoke", issued["token_id"])
    assert "Needs authentication" in await claude.health()


def certificate(tmp: Path, host: str) -> tuple[Path, Path]:
    """A self-signed certificate for `host` and its key (openssl, as tests.test_public.self_signed)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: no certificate to serve TLS with")
    cert, key = tmp / f"{host}.pem", tmp / f"{host}.key"
    argv = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    argv += ["-subj", f"/CN={host}", "-addext", f"subjectAltName=DNS:{host}", "-days", "2"]
    subprocess.run([*argv, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


@contextmanager
def stand_in_for_claude_ai(tmp_path: Path) -> Iterator[tuple[list[str], Path, list[str]]]:
    """Claude Code's metadata document served as claude.ai would, on port 443 of a random loopback address: the
    command that runs the hub with an /etc/hosts naming that address claude.ai, the certificate the hub is
    told to trust (the test-only allowance), and the paths fetched. A thread of its own: Selenium's calls
    block this test's event loop while the hub fetches."""
    bwrap = shutil.which("bwrap")
    if os.geteuid() != 0 or bwrap is None:
        pytest.skip("a stand-in claude.ai needs root (port 443) and bwrap (an /etc/hosts for the hub alone)")
    address = f"127.{secrets.randbelow(254) + 1}.{secrets.randbelow(254) + 1}.{secrets.randbelow(254) + 1}"
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n::1 localhost\n{address} claude.ai\n")
    cert, key = certificate(tmp_path, "claude.ai")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(str(cert), str(key))
    document, hits = json.dumps(CLAUDE_CODE_DOCUMENT).encode(), []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            found = self.path == urlsplit(CLAUDE_CODE_CLIENT).path
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(document) if found else 0))
            self.end_headers()
            self.wfile.write(document if found else b"")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((address, 443), Handler)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # --die-with-parent: the hub ends with bwrap when the test ends it.
        yield (
            [bwrap, "--dev-bind", "/", "/", "--ro-bind", str(hosts), "/etc/hosts", "--die-with-parent", "--"],
            cert,
            hits,
        )
    finally:
        server.shutdown()
        server.server_close()


async def test_the_real_claude_code_connects_with_its_own_client_and_the_browser_step_in_chromium(
    world: World, browser: Any, shots: Path, tmp_path: Path
) -> None:
    """Claude Code's default: its client is Claude's metadata document, which the hub fetches from claude.ai
    (here a stand-in serving the document Claude publishes, the hub alone resolving claude.ai to it)."""
    with stand_in_for_claude_ai(tmp_path) as (wrap, claude_ai_cert, fetched):
        env = {"AGENT_ROOMS_OAUTH_ALLOW_LOOPBACK_CIMD_FOR_TESTS": str(claude_ai_cert)}
        async with hub_with_chat(world, tmp_path, env=env, wrap=wrap) as (hub, claude):
            shown = {"client-name": "Claude Code", "client-host": "claude.ai"}
            url = await log_in(claude, hub, world, browser, shots / "30-claude-code-own-client.png", shown)
            query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
            assert query["client_id"] == CLAUDE_CODE_CLIENT, query
            assert (query["response_type"], query["code_challenge_method"]) == ("code", "S256"), query
            assert query["resource"] == hub.mcp and set(query["scope"].split()) <= {"read", "post", "task"}
            # Its loopback callback has a port; the document lists none: any port is taken (RFC 8252 §7.3).
            callback = urlsplit(query["redirect_uri"])
            assert (callback.scheme, callback.hostname, callback.path) == ("http", "localhost", "/callback"), query
            assert callback.port is not None and fetched == [urlsplit(CLAUDE_CODE_CLIENT).path]
            await acts_as_chat_until_revoked(claude, world)


async def test_the_real_claude_code_connects_with_a_client_registered_in_advance(
    world: World, browser: Any, shots: Path, tmp_path: Path
) -> None:
    """Where the hub cannot reach claude.ai, Claude Code's own client is refused; a client registered at
    /register and given to `claude mcp add --client-id` connects instead."""
    from selenium.webdriver.common.by import By

    async with hub_with_chat(world, tmp_path) as (hub, claude):
        with claude.login():
            url = await claude.opened_url()
            assert parse_qs(urlsplit(url).query)["client_id"] == [CLAUDE_CODE_CLIENT], url
            browser.get(url)
            page = browser.find_element(By.TAG_NAME, "body").text
            if not browser.find_elements(By.ID, "authorize-login"):  # the login page: the hub fetched it
                # No internet here: the document cannot be fetched, and the client is refused, not let in.
                assert "invalid_client" in page and "could not be fetched" in page, page

        async with httpx2.AsyncClient(verify=ssl.create_default_context(cafile=str(claude.cert))) as http:
            registered = await http.post(
                f"{hub.base}/register",
                json={"client_name": "Claude Code", "redirect_uris": ["http://localhost/callback"],
                      "token_endpoint_auth_method": "none", "application_type": "native"},
            )  # fmt: skip
        assert registered.status_code == 201, registered.text
        client_id = registered.json()["client_id"]
        await claude.run("mcp", "remove", SERVER)
        flags = ["--client-id", client_id, "--callback-port", str(free_port())]
        added = await claude.run("mcp", "add", "--transport", "http", *flags, SERVER, hub.mcp)
        assert f"Added HTTP MCP server {SERVER}" in added, added

        shown = {
            "client-name": "Claude Code",
            "unverified": "(unverified: this name is what the client registered itself as)",
        }
        url = await log_in(claude, hub, world, browser, shots / "31-claude-code-registered-client.png", shown)
        assert parse_qs(urlsplit(url).query)["client_id"] == [client_id], url
        await acts_as_chat_until_revoked(claude, world)
