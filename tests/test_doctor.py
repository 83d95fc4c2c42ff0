"""`agent-rooms doctor` (DESIGN §9.3, §9.5): each problem planted in a real home, or in the flags `serve --http`
would be given, is reported under its own check id with its fix, and fails the command (exit 1).

The command runs in-process on a real home; its public-mode verdicts come from the rule `serve` applies, so
each flag set doctor fails, `serve` refuses too (checked below for every case that `serve` judges)."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from nacl.signing import SigningKey

from agent_rooms_mcp.auth.paseto import k4_pid
from agent_rooms_mcp.cli import cli
from agent_rooms_mcp.encoding import b64url_encode
from agent_rooms_mcp.listener import only_listener
from agent_rooms_mcp.principals import Human
from agent_rooms_mcp.wake.cgroups import Mechanism, detect
from tests.conftest import OPERATOR, World
from tests.fakes.common import write_wrapper
from tests.hubprocess import free_port, serve_http
from tests.test_public import self_signed
from tests.wakeworld import AS_ROOT, RUN_AS, post, sandbox_problem

HOME_CHECKS = ["home.dir", "home.database", "home.issuer_key", "home.master_key", "home.tokens"]
PUBLIC_CHECKS = ["public.url", "public.proxy", "public.tls", "public.bind"]
# A hub serves the console: plain-HTTP loopback warns that its sessions are short (DESIGN §9.2).
CONSOLE_CHECKS = ["console.cookie"]
# This machine's answer: a run's cgroup where the OS grants one (ok), else the process-group sweep (a warning).
CGROUP_STATUS = "warn" if detect().mechanism is Mechanism.PROCESS_GROUP else "ok"


# Woken CLIs: as root, which user they run as; everywhere, whether the sandbox starts.
# (wake.network is judged on the host's own powers: tests/test_egress.py drives it both ways.)
WAKE_CHECKS = [*(["wake.run_as"] if AS_ROOT else []), "wake.sandbox", "wake.network", "wake.cgroup"]
# What the database holds (agents.cli is judged on the host: whether claude and codex are installed here).
HUB_CHECKS = ["agents.cli", "agents.workdir", "runs.stale", "tokens.expiry", "rooms.invoke"]
CLIENT_CHECKS = ["clients.entries", "clients.token", "clients.duplicate", "clients.literal_token", "clients.connector"]
ALL_CHECKS = HOME_CHECKS + PUBLIC_CHECKS + CONSOLE_CHECKS + WAKE_CHECKS + HUB_CHECKS + CLIENT_CHECKS


def invoke(args: list[str], env: dict[str, str]) -> Result:
    """The command, on a thread of its own: doctor opens the hub with an event loop of its own, which cannot
    start on the thread of an async test's loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(CliRunner().invoke, cli, args, env=env).result()


def doctor(home: Path, *flags: str, **env: str) -> tuple[int, dict[str, Any]]:
    # The clients' configuration is read from a HOME of the test's own, never the person's running it.
    user = home.parent / "user"
    user.mkdir(exist_ok=True)
    clients = {"HOME": str(user), "CLAUDE_CONFIG_DIR": "", "CODEX_HOME": "", "AGENT_ROOMS_TOKEN": ""}
    # The suite's tokens live a day: unless a test says otherwise, a day ahead is not "soon".
    clients["AGENT_ROOMS_LIMIT_DOCTOR_TOKEN_WARN_S"] = "3600"
    env = {"AGENT_ROOMS_HOME": str(home), "AGENT_ROOMS_RUN_AS": RUN_AS, **clients, **env}
    done = invoke(["doctor", "--json", *flags], env)
    return done.exit_code, json.loads(done.stdout)


def statuses(report: dict[str, Any]) -> dict[str, str]:
    """The home's and the flags' checks; the wake.* ones and agents.cli are judged on the host (tested below)."""
    return {
        c["id"]: c["status"] for c in report["checks"] if not c["id"].startswith("wake.") and c["id"] != "agents.cli"
    }


def the(report: dict[str, Any], check_id: str) -> dict[str, Any]:
    return next(c for c in report["checks"] if c["id"] == check_id)


