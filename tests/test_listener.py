"""Listeners (DESIGN §9.1): an owner's own machine wakes their agents. A real hub process (`serve --http`, its
own home) and the owner's machine (another AGENT_ROOMS_HOME and HOME, enrolled by code) running `agent-rooms
listen` as a process of its own, with the fake CLIs. Agents post through in-memory MCP sessions on the hub's
home; the served hub sees their commits as any second process would."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process

from agent_rooms_mcp.audit import Actor
from agent_rooms_mcp.principals import Human
from agent_rooms_mcp.services.stopping import stop_and_wait
from tests.conftest import World
from tests.hubprocess import free_port, serve_http
from tests.test_remote_cli import Machine
from tests.wakeworld import SANDBOX, Fakes, give_to_run_as, post, until, wake_env

OPERATOR = Actor("operator", "op", via="cli")
_CLI = [sys.executable, "-m", "agent_rooms_mcp"]


@asynccontextmanager
async def served(world: World, port: int | None = None) -> AsyncIterator[str]:
    """The hub's machine: `serve --http` on the world's home, its leases naming a host of its own."""
    async with serve_http(world.settings.home, env={"AGENT_ROOMS_HOST_ID": "hub-machine"}, port=port) as hub:
        yield hub.base


RUNS_IT = f"[agents.alice-bot]\n{SANDBOX}\n"


async def enroll(world: World, url: str, root: Path, name: str, rules: str = RUNS_IT) -> Machine:
    """Alice's machine: `owner enroll` on the hub's home, `login` from there, and its listen.toml."""
    async with world.hub() as hub:
        made = await hub.devices.enroll(OPERATOR, "alice", url)
    machine = Machine(root, name)
    done = await machine.ar("login", url, "--code", made.code, "--name", name)
    assert done.code == 0, done.err
    policy(machine, root, rules)
    return machine


def policy(machine: Machine, root: Path, text: str) -> Path:
    workdir_root = root / "work"
    (workdir_root / "app").mkdir(parents=True, exist_ok=True)
    give_to_run_as(workdir_root)
    path = machine.home / "listen.toml"
    path.write_text(f'workdir_root = "{workdir_root}"\n' + text.replace("ROOT", str(workdir_root)))
    path.chmod(0o600)
    return path


@asynccontextmanager
async def listener_process(env: dict[str, str], log: Path, *flags: str) -> AsyncIterator[Process]:
    """`agent-rooms listen` with what it prints going to `log` (shown when the test fails); stopped at the end
    as Ctrl-C would stop it, and killed if it does not end."""
    with log.open("ab") as out:
        proc = await anyio.open_process([*_CLI, "listen", *flags], env=env, stdout=out, stderr=out)
    async with proc:
        try:
            yield proc
        finally:
            print(log.read_text(errors="replace")[-6000:])  # shown when the test fails
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                with anyio.move_on_after(30):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()


@asynccontextmanager
async def listening(machine: Machine, fakes: Fakes, *flags: str) -> AsyncIterator[Process]:
    env = {**machine.env, **wake_env(fakes), "AGENT_ROOMS_HOST_ID": "owner-machine"}
    async with listener_process(env, machine.home.parent / "listen.log", *flags) as proc:
        yield proc


@asynccontextmanager
async def alice_listening(
    world: World, fakes: Fakes, tmp_path: Path, rules: str = RUNS_IT
) -> AsyncIterator[tuple[Machine, Process]]:
    """A hub process, Alice's machine enrolled with `rules` as its listen.toml, and her listener running."""
    async with served(world) as url:
        alice = await enroll(world, url, tmp_path, "alice-laptop", rules)
        async with listening(alice, fakes) as proc:
            yield alice, proc


def ended(world: World, agent: str) -> list[sqlite3.Row]:
    return world.sql(
        "SELECT r.* FROM runs r JOIN agents a ON a.agent_id = r.agent_id WHERE a.handle = ?"
        " AND r.state IN ('completed', 'failed', 'stopped', 'lost', 'withdrawn', 'expired') ORDER BY r.created_at",
        (agent,),
    )


@pytest.fixture
async def remote_world(woken: World) -> World:
    """The wake world with alice no longer local: the hub never spawns her agents, her listener does."""
    async with woken.hub() as hub:
        await hub.accounts.set_owner_local(OPERATOR, "alice", False)
    return woken


