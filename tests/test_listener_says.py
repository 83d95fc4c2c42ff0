"""A listener that says what it does (DESIGN §9.1): at its start, which agents accept cross-owner wakes and a
warning when it runs as root without AGENT_ROOMS_RUN_AS; a line whenever what it holds changes (an agent it
was waiting for, one another device took over); one line when the hub stops answering and one when it is
back, and a wait, not an exit, when the hub is down at its start; the way out when the hub refuses it; and
on Ctrl-C, what it stopped and the agents it let go of at once. A real hub process, the owner's machines as
processes of their own (their own homes), the fake CLIs."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
from anyio.abc import Process

from agent_rooms_mcp.principals import Human
from tests.conftest import World
from tests.hubprocess import free_port
from tests.test_listener import OPERATOR, RUNS_IT, ended, enroll, listener_process, policy, served
from tests.test_listener import remote_world as remote_world
from tests.test_remote_cli import Machine
from tests.test_status import invoke
from tests.wakeworld import SANDBOX, Fakes, post, until, wake_env


class Listening:
    """One `agent-rooms listen` process and what it printed (stderr and stdout, to a file of its own)."""

    def __init__(self, proc: Process, log: Path) -> None:
        self.proc, self.log = proc, log

    def said(self) -> str:
        return self.log.read_text(errors="replace")

    async def says(self, text: str, what: str = "") -> str:
        return str(await until(lambda: text in self.said() and self.said(), what or f"the listener says {text!r}"))


@asynccontextmanager
async def listen(machine: Machine, fakes: Fakes, *flags: str, **env: str) -> AsyncIterator[Listening]:
    log = machine.home.parent / f"listen-{os.urandom(4).hex()}.log"
    full = {**machine.env, **wake_env(fakes), "AGENT_ROOMS_HOST_ID": f"{machine.home.parent.name}-host", **env}
    async with listener_process(full, log, *flags) as proc:
        yield Listening(proc, log)


async def test_listen_says_which_agents_accept_cross_owner_wakes_and_warns_as_root_without_run_as(
    remote_world: World,
    fakes: Fakes,
    tmp_path: Path,
) -> None:
    world = remote_world
    rules = RUNS_IT + "[agents.alice-cx]\ncross_owner = true\n" + SANDBOX + "\n"
    async with served(world) as url:
        alice = await enroll(world, url, tmp_path, "alice-laptop", rules)
        async with listen(alice, fakes, AGENT_ROOMS_RUN_AS="") as one:
            said = await one.says("cross-owner wakes: refused")
    assert "cross-owner wakes: accepted for alice-cx" in said, said
    assert f"refused for alice-bot (cross_owner = false in {alice.home / 'listen.toml'})" in said, said
    assert "set cross_owner = true under [agents.alice-bot] there" in said, said
    root_warning = "this listener runs as root and AGENT_ROOMS_RUN_AS is not set: every wake ends root_refused"
    if os.geteuid() == 0:
        assert f"warning: {root_warning}; set AGENT_ROOMS_RUN_AS" in said, said
    else:
        assert root_warning not in said, said


async def test_listen_warns_at_its_start_of_a_missing_workdir_in_doctors_words(
    remote_world: World,
    fakes: Fakes,
    tmp_path: Path,
) -> None:
    """A workdir listen.toml names that does not exist would fail each wake of its agent: `listen` says so at
    its start, with doctor's message and fix for `listen.workdirs`, and still listens."""
    world = remote_world
    rules = '[agents.alice-bot]\nworkdir = "ROOT/gone"\n' + SANDBOX + "\n"
    async with served(world) as url:
        alice = await enroll(world, url, tmp_path, "alice-laptop", rules)
        doctor = await alice.ar("doctor", "--json")
        [check] = [c for c in json.loads(doctor.out)["checks"] if c["id"] == "listen.workdirs"]
        assert check["status"] == "fail" and "gone is not a directory" in check["message"], check
        async with listen(alice, fakes) as one:
            said = await one.says("holding: alice-bot")
    assert f"warning: {check['message']}; {check['fix']}" in said, said


