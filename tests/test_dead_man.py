"""The dead-man switch (DESIGN §9.1, invariant 104): a supervisor that cannot renew its leases for the lease
time stops every run it holds, since by then the hub may give those wakes to another holder. Driven through
the real supervisor and the store's book, with the way to the hub cut once the run has started, as a
listener's network would fail."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import anyio
import pytest

from agent_rooms_mcp.book import BookUnavailable
from agent_rooms_mcp.embedded import embedded_supervisor
from agent_rooms_mcp.wake.supervisor import Supervisor
from tests.conftest import World
from tests.wakeworld import FINAL, Fakes, post, runs, until


class CutOff:
    """The hub's book behind a network that can be cut: once cut, every call fails as unreachable."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.cut = False

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if not callable(value):
            return value

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.cut:
                raise BookUnavailable("the hub is out of reach")
            return await value(*args, **kwargs)

        return call


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.invariant(104)
async def test_a_supervisor_that_cannot_renew_for_the_lease_time_stops_every_run(woken: World, fakes: Fakes) -> None:
    fakes.scenario("hang")
    world = replace(woken, settings=replace(woken.settings, wake=replace(woken.settings.wake, lease_s=1.5)))
    async with world.hub() as hub, anyio.create_task_group() as tg:
        embedded = embedded_supervisor(hub)
        book = CutOff(embedded.book)
        tg.start_soon(Supervisor(book, embedded.local, embedded.open_bridge).run)  # type: ignore[arg-type]
        await post(world, "alice-claude", "@alice-bot please hang")
        [run] = await until(lambda: [r for r in runs(world, "alice-bot") if r["pid"]] or None, "the CLI runs")
        book.cut = True
        await until(lambda: not _alive(run["pid"]) or None, "the CLI is stopped without a word from the hub")
        tg.cancel_scope.cancel()
    # Its end was never reported (the hub was out of reach): the hub still sees it held, for its recovery.
    assert runs(world, "alice-bot")[0]["state"] == "running"


async def test_a_dead_man_switch_that_fires_says_so_in_a_plain_line_and_keeps_the_clis_stderr(
    woken: World, fakes: Fakes
) -> None:
    """Walk 2 findings 3 and 5: the person who started the listener reads one plain line (not only a JSON log)
    saying why its runs were stopped, a line for the wake and for its end, and the CLI's stderr is kept on
    this machine although the hub never heard the end."""
    fakes.scenario("hang")
    world = replace(woken, settings=replace(woken.settings, wake=replace(woken.settings.wake, lease_s=1.5)))
    said: list[str] = []
    async with world.hub() as hub, anyio.create_task_group() as tg:
        embedded = embedded_supervisor(hub)
        book = CutOff(embedded.book)
        supervisor = Supervisor(book, embedded.local, embedded.open_bridge, said.append)  # type: ignore[arg-type]
        tg.start_soon(supervisor.run)
        await post(world, "alice-claude", "@alice-bot please hang")
        [run] = await until(lambda: [r for r in runs(world, "alice-bot") if r["pid"]] or None, "the CLI runs")
        book.cut = True
        await until(lambda: any(line.startswith("ended: ") for line in said) or None, "the run ends here")
        tg.cancel_scope.cancel()
    run_id = run["run_id"]
    assert said[0] == f"woke: alice-bot in lobby ({run_id})", said
    stopping = [line for line in said if line.startswith("stopping ")]
    assert stopping == [
        "stopping 1 run(s) here: the hub was out of reach for the lease time (2 s), after which it may give their"
        " wakes to another device; the hub records them lost"
    ], said
    assert said[-1] == (
        f"ended: alice-bot in lobby ({run_id}): the hub was out of reach to hear it, and records the run lost"
    ), said
    kept = world.settings.run_logs_dir / run_id
    assert (kept / "events.jsonl").exists() and (kept / "stderr.log").exists(), list(kept.iterdir())


class FirstEndUnheard:
    """The hub's book behind a network that loses the first report of a run's end and nothing else, as a hub too
    busy to answer that request in time did (a ReadTimeout under load)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.unheard = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def finish(self, *args: Any, **kwargs: Any) -> None:
        if not self.unheard:
            self.unheard += 1
            raise BookUnavailable("cannot reach the hub: ReadTimeout")
        await self._inner.finish(*args, **kwargs)


async def test_an_end_the_hub_did_not_hear_once_is_reported_again_while_the_lease_holds(
    woken: World, fakes: Fakes
) -> None:
    """Nothing lost: one report of an end that went unanswered must not leave a finished run to be recorded
    `lost` when its lease lapses. The supervisor asks again while the lease holds; the run ends as it did."""
    world = replace(woken, settings=replace(woken.settings, wake=replace(woken.settings.wake, lease_s=3.0)))
    said: list[str] = []
    async with world.hub() as hub, anyio.create_task_group() as tg:
        embedded = embedded_supervisor(hub)
        book = FirstEndUnheard(embedded.book)
        tg.start_soon(Supervisor(book, embedded.local, embedded.open_bridge, said.append).run)  # type: ignore[arg-type]
        await post(world, "alice-claude", "@alice-bot please review")
        [run] = await until(lambda: [r for r in runs(world, "alice-bot") if r["state"] in FINAL] or None, "it ends")
        tg.cancel_scope.cancel()
    assert book.unheard == 1
    assert (run["state"], run["outcome"]) == ("completed", "ok"), dict(run)
    assert said[-1] == f"ended: alice-bot in lobby ({run['run_id']}): completed, ok", said