@pytest.mark.invariant(92, 94, 99)
async def test_a_listener_wakes_its_owners_agent_on_its_own_machine(
    remote_world: World, fakes: Fakes, tmp_path: Path
) -> None:
    world = remote_world
    fakes.scenario("reply")
    async with alice_listening(world, fakes, tmp_path, RUNS_IT + 'workdir = "ROOT/app"\n') as (alice, _):
        posted = await post(world, "alice-claude", "@alice-bot please answer")
        assert posted["mentions"][0]["outcome"] == "queued"
        [run] = await until(lambda: ended(world, "alice-bot"), "the listener's run ends")
    assert (run["state"], run["outcome"]) == ("completed", "ok"), dict(run)
    # It ran on the owner's machine: the listener's host and device, its run directory and events there.
    assert run["lease_host"] is None and run["spawned_at"] is not None
    claim = world.sql("SELECT detail FROM audit WHERE action = 'run.claim' AND detail LIKE ?", (f"%{run['run_id']}%",))
    assert "owner-machine" in claim[0]["detail"]
    events = alice.home / "run-logs" / run["run_id"] / "events.jsonl"
    assert events.exists() and events.stat().st_size > 0
    assert not (world.settings.home / "run-logs" / run["run_id"]).exists()
    # The CLI replied in the room through the bridge over HTTP, with its run token.
    replies = world.sql("SELECT m.text FROM messages m JOIN agents a ON a.agent_id = m.agent_id WHERE a.handle = ?",
                  ("alice-bot",))  # fmt: skip
    assert replies, "the woken CLI posted nothing"
    # The hub never received the event bodies (invariant 94): the session's events stay in alice's home.
    dump = "\n".join(sqlite3.connect(world.settings.home / "hub.db").iterdump())
    assert '"type": "system"' not in dump and "stream-json" not in dump
    # In the workdir listen.toml names, not the one the hub holds for the agent.
    assert [c["cwd"] for c in fakes.calls()] == [str(tmp_path / "work" / "app")]


def running(world: World, agent: str) -> list[sqlite3.Row]:
    return world.sql(
        "SELECT r.* FROM runs r JOIN agents a ON a.agent_id = r.agent_id WHERE a.handle = ?"
        " AND r.state = 'running' AND r.pid IS NOT NULL",
        (agent,),
    )


@pytest.mark.invariant(104)
async def test_a_stop_typed_on_the_hub_ends_the_run_on_the_owners_machine(
    remote_world: World, fakes: Fakes, tmp_path: Path
) -> None:
    world = remote_world
    fakes.scenario("hang")
    async with alice_listening(world, fakes, tmp_path):
        await post(world, "alice-claude", "@alice-bot please hang")
        await until(lambda: running(world, "alice-bot"), "the listener's CLI runs")
        async with world.hub() as hub:
            done = await stop_and_wait(hub.runs, hub.store, hub.settings.wake, OPERATOR, "alice-bot", None)
        [stopped] = done.stopped
        assert (stopped.state, stopped.stop_signal) == ("stopped", "SIGINT")
    [run] = ended(world, "alice-bot")
    assert (run["state"], run["stop_signal"]) == ("stopped", "SIGINT")


@pytest.mark.invariant(104)
async def test_the_local_policy_refuses_what_the_hub_may_not_widen(
    remote_world: World, fakes: Fakes, tmp_path: Path
) -> None:
    """The workdir is judged on the owner's machine when the run starts: a link that now leads out of the
    allowed root is refused there, whatever the hub sends, and the causer sees why."""
    world = remote_world
    async with served(world) as url:
        alice = await enroll(world, url, tmp_path, "alice-laptop", RUNS_IT + 'workdir = "ROOT/link"\n')
        link = tmp_path / "work" / "link"
        link.symlink_to(tmp_path / "work" / "app")  # inside the root when the listener reads its policy
        async with listening(alice, fakes):
            await until(lambda: world.sql("SELECT 1 FROM listener_holds"), "the listener holds the agent")
            link.unlink()
            link.symlink_to("/etc")  # and outside it when the wake comes
            await post(world, "alice-claude", "@alice-bot please")
            [run] = await until(lambda: ended(world, "alice-bot"), "the listener refuses the wake")
    assert (run["state"], run["outcome"], run["spawned_at"]) == ("withdrawn", "withdrawn:workdir_outside_root", None)
    assert fakes.calls() == []