def serve_refuses(home: Path, *flags: str) -> bool:
    done = CliRunner().invoke(cli, ["serve", "--http", "--port", "1", *flags], env={"AGENT_ROOMS_HOME": str(home)})
    return done.exit_code == 2


async def test_a_healthy_home_on_loopback_passes_every_check(world: World) -> None:
    code, report = doctor(world.settings.home)
    assert code == 0 and report["ok"], report
    assert [c["id"] for c in report["checks"]] == ALL_CHECKS
    # Plain-HTTP loopback: the console's cookie reaches every port of the host, which doctor says (a warning).
    assert {k: v for k, v in statuses(report).items() if v != "ok"} == {"console.cookie": "warn"}
    assert "15 minutes idle" in the(report, "console.cookie")["message"]
    if sandbox_problem() is None:
        # (the suite's run-as user is `nobody`, which doctor rightly warns is shared)
        wake = {c["id"]: c["status"] for c in report["checks"] if c["id"] in ("wake.sandbox", "wake.network")}
        assert wake == {"wake.sandbox": "ok", "wake.network": "ok"}
    assert the(report, "wake.cgroup")["status"] == CGROUP_STATUS
    # Text for people: one line per check.
    env = {
        "AGENT_ROOMS_HOME": str(world.settings.home),
        "AGENT_ROOMS_RUN_AS": RUN_AS,
        "HOME": str(world.settings.home.parent / "user"),
    }
    text = invoke(["doctor"], env)
    assert text.exit_code == 0 and text.stdout.count("\nok ") + text.stdout.count("\nwarn ") == len(ALL_CHECKS) - 1


async def test_a_sandbox_that_cannot_start_is_a_warning_naming_bubblewrap(world: World, tmp_path: Path) -> None:
    """Where bubblewrap is missing (here: named wrong), every sandboxed wake would end sandbox_unavailable: doctor
    says so, with the fix. A warning, not a failure: a hub need not wake anyone."""
    code, report = doctor(world.settings.home, AGENT_ROOMS_BWRAP=str(tmp_path / "no-bwrap"))
    assert code == 0 and report["ok"]
    sandbox = the(report, "wake.sandbox")
    assert sandbox["status"] == "warn" and "sandbox_unavailable" in sandbox["message"]
    assert "bubblewrap" in sandbox["fix"] and "--sandbox off" in sandbox["fix"]


@pytest.mark.skipif(not AS_ROOT, reason="only a hub running as root needs AGENT_ROOMS_RUN_AS")
async def test_a_root_hub_without_a_run_as_user_is_warned_every_wake_is_refused(world: World) -> None:
    for run_as, said in (("", "root_refused"), ("no-such-user-here", "names no user"), ("root", "is root")):
        _, report = doctor(world.settings.home, AGENT_ROOMS_RUN_AS=run_as)
        check = the(report, "wake.run_as")
        assert check["status"] in ("warn", "fail") and said in check["message"], (run_as, check)


@pytest.mark.invariant(20)
@pytest.mark.parametrize(
    "flags, failed, said, fix",
    [
        (["--public-url", "http://hub.example"], {"public.url"}, "https://", "--public-url https://"),
        (["--trust-proxy", "1.1.1.1"], {"public.proxy"}, "loopback or private", "--trust-proxy 127.0.0.1"),
        (["--trust-proxy", "proxy.lan"], {"public.proxy"}, "IP address", "--trust-proxy 127.0.0.1"),
        (["--host", "0.0.0.0"], {"public.bind"}, "--public-url https://HUB", "bind 127.0.0.1"),
        (["--host", "0.0.0.0", "--public-url", "https://hub.example"], {"public.bind"}, "without TLS", "--tls-cert"),
        # A proxy across the internet is no proxy: the bind is judged without it, and fails too.
        (
            ["--host", "0.0.0.0", "--public-url", "https://hub.example", "--trust-proxy", "8.8.8.8"],
            {"public.proxy", "public.bind"},
            "8.8.8.8",
            "private network",
        ),
        (
            ["--host", "0.0.0.0", "--public-url", "http://hub.example", "--trust-proxy", "127.0.0.1"],
            {"public.url", "public.bind"},
            "https://",
            "https://HOST",
        ),
    ],
)
async def test_each_unsafe_exposure_fails_under_its_own_id_with_its_fix(
    world: World, flags: list[str], failed: set[str], said: str, fix: str
) -> None:
    code, report = doctor(world.settings.home, *flags)
    assert code == 1 and not report["ok"]
    assert {k for k, v in statuses(report).items() if v == "fail"} == failed
    first = the(report, sorted(failed, key=PUBLIC_CHECKS.index)[0])
    assert said in first["message"] and fix in first["fix"], first
    # Doctor judges by serve's own rule: what it fails, serve refuses to start with.
    assert serve_refuses(world.settings.home, *flags)


