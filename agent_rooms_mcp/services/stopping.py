"""Stopping an agent's runs and returning once they have ended: `agent stop`'s one service call.

A thin layer over the runs service's stop request and its state read, so the CLI holds no loop of its
own and the rule for how long a stop may take lives beside the settings it comes from.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio

from agent_rooms_mcp.audit import Actor
from agent_rooms_mcp.models import StoppedRun, StopResult
from agent_rooms_mcp.run_states import FINAL_STATES, RunState, StopSignal
from agent_rooms_mcp.services.run_control import Runs
from agent_rooms_mcp.settings import WakeSettings
from agent_rooms_mcp.store.database import Store


def stop_deadline_s(caps: WakeSettings) -> float:
    """How long a stop may take: SIGINT, SIGTERM and SIGKILL take at most the two graces; past that plus a
    lease the supervisor holding the run is gone, and the run shows `stopping` until another one marks it
    lost. Waiting longer would wait on nothing."""
    return caps.grace_int_s + caps.grace_term_s + caps.lease_s


async def stop_and_wait(
    runs: Runs,
    store: Store,
    caps: WakeSettings,
    operator: Actor,
    agent_ref: str,
    run_id: str | None,
    *,
    wait: bool = True,
) -> StopResult:
    """The owner's stop of agent_ref's runs (or one run), then, with `wait`, each run as it ended (or as it
    stands at the deadline). Queued runs end inside the stop request itself."""
    asked = await runs.stop_as_owner(operator, agent_ref, run_id)
    if wait:
        await wait_for_end(runs, store, caps, [s.run_id for s in asked.stopped if s.state == RunState.STOPPING])
    ended = [await runs.get(s.run_id) for s in asked.stopped]
    return StopResult(
        stopped=[
            StoppedRun(
                run_id=info.run_id,
                # Anything else recorded (nothing, a queued run's end) shows as none.
                stop_signal=signal_of(info.stop_signal),
                state=info.state,
            )
            for info in ended
        ]
    )


async def wait_for_end(runs: Runs, store: Store, caps: WakeSettings, run_ids: Sequence[str]) -> None:
    """Return once every one of these runs (marked for the stop ladder) has ended, or at the deadline the
    ladder's graces allow (`stop_deadline_s`), whichever comes first. The kill switches wait here too."""
    with anyio.move_on_after(stop_deadline_s(caps)):
        while run_ids:
            states = await runs.states(run_ids)
            if all(states[r] in FINAL_STATES for r in run_ids):
                break
            # The supervisor holding the run may be another process: look again after a short while even
            # when nothing in this one committed.
            await store.wait_changed(caps.poll_s)


def signal_of(recorded: str | None) -> StopSignal:
    """The signal that ended a run; anything else recorded (nothing, a queued run's end) shows as none."""
    try:
        return StopSignal(recorded or StopSignal.NONE)
    except ValueError:
        return StopSignal.NONE