@pytest.mark.invariant(104)
async def test_an_agent_the_local_policy_will_not_wake_is_not_held_here(
    remote_world: World, fakes: Fakes, tmp_path: Path
) -> None:
    """`wake = false`: this listener does not hold the agent, so its wakes stay for a listener that would."""
    world = remote_world
    async with alice_listening(world, fakes, tmp_path, "[agents.alice-bot]\nwake = false\n"):
        await until(lambda: world.sql("SELECT 1 FROM listeners"), "the listener says hello")
        await post(world, "alice-claude", "@alice-bot please")
        await anyio.sleep(3)  # several looks of the listener
    assert not world.sql("SELECT 1 FROM listener_holds")
    assert [r["state"] for r in world.sql("SELECT state FROM runs")] == ["waiting_for_listener"]
    assert fakes.calls() == []


@pytest.mark.invariant(104)
async def test_a_listener_refuses_a_policy_whose_workdir_leaves_the_allowed_root(
    remote_world: World, fakes: Fakes, tmp_path: Path
) -> None:
    world = remote_world
    async with served(world) as url:
        alice = await enroll(world, url, tmp_path, "alice-laptop", '[agents.alice-bot]\nworkdir = "/etc"\n')
        done = await alice.ar("listen")
    assert done.code == 1 and "agents.alice-bot.workdir: /etc is not under workdir_root" in done.err, done.err


@pytest.mark.invariant(93)
async def test_a_killed_listener_never_runs_a_wake_twice_and_its_restart_marks_the_run_lost(
    remote_world: World, fakes: Fakes, tmp_path: Path
) -> None:
    world = remote_world
    fakes.scenario("hang")
    async with served(world) as url:
        alice = await enroll(world, url, tmp_path, "alice-laptop")
        async with listening(alice, fakes) as first:
            await post(world, "alice-claude", "@alice-bot please hang")
            [held] = await until(lambda: running(world, "alice-bot"), "the listener's CLI runs")
            first.kill()  # SIGKILL: no goodbye to the hub
            await first.wait()
        async with listening(alice, fakes):
            [run] = await until(lambda: ended(world, "alice-bot"), "the restart ends the run")
            assert (run["run_id"], run["state"], run["outcome"]) == (held["run_id"], "lost", "lost")
            await anyio.sleep(2)  # a look or two of the new listener: it must not run the wake again
    # Claimed and spawned once: the restart never queued it again.
    assert len(world.sql("SELECT 1 FROM audit WHERE action = 'run.claim'")) == 1
    assert len(world.sql("SELECT 1 FROM runs")) == 1


@pytest.mark.invariant(93)
async def test_a_second_listener_for_the_same_agent_waits_and_never_claims_its_wakes(
    remote_world: World, fakes: Fakes, tmp_path: Path
) -> None:
    world = remote_world
    fakes.scenario("ok")
    async with served(world) as url:
        laptop = await enroll(world, url, tmp_path, "alice-laptop")
        desktop = await enroll(world, url, tmp_path, "alice-desktop")
        async with listening(laptop, fakes):
            await until(lambda: world.sql("SELECT 1 FROM listener_holds"), "the first listener holds the agent")
            async with listening(desktop, fakes):
                await until(lambda: len(world.sql("SELECT 1 FROM listeners")) == 2 or None, "the second says hello")
                for n in range(3):
                    await post(world, "alice-claude", f"@alice-bot please {n}")
                    await until(lambda n=n: len(ended(world, "alice-bot")) == n + 1 or None, "the run ends")
    hosts = {r["lease_holder"] for r in world.sql("SELECT lease_holder FROM runs")}
    claimers = world.sql("SELECT DISTINCT json_extract(detail, '$.host') AS host FROM audit WHERE action = ?",
                   ("run.claim",))  # fmt: skip
    assert hosts == {None} and len(claimers) == 1
    laptop_id = world.sql("SELECT device_id FROM devices WHERE name = 'alice-laptop'")[0][0]
    assert claimers[0]["host"].startswith(laptop_id)
    assert len(fakes.calls()) == 3


