"""`stop_and_wait`: the owner's stop returns once the runs have ended, as `agent stop` promises."""

from __future__ import annotations

import pytest

from agent_rooms_mcp.errors import ErrorCode, RoomsError
from agent_rooms_mcp.services.stopping import stop_and_wait
from tests.conftest import OPERATOR, World
from tests.wakeworld import Fakes, post, runs, supervisor, until

pytestmark = pytest.mark.anyio


def running(world: World, agent: str) -> bool:
    return any(r["state"] == "running" and r["pid"] for r in runs(world, agent))


async def test_a_queued_run_is_stopped_inside_the_request_and_nothing_waits(woken: World) -> None:
    await post(woken, "alice-claude", "@alice-bot when you can")  # no supervisor: the wake only queues
    [queued] = runs(woken, "alice-bot")
    assert queued["state"] == "queued"
    async with woken.hub() as hub:
        done = await stop_and_wait(hub.runs, hub.store, hub.settings.wake, OPERATOR, "alice-bot", None)
    assert [s.model_dump() for s in done.stopped] == [
        {"run_id": queued["run_id"], "stop_signal": "none", "state": "stopped"}
    ]
    assert [r["state"] for r in runs(woken, "alice-bot")] == ["stopped"]


async def test_a_running_run_is_waited_for_until_it_has_ended(woken: World, fakes: Fakes) -> None:
    fakes.scenario("hang")
    async with supervisor(woken):
        await post(woken, "alice-claude", "@alice-bot a long job")
        await until(lambda: running(woken, "alice-bot"), "the CLI is up")
        await until(lambda: fakes.calls(), "the fake logged its start")
        # Another hub, as the CLI in its own process: it sees the run end only by looking again.
        async with woken.hub() as hub:
            done = await stop_and_wait(hub.runs, hub.store, hub.settings.wake, OPERATOR, "alice-bot", None)
    [run] = runs(woken, "alice-bot")
    assert [s.model_dump() for s in done.stopped] == [
        {"run_id": run["run_id"], "stop_signal": "SIGINT", "state": "stopped"}
    ]
    assert (run["state"], run["stop_signal"]) == ("stopped", "SIGINT") and run["ended_at"]


async def test_without_wait_the_running_run_is_left_stopping(woken: World, fakes: Fakes) -> None:
    fakes.scenario("hang")
    async with supervisor(woken):
        await post(woken, "alice-claude", "@alice-bot a long job")
        await until(lambda: running(woken, "alice-bot"), "the CLI is up")
        async with woken.hub() as hub:
            done = await stop_and_wait(hub.runs, hub.store, hub.settings.wake, OPERATOR, "alice-bot", None, wait=False)
        [s] = done.stopped
        # Whatever the supervisor did meanwhile, the answer was read before any wait: stopping or, at the
        # earliest, already stopped by a fast supervisor, never still running.
        assert s.state in ("stopping", "stopped")
        await until(lambda: runs(woken, "alice-bot")[0]["state"] == "stopped", "the run ends")


async def test_stopping_an_unknown_agent_is_not_found_and_waits_for_nothing(woken: World) -> None:
    async with woken.hub() as hub:
        with pytest.raises(RoomsError) as refused:
            await stop_and_wait(hub.runs, hub.store, hub.settings.wake, OPERATOR, "nobody-here", None)
    assert refused.value.code is ErrorCode.NOT_FOUND