async def test_listen_without_listen_toml_prints_an_example_that_accepts_cross_owner_wakes(
    remote_world: World,
    tmp_path: Path,
) -> None:
    """The example `listen` prints when there is no listen.toml names `cross_owner`, as the README's does:
    copied as is, an agent woken by another owner's words is run, not withdrawn."""
    async with served(remote_world) as url:
        machine = await enroll(remote_world, url, tmp_path, "alice-laptop")
        (machine.home / "listen.toml").unlink()
        done = await machine.ar("listen")
    assert done.code != 0
    assert "no listener policy" in done.err, done.err
    assert "  cross_owner = true    # accept wakes other owners' words caused (default false" in done.err, done.err


async def test_a_cross_owner_wake_refused_by_listen_toml_names_the_setting_and_the_way_out(
    remote_world: World,
    fakes: Fakes,
    tmp_path: Path,
) -> None:
    """README's two-owner scenario with `cross_owner = false` (the default): alice's words for bob's agent end
    `withdrawn:cross_owner_refused_here` on bob's machine; his listener prints why and what to set, and `run
    log` (on the hub, or on bob's device) names the setting too; alice's message shows the outcome."""
    world = remote_world
    await world.trust("bob", "alice")  # bob lets alice's agents propose work to his
    async with world.hub() as hub:
        await hub.accounts.set_owner_local(OPERATOR, "bob", False)
        await hub.consent.set_mode_as_owner(OPERATOR, "shared", "bob", "trust_collaborator", "alice")
    async with served(world) as url:
        async with world.hub() as hub:
            made = await hub.devices.enroll(OPERATOR, "bob", url)
        bob = Machine(tmp_path, "bob-laptop")
        done = await bob.ar("login", url, "--code", made.code, "--name", "bob-laptop")
        assert done.code == 0, done.err
        policy(bob, tmp_path / "bob", f"[agents.bob-codex]\n{SANDBOX}\n")
        async with listen(bob, fakes) as one:
            await one.says("holding: bob-codex")
            posted = await post(world, "alice-claude", "@bob-codex please look", room="shared")
            assert posted["mentions"][0]["outcome"] == "queued", posted
            [run] = await until(lambda: ended(world, "bob-codex"), "bob's listener refuses the wake")
            said = await one.says("refused: ")
        shown = await bob.ar("run", "log", run["run_id"])
    assert (run["state"], run["outcome"]) == ("withdrawn", "withdrawn:cross_owner_refused_here")
    assert fakes.calls() == []
    assert (
        f"refused: {run['run_id']} of bob-codex: another owner's words caused it and {bob.home / 'listen.toml'} has"
        " cross_owner = false for bob-codex; to accept such wakes (sandboxed, read-only), set cross_owner = true"
        " under [agents.bob-codex] there and restart agent-rooms listen"
    ) in said, said
    on_hub = invoke(world.settings.home, "run", "log", run["run_id"])
    assert on_hub.exit_code == 0, on_hub.stderr
    assert shown.code == 0, shown.err
    # On the very machine that handled it, `run log` never says it ran elsewhere: nothing ran (walk 2, 5).
    assert "status: withdrawn, never started: withdrawn by its listener:" in shown.out, shown.out
    assert "(no events.jsonl: its listener refused this wake before its CLI ran, so none was kept)" in shown.out
    assert "elsewhere" not in shown.out, shown.out
    for text in (shown.out, on_hub.stdout):
        assert "listen.toml of bob-codex's listener has cross_owner = false for bob-codex" in text, text
        assert "set cross_owner = true under [agents.bob-codex] in that listen.toml" in text, text
    # What alice's agent reads: the mention settled as withdrawn, with the reason word.
    async with world.client("alice-claude") as c:
        page = await c.call_tool("read_messages", {"room": "shared"})
        tools = {t.name: t for t in (await c.list_tools()).tools}
    [mine] = [m for m in page.structured_content["messages"] if m["mentions"]]  # type: ignore[index]
    assert (mine["mentions"][0]["outcome"], mine["mentions"][0]["code"]) == ("withdrawn", "cross_owner_refused_here")
    # And what that code means, in the schema alice's client reads: only bob can accept such wakes.
    for name in ("read_messages", "post_message"):
        schema = json.dumps(tools[name].output_schema).replace("\\n", " ")
        assert "listen.toml has `cross_owner = false` for it" in schema, name