@pytest.mark.invariant(92, 104)
async def test_revoking_the_device_stops_its_listener_and_its_runs(
    remote_world: World, fakes: Fakes, tmp_path: Path
) -> None:
    world = remote_world
    fakes.scenario("hang")
    async with served(world) as url:
        alice = await enroll(world, url, tmp_path, "alice-laptop")
        async with listening(alice, fakes) as proc:
            await post(world, "alice-claude", "@alice-bot please hang")
            [held] = await until(lambda: running(world, "alice-bot"), "the listener's CLI runs")
            async with world.hub() as hub:
                device_id = world.sql("SELECT device_id FROM devices")[0][0]
                await hub.devices.revoke(Human(OPERATOR), device_id)
            # In the revoking transaction: the run's token is revoked and the run awaits its stop.
            assert world.sql("SELECT state FROM runs WHERE run_id = ?", (held["run_id"],))[0][0] == "stop_pending"
            assert not world.sql("SELECT 1 FROM tokens WHERE run_id = ? AND revoked_at IS NULL", (held["run_id"],))
            with anyio.fail_after(60):
                await proc.wait()
            assert proc.returncode == 1
        # The CLI was stopped by the ladder before the listener left: nothing of the run still lives.
        pid = held["pid"]
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        done = await alice.ar("agent", "list", "--json")
        assert done.code == 1 and "UNAUTHENTICATED" in done.out


@pytest.mark.invariant(93)
async def test_a_hub_restart_loses_nothing_queued_and_the_listener_rides_it_out(
    remote_world: World, fakes: Fakes, tmp_path: Path
) -> None:
    world = remote_world
    port = free_port()
    async with AsyncExitStack() as stack:
        first = AsyncExitStack()
        url = await first.enter_async_context(served(world, port))
        alice = await enroll(world, url, tmp_path, "alice-laptop")
        await stack.enter_async_context(listening(alice, fakes))
        await until(lambda: world.sql("SELECT 1 FROM listener_holds"), "the listener holds the agent")
        await first.aclose()  # the hub goes away under the listener
        await post(world, "alice-claude", "@alice-bot while the hub is down")
        assert [r["state"] for r in world.sql("SELECT state FROM runs")] == ["waiting_for_listener"]
        async with served(world, port):
            [run] = await until(lambda: ended(world, "alice-bot"), "the queued wake runs after the restart")
    assert (run["state"], run["outcome"]) == ("completed", "ok")


@pytest.mark.invariant(93)
async def test_take_over_moves_an_agent_to_another_listener_audited(
    remote_world: World, fakes: Fakes, tmp_path: Path
) -> None:
    world = remote_world
    async with served(world) as url:
        laptop = await enroll(world, url, tmp_path, "alice-laptop")
        desktop = await enroll(world, url, tmp_path, "alice-desktop")
        async with listening(laptop, fakes):
            await until(lambda: world.sql("SELECT 1 FROM listener_holds"), "the laptop holds the agent")
            async with listening(desktop, fakes, "--take-over"):
                await until(lambda: world.sql("SELECT 1 FROM audit WHERE action = 'listener.take_over'"), "taken")
                await post(world, "alice-claude", "@alice-bot please")
                [run] = await until(lambda: ended(world, "alice-bot"), "the run ends")
                await anyio.sleep(1)  # the laptop renews meanwhile: it must not take the agent back
                holder = world.sql("SELECT holder FROM listener_holds")[0][0]
    desktop_id = world.sql("SELECT device_id FROM devices WHERE name = 'alice-desktop'")[0][0]
    assert world.sql("SELECT device_id FROM listeners WHERE holder = ?", (holder,))[0][0] == desktop_id
    claim = world.sql("SELECT json_extract(detail, '$.host') FROM audit WHERE action = 'run.claim'")[0][0]
    assert claim.startswith(desktop_id) and run["state"] == "completed"
    [taken] = world.sql("SELECT detail, via FROM audit WHERE action = 'listener.take_over'")
    assert json.loads(taken["detail"])["explicit"] is True and taken["via"] == "device"


