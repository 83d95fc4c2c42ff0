"""The owner console in a real browser (issue 16): Debian's Chromium driven by its chromedriver through
Selenium, against a real `serve --http` process whose hub wakes agents with the fake CLIs.

Nothing downloads a browser: without /usr/bin/chromium and chromedriver these tests skip and say so, unless
AGENT_ROOMS_REQUIRE_BROWSER=1 (set by .ci/run where it installed them), when they fail instead. Screenshots of
each page go to AGENT_ROOMS_SCREENSHOTS, or `console-screenshots` under the test run's base directory.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import ssl
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from agent_rooms_mcp.owner_actions import perform
from agent_rooms_mcp.principals import Human
from tests.conftest import OPERATOR, World
from tests.hubprocess import free_port, serve_http
from tests.test_public import self_signed
from tests.wakeworld import Fakes, runs, until, wake_env

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1100,900",
)
# Another owner's words, on every page that shows them: each would run script, load something or hide text
# if it reached the page as markup.
XSS = [
    "<script>window.__pwned = 1; alert('script')</script>",
    "<img src=x onerror=\"window.__pwned = 2; alert('img')\">",
    "<a href=\"javascript:alert('link')\" id=evil-link>click me</a>",
    '<svg onload="window.__pwned = 3"><circle r=9 /></svg>',
    '<style>body { display: none !important }</style><div style="background:url(/console/pwned)">css</div>',
    "<iframe src=\"javascript:alert('frame')\"></iframe>",
    "\u202eexe.txt\u202c innocent \u2066RTL\u2069",
    "\"><script>alert('attr')</script>",
]


def _browser_problem() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is not installed (apt-get install chromium chromium-driver)"
    return None


def _require_browser() -> None:
    problem = _browser_problem()
    if problem is None:
        return
    if os.environ.get("AGENT_ROOMS_REQUIRE_BROWSER") == "1":
        pytest.fail(f"AGENT_ROOMS_REQUIRE_BROWSER=1 but {problem}")
    pytest.skip(f"the console's browser tests need Chromium: {problem}")


@pytest.fixture
def browser() -> Iterator[Any]:
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="console-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    # The OAuth test serves the hub behind a certificate made for that test alone; no other test uses TLS.
    options.add_argument("--ignore-certificate-errors")
    # The performance log holds every response's headers: the CSP is checked on each page the browser got.
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("AGENT_ROOMS_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.getbasetemp() / "console-screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _wait(driver: Any, check: Any, what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    # Generous: only to end a hang on a loaded machine, never a claim about speed.
    return WebDriverWait(driver, 90, poll_frequency=0.2).until(check, message=what)


def _no_alert(driver: Any) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        text = driver.switch_to.alert.text
    except NoAlertPresentException:
        return
    raise AssertionError(f"a dialog opened: {text!r}")


def _html_responses(driver: Any) -> list[dict[str, Any]]:
    """The responses to every page the browser loaded since the last call (from its performance log)."""
    found = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.responseReceived" and message["params"]["type"] == "Document":
            found.append(message["params"]["response"])
    return found


@contextmanager
def _foreign_page(action: str, token_id: str) -> Iterator[str]:
    """A page with a form posting to `action`, served from another origin (another port of this host)."""
    page = (
        f"<!doctype html><form method=post action='{action}'>"
        f"<input name=token_id value='{token_id}'><button id=go>go</button></form>"
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/form"
    finally:
        server.shutdown()
        server.server_close()


async def _mint(world: World, owner: str, base: str) -> str:
    async with world.hub() as hub:
        link = await perform(hub, Human(OPERATOR), "console.link", {"owner": owner, "base_url": base})
    return str(link.url)  # type: ignore[attr-defined]


async def _call(world: World, agent: str, tool: str, args: dict[str, Any]) -> Any:
    async with world.client(agent) as c:
        return await c.call_tool(tool, args)


@pytest.mark.invariant(40, 96)
async def test_an_owner_runs_the_console_in_a_real_browser(
    woken: World,
    fakes: Fakes,
    browser: Any,
    shots: Path,
) -> None:
    from selenium.webdriver.common.by import By

    world = woken
    fakes.scenario("hang")  # a woken run stays live until it is stopped
    async with world.hub() as hub:
        await hub.rooms.add_agent(OPERATOR, "shared", "alice-bot")
    await world.trust("alice", "bob")  # bob's agents may propose work to alice's
    # Two proposals wait on alice: bob's agent asks to wake alice-bot, and gives alice-claude a task.
    woke = await _call(world, "bob-claude", "post_message", {"room": "shared", "text": "@alice-bot please run"})
    assert woke.structured_content["mentions"][0]["outcome"] == "pending_consent", woke.structured_content
    task = await _call(
        world, "bob-claude", "create_task", {"room": "shared", "title": "rewrite it", "assignee": "alice-claude"}
    )
    assert task.structured_content["consent_state"] == "pending"
    wake_id = woke.structured_content["mentions"][0]["proposal_id"]
    task_id = task.structured_content["proposal_id"]
    # The XSS corpus, posted by another owner's agent: messages, task titles, file names.
    for i, payload in enumerate(XSS):
        await _call(world, "bob-claude", "post_message", {"room": "shared", "text": payload})
        await _call(world, "bob-claude", "create_task", {"room": "shared", "title": payload[:200]})
        name = payload.replace("/", "_")[:100] + f"-{i}"
        await _call(world, "bob-claude", "share_file", {"room": "shared", "name": name, "content": "x"})

    async with serve_http(world.settings.home, env=wake_env(fakes)) as served:
        base = served.base
        # Log in by link: the GET shows one button, the POST logs in.
        link = await _mint(world, "alice", base)
        browser.get(link)
        browser.save_screenshot(str(shots / "01-login.png"))
        browser.find_element(By.ID, "login").click()
        _wait(browser, lambda d: d.find_elements(By.ID, "logout"), "logged in")
        browser.save_screenshot(str(shots / "02-home.png"))
        assert "What needs you, alice" in browser.page_source
        cookie = browser.get_cookie("agent-rooms-console")
        assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert browser.execute_script("return document.cookie") == ""  # HttpOnly: no script reads it

        # Consents: accept the wake, and see its run start.
        browser.get(base + "/console/consents")
        browser.save_screenshot(str(shots / "03-consents.png"))
        browser.find_element(By.CSS_SELECTOR, f"#proposal-{wake_id} button.accept").click()
        _wait(browser, lambda d: d.find_elements(By.ID, "done"), "the decision is shown")
        # Reject the task, with a reason.
        form = browser.find_element(By.CSS_SELECTOR, f"#proposal-{task_id}")
        form.find_element(By.CSS_SELECTOR, "input.reason").send_keys("not this week")
        form.find_element(By.CSS_SELECTOR, "button.reject").click()
        _wait(browser, lambda d: d.find_elements(By.ID, "no-pending"), "nothing left pending")
        states = {
            r["proposal_id"]: (r["state"], r["decided_via"], r["reason"]) for r in world.sql("SELECT * FROM proposals")
        }
        assert states[wake_id] == ("accepted", "console", None)
        assert states[task_id] == ("rejected", "console", "not this week")

        # Runs: the live run shows up on the page while we watch (the served script polls runs.json).
        browser.get(base + "/console/runs")
        _wait(browser, lambda d: "running" in d.find_element(By.ID, "live").text, "the run is live")
        browser.save_screenshot(str(shots / "04-runs.png"))
        [run] = runs(world, "alice-bot")
        browser.find_element(By.CSS_SELECTOR, f'tr[data-run="{run["run_id"]}"] a.stop').click()
        browser.save_screenshot(str(shots / "05-stop-confirm.png"))
        browser.find_element(By.ID, "confirm-stop").click()
        _wait(browser, lambda d: d.find_elements(By.ID, "done"), "the stop is asked")
        await until(lambda: runs(world, "alice-bot")[0]["state"] == "stopped", "the run stops")
        browser.get(base + f"/console/run?id={run['run_id']}")
        browser.save_screenshot(str(shots / "06-run-log.png"))

        # Agents: revoke alice-claude's token; its next MCP call is refused.
        browser.get(base + "/console/agents")
        browser.save_screenshot(str(shots / "07-agents.png"))
        token_id = world.token_ids["alice-claude"]
        row = browser.find_element(By.XPATH, f"//code[text()='{token_id}']/ancestor::tr")
        row.find_element(By.CSS_SELECTOR, "button.revoke").click()
        _wait(browser, lambda d: d.find_elements(By.ID, "done"), "the revoke is shown")
        refused = await _call(world, "alice-claude", "whoami", {})
        assert refused.is_error

        # Another owner's words: shown as marked text on every page, running nothing, loading nothing.
        _html_responses(browser)  # drop what came before
        for name, page in [("08-rooms", "/console/rooms"), ("09-room", "/console/room?name=shared"),
                           ("10-grants", "/console/grants"), ("11-devices", "/console/devices"),
                           ("12-audit", "/console/audit"), ("13-home", "/console/")]:  # fmt: skip
            browser.get(base + page)
            _no_alert(browser)
            browser.save_screenshot(str(shots / f"{name}.png"))
            assert browser.execute_script("return window.__pwned === undefined")
            scripts = browser.execute_script("return [...document.scripts].map(s => s.src)")
            assert all(s.startswith(base + "/console/static/") for s in scripts), scripts
            assert not browser.find_elements(By.CSS_SELECTOR, "main img, main svg, main iframe, main style, #evil-link")
            loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
            # Only the console's own files (and the browser's own favicon probe): no payload fetched anything.
            assert all(u.startswith(base + "/console/static/") or u == base + "/favicon.ico" for u in loaded), loaded
            assert browser.find_element(By.TAG_NAME, "body").is_displayed()
        room = browser.get(base + "/console/room?name=shared") or browser.find_element(By.TAG_NAME, "main").text
        for payload in ("<script>window.__pwned = 1", "<svg onload=", "[U+202E]exe.txt"):
            assert payload in room, payload
        assert len(browser.find_elements(By.CSS_SELECTOR, ".message .foreign")) >= len(XSS)
        pages = _html_responses(browser)
        assert pages and all("frame-ancestors 'none'" in {k.lower(): v for k, v in r["headers"].items()}
                             ["content-security-policy"] for r in pages)  # fmt: skip
        browser.save_screenshot(str(shots / "09-room-xss.png"))

        # A form posted from another origin is refused in the browser too, and changes nothing: here a page on
        # another port of this host (same-site, not same-origin: a browser would send a Lax cookie along).
        token_id = world.token_ids["alice-codex"]
        with _foreign_page(base + "/console/tokens/revoke", token_id) as foreign:
            browser.get(foreign)
            browser.find_element(By.ID, "go").click()
            _wait(browser, lambda d: "CROSS_ORIGIN" in d.page_source, "the console refuses it")
        browser.save_screenshot(str(shots / "14-cross-origin.png"))
        (token,) = world.sql("SELECT revoked_at FROM tokens WHERE token_id = ?", (token_id,))
        assert token["revoked_at"] is None

        # At phone width every page still fits: nothing wider than the screen but tables, which scroll.
        browser.set_window_size(390, 844)
        for name, page in [("16-phone-home", "/console/"), ("17-phone-room", "/console/room?name=shared")]:
            browser.get(base + page)
            browser.save_screenshot(str(shots / f"{name}.png"))
            width = browser.execute_script("return document.documentElement.scrollWidth")
            assert width <= browser.execute_script("return window.innerWidth"), (page, width)
        browser.set_window_size(1100, 900)

        # Log out; the console asks for a new link, and the used link does not bring the session back.
        browser.get(base + "/console/")
        browser.find_element(By.ID, "logout").click()
        _wait(browser, lambda d: d.find_elements(By.ID, "logged-out"), "logged out")
        browser.get(base + "/console/")
        # Waited for, as every other page here: right after the logout's own navigation, a page source read at once
        # was once empty.
        _wait(browser, lambda d: "agent-rooms console --owner" in d.page_source, "the console asks for a new link")
        browser.get(link)  # a used link offers no button any more (its POST is refused too: test_console.py)
        _wait(browser, lambda d: d.find_elements(By.ID, "login-failed"), "a used link is refused")
        assert not browser.find_elements(By.ID, "login")
        browser.save_screenshot(str(shots / "15-link-reused.png"))
        await anyio.sleep(0)


@contextmanager
def _loopback_catcher() -> Iterator[tuple[int, list[dict[str, str]]]]:
    """A native client's loopback redirect listener (RFC 8252 §7.3): the port it listens on, and the query of
    every request that reached /callback."""
    caught: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path == "/callback":
                caught.append({k: v[0] for k, v in parse_qs(parts.query).items()})
            body = b"<!doctype html><p id=caught>You can close this window.</p>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], caught
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.invariant(96, 97, 105)
async def test_a_client_is_approved_on_the_console_page_in_a_real_browser(
    world: World, browser: Any, shots: Path, tmp_path: Path
) -> None:
    """The Claude.ai connector's authorize step end to end against a served hub behind TLS: a scripted client
    registers, the browser arrives at /authorize from it, the owner logs in by a console link and approves
    as their chat agent, the browser lands on the client's loopback redirect, and the client's token acts
    as that agent at /mcp."""
    from selenium.webdriver.common.by import By

    async with world.hub() as hub:
        chat = {"handle": "alice-chat", "owner": "alice", "tool": "chat", "scopes": "read,post"}
        await perform(hub, Human(OPERATOR), "agent.add", chat)
    cert, key = self_signed(tmp_path)
    port = free_port()
    issuer = f"https://localhost:{port}"
    flags = ["--public-url", issuer, "--tls-cert", str(cert), "--tls-key", str(key)]
    tls = ssl.create_default_context(cafile=str(cert))
    with _loopback_catcher() as (callback_port, caught):
        async with (
            serve_http(world.settings.home, *flags, port=port, base="https://localhost"),
            httpx2.AsyncClient(verify=tls, base_url=issuer) as http,
        ):
            # The client registers with the loopback path; it listens on a port of its own choosing.
            registered = await http.post(
                "/register",
                json={
                    "client_name": "Scripted CLI",
                    "redirect_uris": ["http://127.0.0.1/callback"],
                    "token_endpoint_auth_method": "none",
                    "application_type": "native",
                },
            )
            assert registered.status_code == 201, registered.text
            client_id = registered.json()["client_id"]
            redirect_uri = f"http://127.0.0.1:{callback_port}/callback"
            verifier = secrets.token_urlsafe(48)
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            query = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri,
                     "code_challenge": challenge, "code_challenge_method": "S256", "state": "browser-1",
                     "scope": "read post task", "resource": issuer + "/mcp"}  # fmt: skip

            # Not logged in: the page says how; the login by link then comes back to this request.
            browser.get(issuer + "/authorize?" + urlencode(query))
            _wait(browser, lambda d: d.find_elements(By.ID, "authorize-login"), "the log-in-to-approve page")
            browser.get(await _mint(world, "alice", issuer))
            browser.find_element(By.ID, "login").click()
            _wait(browser, lambda d: d.find_elements(By.ID, "approve"), "the approval page after the login")
            assert browser.find_element(By.ID, "unverified").is_displayed()
            assert browser.find_element(By.ID, "client-name").text == "Scripted CLI"
            assert browser.find_element(By.ID, "redirect").text == f"http://127.0.0.1:{callback_port}"
            assert browser.find_element(By.ID, "loopback-warning").is_displayed()
            assert not browser.find_elements(By.CSS_SELECTOR, "#agent-bob-claude, main img")
            # The chat agent comes first and is chosen; only the scopes it holds are ticked.
            assert browser.find_element(By.ID, "agent-alice-chat").is_selected()
            ticked = {s: browser.find_element(By.ID, f"scope-{s}").is_selected() for s in ("read", "post", "task")}
            assert ticked == {"read": True, "post": True, "task": False}
            browser.save_screenshot(str(shots / "20-authorize.png"))
            browser.find_element(By.ID, "approve").click()
            _wait(browser, lambda d: caught, "the browser reaches the client's loopback redirect")
            [params] = caught
            assert params["state"] == "browser-1" and params["iss"] == issuer, params

            exchanged = await http.post(
                "/token",
                data={
                    "grant_type": "authorization_code",
                    "code": params["code"],
                    "redirect_uri": redirect_uri,
                    "client_id": client_id,
                    "code_verifier": verifier,
                    "resource": issuer + "/mcp",
                },
            )
            assert exchanged.status_code == 200, exchanged.text
            bearer = {"Authorization": f"Bearer {exchanged.json()['access_token']}"}
            async with (
                httpx2.AsyncClient(verify=tls, headers=bearer) as mcp_http,
                Client(streamable_http_client(issuer + "/mcp", http_client=mcp_http)) as c,
            ):
                who = (await c.call_tool("whoami", {})).structured_content
            assert who["agent"]["handle"] == "alice-chat" and sorted(who["scopes"]) == ["post", "read"], who
    [row] = [r for r in world.audit_rows() if r["action"] == "oauth.approve"]
    assert (row["actor_kind"], row["via"]) == ("owner", "console")