@pytest.mark.invariant(20)
async def test_a_public_hub_behind_a_named_private_proxy_passes(world: World) -> None:
    flags = ["--host", "0.0.0.0", "--public-url", "https://hub.example", "--trust-proxy", "127.0.0.1,10.0.0.2"]
    code, report = doctor(world.settings.home, *flags)
    assert code == 0 and set(statuses(report).values()) == {"ok"}, report
    assert "beyond loopback" in the(report, "public.bind")["message"]


async def test_a_public_url_over_an_unnamed_proxy_warns_and_passes(world: World) -> None:
    code, report = doctor(world.settings.home, "--public-url", "https://hub.example")
    assert code == 0 and report["ok"]
    bind = the(report, "public.bind")
    assert bind["status"] == "warn" and "--trust-proxy 127.0.0.1" in bind["fix"]


@pytest.mark.invariant(20)
async def test_tls_files_must_pair_be_readable_private_and_belong_together(world: World, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    public = ["--host", "0.0.0.0", "--public-url", "https://hub.example"]
    code, report = doctor(world.settings.home, *public, "--tls-cert", str(cert), "--tls-key", str(key))
    assert code == 0 and set(statuses(report).values()) == {"ok"}, report

    def tls_failure(*flags: str) -> dict[str, Any]:
        code, report = doctor(world.settings.home, *public, *flags)
        assert code == 1 and statuses(report)["public.tls"] == "fail", report
        # Without usable TLS the bind beyond loopback fails as well.
        assert statuses(report)["public.bind"] == "fail"
        return the(report, "public.tls")

    assert "--tls-key" in tls_failure("--tls-cert", str(cert))["message"]
    missing = tls_failure("--tls-cert", str(cert), "--tls-key", str(tmp_path / "nope.pem"))
    assert "nope.pem" in missing["message"]
    os.chmod(key, 0o644)
    loose = tls_failure("--tls-cert", str(cert), "--tls-key", str(key))
    assert "0o644" in loose["message"] and loose["fix"] == f"chmod 600 {key}"
    os.chmod(key, 0o600)
    # A key that is not the certificate's: both files fine alone, useless together.
    (tmp_path / "other").mkdir()
    other_key = self_signed(tmp_path / "other")[1]
    mismatched = tls_failure("--tls-cert", str(cert), "--tls-key", str(other_key))
    assert str(other_key) in mismatched["message"] and "belongs" in mismatched["fix"]


def loose_token(path: Path) -> None:
    path.write_text("art_x")
    os.chmod(path, 0o644)


@pytest.mark.parametrize(
    "plant, check_id, fix",
    [
        (lambda s: os.chmod(s.home, 0o755), "home.dir", "chmod 700"),
        (lambda s: os.chmod(s.tokens_dir, 0o750), "home.dir", "chmod 700"),
        (lambda s: os.chmod(s.db_path, 0o644), "home.database", "chmod 600"),
        (lambda s: os.chmod(s.issuer_key_path, 0o640), "home.issuer_key", "chmod 600"),
        (lambda s: s.issuer_key_path.write_text("k4.secret.garbage"), "home.issuer_key", "from a backup"),
        (lambda s: os.chmod(s.master_key_path, 0o604), "home.master_key", "chmod 600"),
        (lambda s: s.master_key_path.unlink(), "home.master_key", "agent-rooms init"),
        (lambda s: loose_token(s.tokens_dir / "x.token"), "home.tokens", "chmod 600"),
        (lambda s: s.db_path.unlink(), "home.database", "agent-rooms init"),
    ],
)
async def test_each_unsafe_file_in_the_home_fails_under_its_own_id(
    world: World, plant: Any, check_id: str, fix: str
) -> None:
    plant(world.settings)
    code, report = doctor(world.settings.home)
    assert code == 1 and not report["ok"]
    assert [c["id"] for c in report["checks"] if c["status"] == "fail"] == [check_id], report
    assert fix in the(report, check_id)["fix"]


async def test_a_missing_home_fails_and_says_to_init(tmp_path: Path) -> None:
    code, report = doctor(tmp_path / "nowhere")
    assert code == 1 and the(report, "home.dir")["fix"] == "run: agent-rooms init"


async def test_an_owners_machine_is_checked_for_its_device_credential(tmp_path: Path) -> None:
    home = tmp_path / "laptop"
    home.mkdir(mode=0o700)
    device = home / "device.json"
    device.write_text("{}")
    os.chmod(device, 0o600)
    code, report = doctor(home)
    assert statuses(report)["home.device"] == "ok" and "home.database" not in statuses(report)
    # Private, but no device file: the machine is told to log in again, and nothing more is tried.
    assert code == 1 and the(report, "device.file")["fix"].startswith("log in again"), report
    assert not any(c.startswith("listen.") for c in statuses(report))
    os.chmod(device, 0o644)
    code, report = doctor(home)
    assert code == 1 and the(report, "home.device")["fix"] == f"chmod 600 {device}"


# An owner's machine (DESIGN §9.1): a real hub process, and a home enrolled with it by `login`.

LISTENER_CHECKS = ["device.hub", "device.credential", "device.issuer_key", "listen.policy", "listen.workdirs",
                   "listen.running"]  # fmt: skip


async def logged_in(world: World, url: str, root: Path) -> Path:
    """Bob's laptop: a home of its own, logged in to the hub at `url` by code, and a listen.toml whose workdir
    exists."""
    async with world.hub() as hub:
        made = await hub.devices.enroll(OPERATOR, "bob", url)
    home = root / "laptop"
    done = CliRunner().invoke(cli, ["login", url, "--code", made.code, "--name", "laptop"],
                              env={"AGENT_ROOMS_HOME": str(home)})  # fmt: skip
    assert done.exit_code == 0, done.output
    (root / "work" / "app").mkdir(parents=True)
    policy = home / "listen.toml"
    policy.write_text(f'workdir_root = "{root / "work"}"\n[agents.bob-claude]\nworkdir = "{root / "work" / "app"}"\n')
    policy.chmod(0o600)
    return home


def failing(home: Path) -> dict[str, dict[str, Any]]:
    code, report = doctor(home)
    failed = {c["id"]: c for c in report["checks"] if c["status"] == "fail"}
    assert (code == 1) == bool(failed) and report["ok"] == (not failed), report
    return failed


async def test_an_owners_machine_is_checked_against_its_hub_and_by_its_listener_policy(
    world: World, tmp_path: Path
) -> None:
    async with serve_http(world.settings.home) as served:
        home = await logged_in(world, served.base, tmp_path)
        code, report = doctor(home)
        assert code == 0, report
        # No public.* checks: they judge the flags of a `serve` this machine does not run.
        assert list(statuses(report)) == ["home.dir", "home.device", *LISTENER_CHECKS]
        _, asked = doctor(home, "--host", "0.0.0.0")  # unless serve's flags are given: then they are judged
        assert set(PUBLIC_CHECKS) <= set(statuses(asked)) and statuses(asked)["public.bind"] == "fail"
        assert {k: v for k, v in statuses(report).items() if v != "ok"} == {"listen.running": "warn"}, report
        assert the(report, "listen.running")["fix"] == "run: agent-rooms listen"
        assert "laptop of bob" in the(report, "device.credential")["message"]
        # With a listener holding the home's lock (the very lock `listen` takes), it is seen running.
        with only_listener(home):
            code, report = doctor(home)
        assert code == 0 and set(statuses(report).values()) == {"ok"}, report


async def test_each_problem_of_an_owners_machine_fails_under_its_own_id_with_its_fix(
    world: World, tmp_path: Path
) -> None:
    async with serve_http(world.settings.home) as served:
        home = await logged_in(world, served.base, tmp_path)
        policy, device_file = home / "listen.toml", home / "device.json"
        good_policy, good_device = policy.read_text(), device_file.read_text()
        assert failing(home) == {}

        policy.chmod(0o644)
        assert failing(home)["listen.policy"]["fix"] == f"chmod 600 {policy}"
        policy.chmod(0o600)

        policy.write_text(good_policy + 'sandbx = "on"\n')
        [(check_id, check)] = failing(home).items()
        assert check_id == "listen.policy" and "sandbx" in check["message"], check
        policy.write_text(good_policy)

        (tmp_path / "work" / "app").rmdir()
        [(check_id, check)] = failing(home).items()
        assert check_id == "listen.workdirs" and str(tmp_path / "work" / "app") in check["message"], check
        assert "mkdir -p" in check["fix"]
        (tmp_path / "work" / "app").mkdir()

        def plant(**fields: str) -> None:
            device_file.write_text(json.dumps({**json.loads(good_device), **fields}))

        other = SigningKey.generate().verify_key
        plant(issuer_key=b64url_encode(bytes(other)))  # a key that is not the pinned id's
        [(check_id, check)] = failing(home).items()
        assert check_id == "device.issuer_key" and "log in again" in check["fix"], check
        plant(issuer_key=b64url_encode(bytes(other)), issuer_kid=k4_pid(other))  # the hub names another key
        [(check_id, check)] = failing(home).items()
        assert check_id == "device.issuer_key" and "now names issuer key" in check["message"], check

        plant(hub=f"http://127.0.0.1:{free_port()}")  # nobody answers there
        failed = failing(home)
        assert list(failed) == ["device.hub"] and "reachable" in failed["device.hub"]["fix"], failed
        device_file.write_text(good_device)
        assert failing(home) == {}

        async with world.hub() as hub:
            [laptop] = (await hub.devices.list_devices(Human(OPERATOR))).devices
            await hub.devices.revoke(Human(OPERATOR), laptop.device_id)
        [(check_id, check)] = failing(home).items()
        assert check_id == "device.credential" and "agent-rooms login" in check["fix"], check


async def test_doctor_names_the_run_containment_in_force_and_warns_when_it_is_the_sweep_only(world: World) -> None:
    code, report = doctor(world.settings.home)
    found = the(report, "wake.cgroup")
    assert found["message"].startswith(detect().mechanism.value)
    # Switched off: a warning that says what is lost and how to get it back, and no failure.
    code, report = doctor(world.settings.home, AGENT_ROOMS_CGROUP="off")
    off = the(report, "wake.cgroup")
    assert code == 0 and report["ok"] and off["status"] == "warn"
    assert off["message"].startswith("process-group sweep only") and "AGENT_ROOMS_CGROUP=off" in off["message"]
    assert "unset AGENT_ROOMS_CGROUP" in off["fix"]


# What the database holds, and the clients configured for it (DESIGN §9.5): each problem planted in a real
# hub, reported under its own id.


async def test_each_problem_in_the_hub_is_reported_under_its_own_id(world: World, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    write_wrapper("claude", bin_dir)
    write_wrapper("codex", bin_dir)
    clis = {"AGENT_ROOMS_CLAUDE_BIN": str(bin_dir / "claude"), "AGENT_ROOMS_CODEX_BIN": str(bin_dir / "codex")}
    code, report = doctor(world.settings.home, **clis)
    assert code == 0 and the(report, "agents.cli")["status"] == "ok"
    assert "2.1.330 (Claude Code)" in the(report, "agents.cli")["message"]
    workdir = tmp_path / "work"
    workdir.mkdir()
    async with world.hub() as hub:
        await hub.accounts.set_agent(OPERATOR, "alice-claude", workdir=str(workdir))
        # bob-codex holds invoke and sits in "shared" with alice: without its sandbox, her words reach a CLI
        # running with bob's permissions.
        await hub.accounts.set_agent(OPERATOR, "bob-codex", sandbox=False)
    workdir.rmdir()
    await post(world, "bob-claude", "@bob-codex look", room="bobs-den")  # queued: no supervisor runs here
    code, report = doctor(
        world.settings.home,
        AGENT_ROOMS_CLAUDE_BIN=str(tmp_path / "no-claude"),
        AGENT_ROOMS_LIMIT_DOCTOR_STALE_RUN_S="0",
        AGENT_ROOMS_LIMIT_DOCTOR_TOKEN_WARN_S=str(2 * 24 * 3600),
    )
    got = {c["id"]: c for c in report["checks"]}
    assert code == 1 and not report["ok"]
    assert got["agents.cli"]["status"] == "warn" and "no-claude" in got["agents.cli"]["message"]
    assert "cli_not_found" in got["agents.cli"]["message"]
    assert got["agents.workdir"]["status"] == "fail" and str(workdir) in got["agents.workdir"]["message"]
    assert "workdir_missing" in got["agents.workdir"]["message"]
    assert got["runs.stale"]["status"] == "warn" and "bob-codex, queued" in got["runs.stale"]["message"]
    assert got["tokens.expiry"]["status"] == "warn" and "8 token(s)" in got["tokens.expiry"]["message"]
    assert got["rooms.invoke"]["status"] == "warn" and got["rooms.invoke"]["message"].endswith("bob-codex in shared")
    failed = {k for k, v in statuses(report).items() if v == "fail"}
    assert failed == {"agents.workdir"}, report


async def test_client_drift_is_the_same_check_in_doctor_as_in_connect_check(world: World, tmp_path: Path) -> None:
    """One implementation: a client entry whose token was revoked fails `clients.token` in both."""
    user = world.settings.home.parent / "user"
    user.mkdir()
    bin_dir = tmp_path / "bin"
    write_wrapper("claude", bin_dir)
    env = {
        "AGENT_ROOMS_HOME": str(world.settings.home),
        "HOME": str(user),
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "AGENT_ROOMS_CLAUDE_BIN": str(bin_dir / "claude"),
        "CLAUDE_CONFIG_DIR": "",
        "AGENT_ROOMS_TOKEN": "",
    }
    assert invoke(["connect", "alice-claude", "--apply"], env).exit_code == 0
    token_id = json.loads(invoke(["token", "list", "alice-claude", "--json"], env).stdout)["tokens"][-1]["token_id"]
    assert invoke(["token", "revoke", token_id, "--json"], env).exit_code == 0
    code, report = doctor(world.settings.home, **env)
    check = json.loads(invoke(["connect", "--check", "--json"], env).stdout)["checks"]
    assert code == 1 and the(report, "clients.token") == next(c for c in check if c["id"] == "clients.token")
    assert the(report, "clients.token")["status"] == "fail" and "revoked" in the(report, "clients.token")["message"]


async def test_fix_tightens_the_homes_modes_and_nothing_else(world: World) -> None:
    home = world.settings.home
    token = home / "tokens" / "alice-claude.token"
    token.write_text("x\n")
    loose = {
        home: 0o755,
        home / "tokens": 0o750,
        token: 0o644,
        home / "hub.db": 0o640,
        home / "keys" / "issuer.paserk": 0o604,
    }
    for path, mode in loose.items():
        path.chmod(mode)
    elsewhere = home.parent / "not-ours.txt"
    elsewhere.write_text("x")
    elsewhere.chmod(0o644)
    (home / "tokens" / "link.token").symlink_to(elsewhere)
    code, report = doctor(home)
    assert code == 1 and {"home.dir", "home.database"} <= {k for k, v in statuses(report).items() if v == "fail"}
    code, report = doctor(home, "--fix")
    assert sorted(report["fixed"]) == sorted(f"chmod {700 if p.is_dir() else 600} {p}" for p in loose)
    for path in loose:
        assert os.stat(path).st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path
    # Through a link: nothing changed, and the link is still reported.
    assert elsewhere.stat().st_mode & 0o777 == 0o644
    assert the(report, "home.tokens")["status"] == "fail" and code == 1
    (home / "tokens" / "link.token").unlink()
    code, report = doctor(home)
    assert code == 0 and report["fixed"] == []