async def test_a_listener_says_when_it_takes_an_agent_it_waited_for_and_when_another_device_takes_it_over(
    remote_world: World,
    fakes: Fakes,
    tmp_path: Path,
) -> None:
    """And Ctrl-C on the first lets go of the agent at once, saying so: the one waiting holds it on its next
    renewal, well within the lease the first would otherwise have kept it for."""
    world = remote_world
    async with served(world) as url:
        laptop = await enroll(world, url, tmp_path, "alice-laptop")
        desktop = await enroll(world, url, tmp_path, "alice-desktop")
        async with AsyncExitStack() as stack:
            first = await stack.enter_async_context(listen(laptop, fakes))
            await first.says("holding: alice-bot")
            async with listen(desktop, fakes) as second:
                await second.says("waiting: alice-bot is held by device alice-laptop")
                first.proc.send_signal(signal.SIGINT)
                with anyio.fail_after(60):
                    await first.proc.wait()
                said = first.said()
                assert "stopping: 0 run(s) here end by the stop ladder" in said, said
                assert "stopped; let go of alice-bot on the hub" in said, said
                assert world.sql("SELECT 1 FROM audit WHERE action = 'listener.release'")
                await second.says("holding: alice-bot (its wakes run here from now on)")
                async with listen(laptop, fakes, "--take-over") as again:
                    await again.says("holding: alice-bot")
                    said = await second.says("lost: alice-bot")
    assert "lost: alice-bot was taken over by device alice-laptop on " in said, said
    assert "(listen --take-over here takes it back)" in said, said


async def test_a_hub_that_stops_answering_is_said_once_and_its_return_once(
    remote_world: World,
    fakes: Fakes,
    tmp_path: Path,
) -> None:
    """Not a line a second while it is down; and a listener started while the hub is down waits for it."""
    world = remote_world
    port = free_port()
    async with served(world, port) as url:
        alice = await enroll(world, url, tmp_path, "alice-laptop")
    # Started while the hub is down: it says so and waits, it does not exit.
    async with listen(alice, fakes) as one:
        await one.says("is out of reach (ConnectError); trying again")
        await anyio.sleep(6)  # a retry or two of the hello
        assert one.proc.returncode is None
        async with served(world, port):
            await one.says("answers again")
            await one.says("holding: alice-bot")
        # The hub goes away under the running listener, and comes back.
        await until(lambda: one.said().count("out of reach (") == 2 or None, "the listener says the hub is gone")
        await anyio.sleep(4)  # several of the supervisor's looks, a second apart
        async with served(world, port):
            await until(lambda: one.said().count("answers again") == 2 or None, "the listener says it is back")
            await post(world, "alice-claude", "@alice-bot please")
            [run] = await until(lambda: ended(world, "alice-bot"), "the wake runs")
            said = one.said()
    assert said.count("out of reach (") == 2, said
    assert said.count("supervisor.book_unavailable") <= 1, said  # one outage while the supervisor ran
    assert run["state"] == "completed"


async def test_a_listener_the_hub_refuses_at_hello_names_the_login_that_gets_a_new_credential(
    remote_world: World,
    fakes: Fakes,
    tmp_path: Path,
) -> None:
    world = remote_world
    async with served(world) as url:
        alice = await enroll(world, url, tmp_path, "alice-laptop")
        device_id = world.sql("SELECT device_id FROM devices")[0][0]
        async with world.hub() as hub:
            await hub.devices.revoke(Human(OPERATOR), device_id)
        done = await alice.ar("listen")
    assert done.code == 1, done.err
    assert "UNAUTHENTICATED: the hub refused this device (revoked, expired or unknown there)" in done.err, done.err
    assert f"agent-rooms login {url} --code CODE" in done.err, done.err
    assert "agent-rooms owner enroll alice" in done.err, done.err