@pytest.mark.invariant(94)
async def test_a_variable_sealed_on_the_owners_machine_reaches_the_cli_and_never_the_hub(
    remote_world: World, fakes: Fakes, tmp_path: Path
) -> None:
    world = remote_world
    fakes.scenario("dump_env")
    secret = "sealed-on-the-laptop-" + os.urandom(8).hex()
    async with served(world) as url:
        alice = await enroll(world, url, tmp_path, "alice-laptop")
        set_env = await anyio.run_process([*_CLI, "agent", "env", "set", "alice-bot", "PROJECT_NOTE"],
                                          input=secret.encode(), env=alice.env, check=False)  # fmt: skip
        assert set_env.returncode == 0, set_env.stderr
        async with listening(alice, fakes):
            await post(world, "alice-claude", "@alice-bot please")
            [run] = await until(lambda: ended(world, "alice-bot"), "the run ends")
    assert (run["state"], run["outcome"]) == ("completed", "ok")
    [call] = fakes.calls()
    assert call["env"]["PROJECT_NOTE"] == secret
    hub_files = b"".join(p.read_bytes() for p in world.settings.home.rglob("*") if p.is_file())
    assert secret.encode() not in hub_files
    assert not world.sql("SELECT 1 FROM agent_env")


async def test_after_a_take_over_the_agent_starts_a_fresh_session_on_its_new_device(
    remote_world: World, fakes: Fakes, tmp_path: Path
) -> None:
    """A CLI session lives on the machine that made it: the first wake on another device must not try to
    resume the laptop's session (the real CLI ends "No conversation found"), and the desktop's next wake
    resumes the session the desktop made (walk finding 3)."""
    world = remote_world
    async with served(world) as url:
        laptop = await enroll(world, url, tmp_path, "alice-laptop")
        desktop = await enroll(world, url, tmp_path, "alice-desktop")
        async with listening(laptop, fakes):
            await post(world, "alice-claude", "@alice-bot first, on the laptop")
            [first] = await until(lambda: ended(world, "alice-bot"), "the laptop's run ends")
            async with listening(desktop, fakes, "--take-over"):
                await until(lambda: world.sql("SELECT 1 FROM audit WHERE action = 'listener.take_over'"), "taken")
                await post(world, "alice-claude", "@alice-bot second, on the desktop")
                second = (await until(lambda: ended(world, "alice-bot")[1:], "the desktop's run ends"))[0]
                await post(world, "alice-claude", "@alice-bot third, on the desktop again")
                third = (await until(lambda: ended(world, "alice-bot")[2:], "the desktop's next run ends"))[0]
        # `run log` on the owner's machine that ran it shows the events kept there (walk finding 4, DESIGN
        # §9.1); on another of the owner's machines it says where they are.
        shown = await laptop.ar("run", "log", first["run_id"])
        stderr = await laptop.ar("run", "log", first["run_id"], "--stderr")
        elsewhere = await desktop.ar("run", "log", first["run_id"])
    assert (first["state"], first["outcome"]) == ("completed", "ok"), dict(first)
    assert (second["state"], second["outcome"]) == ("completed", "ok"), dict(second)
    assert second["session_id"] and second["session_id"] != first["session_id"]
    # The desktop's own session is resumed on the desktop.
    assert (third["state"], third["outcome"], third["session_id"]) == ("completed", "ok", second["session_id"])
    resumed = [c.get("resumed") for c in fakes.calls() if c.get("tool", "claude") == "claude"]
    assert resumed == [False, False, True], fakes.calls()

    assert shown.code == 0, shown.err
    lines = shown.out.splitlines()
    assert lines[2] == "status: completed, ended: the CLI finished its turn", lines
    assert {"type": "system", "subtype": "init"}.items() <= json.loads(lines[3]).items()
    assert stderr.code == 0 and "(no stderr.log" not in stderr.out, stderr.out
    assert elsewhere.code == 0 and '"type"' not in elsewhere.out, elsewhere.out
    assert f"(no events.jsonl for this run on this machine, in {desktop.home / 'run-logs' / first['run_id']}" in (
        elsewhere.out
    )
    helped = await desktop.ar("run", "log", "--help")
    assert "run-logs" in helped.out and "hub's machine" in helped.out and "owner's machine" in helped.out
