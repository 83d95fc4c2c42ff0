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
document, https://claude.ai/oauth/claude-code-client-metadata, which the hub must fetch from claude.ai: a box
without the internet cannot, and the hub refuses the client (invalid_client). The flow is then finished the other
way Claude Code offers, a client registered in advance (`mcp add --client-id --callback-port`), and the
CLI's session reaches `whoami` as the agent the owner chose.
"""

from __future__ import annotations

import json
import os
import pty
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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
from tests.hubprocess import free_port, serve_http
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

        # Off this test's loop: the hub is another process, but the fake model's server and Chromium are not.
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
    """Every whoami answer the CLI showed its model, parsed."""
    found = []
    for call in api.messages():
        for message in call.body.get("messages") or []:
            content = message.get("content")
            for block in content if isinstance(content, list) else []:
                if block.get("type") != "tool_result":
                    continue
                inner = block.get("content")
                text = inner if isinstance(inner, str) else "".join(p.get("text", "") for p in inner or [])
                found.append(json.loads(text))
    return found


async def ar(world: World, *args: str) -> dict[str, Any]:
    """The operator's `agent-rooms` command on the served hub's home (in a thread: it runs an event loop)."""
    env = {"AGENT_ROOMS_HOME": str(world.settings.home)}
    done = await anyio.to_thread.run_sync(lambda: CliRunner().invoke(cli, [*args, "--json"], env=env))
    assert done.exit_code == 0, (args, done.output, done.exception)
    return dict(json.loads(done.stdout))


async def test_the_real_claude_code_connects_over_oauth_and_its_browser_step_runs_in_chromium(
    world: World, browser: Any, shots: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    async with world.hub() as hub:
        chat = {"handle": "alice-chat", "owner": "alice", "tool": "chat", "scopes": "read,post"}
        await perform(hub, Human(OPERATOR), "agent.add", chat)
    cert, key = self_signed(tmp_path)
    claude = Cli(tmp_path, cert)
    port = free_port()
    issuer = f"https://localhost:{port}"
    flags = ["--public-url", issuer, "--tls-cert", str(cert), "--tls-key", str(key)]
    async with serve_http(world.settings.home, *flags, port=port, base="https://localhost") as served:
        # Added as Claude Code's docs say; its probe follows the 401 to our metadata and asks for a login.
        added = await claude.run("mcp", "add", "--transport", "http", SERVER, served.mcp)
        assert f"Added HTTP MCP server {SERVER}" in added, added
        assert "Needs authentication" in await claude.health()

        # Its own client first: Claude's metadata document, PKCE S256, our resource and scopes, a loopback
        # callback. The hub then fetches that document from claude.ai.
        with claude.login():
            url = await claude.opened_url()
            query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
            assert query["client_id"] == CLAUDE_CODE_CLIENT, query
            assert (query["response_type"], query["code_challenge_method"]) == ("code", "S256"), query
            assert query["resource"] == served.mcp and set(query["scope"].split()) <= {"read", "post", "task"}
            callback = urlsplit(query["redirect_uri"])
            assert (callback.scheme, callback.hostname, callback.path) == ("http", "localhost", "/callback"), query
            assert url.startswith(f"{issuer}/authorize?"), url
            browser.get(url)
            shown = browser.find_element(By.TAG_NAME, "body").text
            if not browser.find_elements(By.ID, "authorize-login"):  # the login page: the hub fetched it
                # No internet here: the document cannot be fetched, and the client is refused, not let in.
                assert "invalid_client" in shown and "could not be fetched" in shown, shown

        # A client registered in advance, the way Claude Code offers for such servers (--client-id).
        async with httpx2.AsyncClient(verify=ssl.create_default_context(cafile=str(cert))) as http:
            registered = await http.post(
                f"{issuer}/register",
                json={"client_name": "Claude Code", "redirect_uris": ["http://localhost/callback"],
                      "token_endpoint_auth_method": "none", "application_type": "native"},
            )  # fmt: skip
        assert registered.status_code == 201, registered.text
        client_id = registered.json()["client_id"]
        await claude.run("mcp", "remove", SERVER)
        callback_port = str(free_port())
        flags = ["--client-id", client_id, "--callback-port", callback_port]
        added = await claude.run("mcp", "add", "--transport", "http", *flags, SERVER, served.mcp)
        assert f"Added HTTP MCP server {SERVER}" in added, added

        with claude.login() as (login, said):
            url = await claude.opened_url()
            assert parse_qs(urlsplit(url).query)["client_id"] == [client_id], url
            # The owner is not logged in: the page says how; the login by link comes back to the request.
            browser.get(url)
            _wait(browser, lambda d: d.find_elements(By.ID, "authorize-login"), "the log-in-to-approve page")
            browser.get(await _mint(world, "alice", issuer))
            browser.find_element(By.ID, "login").click()
            _wait(browser, lambda d: d.find_elements(By.ID, "approve"), "the approval page after the login")
            assert browser.find_element(By.ID, "client-name").text == "Claude Code"
            assert browser.find_element(By.ID, "unverified").is_displayed()
            assert browser.find_element(By.ID, "redirect").text == f"http://localhost:{callback_port}"
            assert browser.find_element(By.ID, "agent-alice-chat").is_selected()
            browser.save_screenshot(str(shots / "30-claude-code-authorize.png"))
            browser.find_element(By.ID, "approve").click()
            # Chromium lands on the CLI's own callback listener, which exchanges the code and says so.
            await until(lambda: login.poll() is not None, "the CLI finishes its login")
            assert login.returncode == 0 and f'Authenticated with "{SERVER}"' in "".join(said), "".join(said)
            browser.save_screenshot(str(shots / "31-claude-code-callback.png"))

        assert "Connected" in await claude.health()
        # A session whose model calls whoami: the CLI's token acts as the chosen agent, with its scopes only.
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

        # The approval and the exchange are on the audit; the token the CLI got is alice-chat's only one.
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