async def test_each_wake_is_one_plain_line_and_its_end_another_and_after_ctrl_c_run_log_says_why_no_stderr(
    remote_world: World,
    fakes: Fakes,
    tmp_path: Path,
) -> None:
    """Walk 2 findings 8 and 5: `listen` prints a "woke" and an "ended" line per wake (no body text); a run
    stopped by the listener's Ctrl-C kept its events but no stderr, and `run log --stderr` on that machine says
    so rather than that it ran elsewhere."""
    world = remote_world
    fakes.scenario("hang")
    async with served(world) as url:
        alice = await enroll(world, url, tmp_path, "alice-laptop")
        async with listen(alice, fakes) as one:
            await one.says("holding: alice-bot")
            await post(world, "alice-claude", "@alice-bot please hang about, secret words")
            said = await one.says("woke: alice-bot in lobby (")
            run_id = said.split("woke: alice-bot in lobby (")[1].split(")")[0]
            await until(lambda: (alice.home / "run-logs" / run_id / "events.jsonl").exists() or None, "it runs")
            one.proc.send_signal(signal.SIGINT)
            with anyio.fail_after(60):
                await one.proc.wait()
            said = one.said()
        events = await alice.ar("run", "log", run_id)
        stderr = await alice.ar("run", "log", run_id, "--stderr")
    assert f"ended: alice-bot in lobby ({run_id}): stopped, shutdown" in said, said
    assert "secret words" not in said, said
    # The listener's Ctrl-C, not the hub, shut it down: the status line does not blame the hub.
    assert "status: stopped, ended: its supervisor shut down while it ran (the hub, or its owner's listener" in (
        events.out
    ), events.out
    assert stderr.code == 0, stderr.err
    assert (
        "(no stderr.log for this run: its CLI printed nothing on stderr, or was stopped before it did, by its"
        f" listener's Ctrl-C or dead-man switch; agent-rooms run log {run_id} shows its events)"
    ) in stderr.out, stderr.out
    assert "elsewhere" not in stderr.out, stderr.out


async def test_a_second_login_is_refused_under_a_running_listener_and_otherwise_names_the_device_it_replaces(
    remote_world: World,
    fakes: Fakes,
    tmp_path: Path,
) -> None:
    """Walk 2 finding 4: a login over a listener would swap the credential under it (the listener goes on with
    the old one); with none running, the login says which device it replaced, that it stays active, and how
    to revoke it, since a device may revoke only itself (DESIGN §9.1)."""
    world = remote_world
    async with served(world) as url:
        alice = await enroll(world, url, tmp_path, "alice-laptop")
        first = json.loads((alice.home / "device.json").read_text())
        async with world.hub() as hub:
            code = (await hub.devices.enroll(OPERATOR, "alice", url)).code
        async with listen(alice, fakes) as one:
            await one.says("holding: alice-bot")
            refused = await alice.ar("login", url, "--code", code, "--name", "alice-again")
        assert refused.code == 1, refused.out
        assert json.loads((alice.home / "device.json").read_text()) == first
        # The code was not spent on a login that could not go on.
        again = await alice.ar("login", url, "--code", code, "--name", "alice-again")
        listed = invoke(world.settings.home, "device", "list")
    lock = alice.home / "listen.lock"
    assert f"a listener runs from {alice.home} (it holds {lock}) as device alice-laptop ({first['device_id']})" in (
        refused.err
    ), refused.err
    assert "Stop it first (Ctrl-C where agent-rooms listen runs), then log in" in refused.err, refused.err
    assert again.code == 0, again.err
    assert (
        f"warning: this replaced device alice-laptop ({first['device_id']}) of alice at {url} in {alice.home}; it"
        " stays active on the hub. Revoke it on the console's Devices page"
    ) in again.err, again.err
    assert f"agent-rooms device revoke {first['device_id']}" in again.err, again.err
    assert "run agent-rooms device revoke here before logging in again" in again.err, again.err
    [old_row] = [line for line in listed.stdout.splitlines() if first["device_id"] in line]
    assert "active" in old_row, listed.stdout
