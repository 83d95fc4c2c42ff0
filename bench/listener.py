"""Wakes and stops through a listener (DESIGN §9.1, §11), against the hub's own supervisor in the same run, and
what an idle listener costs; part of `make bench` (`python bench/run.py --listener-only`, or this file alone).

One hub (`serve --http` on a temporary home, bench/wake.py's world and fake `claude`) and, for each listening
owner, a machine of its own: another AGENT_ROOMS_HOME and HOME, enrolled by code (`hub.devices.enroll`, then
`agent-rooms login` as a process), a listen.toml naming the owner's bot, and `agent-rooms listen` as a process.
Series, in this order, each with one uncounted wake and stop first:

- embedded: owners local to the hub, woken and stopped by the hub's own supervisor (the baseline);
- listener over HTTP: the listeners logged in to the hub's loopback URL; then the same with the mention or the
  stop committed by another process on the hub's home (as a stdio server or the CLI would), which the hub's
  long poll sees only at its next look (services/listeners.py `_RECHECK_S`, 1 s);
- listener over HTTPS: the same behind Caddy (examples/Caddyfile with its local CA, as tests/test_proxy.py
  runs it), when `caddy` is on PATH; otherwise skipped with the reason printed.

Every other mention and stop is a `post_message` / `stop_agent` call over HTTP to the hub by the bot's owner's
poster, so it commits in the hub's process, as a connected agent's would. The times are bench/wake.py's: the
commit when the post's response has been read; the exec from the fake's bash wrapper (`$EPOCHREALTIME`);
SIGINT from the fake's handler; all CLOCK_REALTIME on this one machine. The hub allows six spawns a minute
per owner, so each way gets LISTENERS owners, each with its own device and listener, in bench/wake.py's
rotation (a listener holds only its own owner's agents).

Idle: the hub's CPU with no listener (IDLE_S / 2), with one idle listener (IDLE_S), then with none again
(IDLE_S / 2); the listener's own CPU over its window; and its requests, counted by a relay on loopback that
its device logged in through (the hub logs no line per listener request).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketStream, TaskStatus

from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.services.listeners import _RECHECK_S
from agent_rooms_mcp.settings import Settings, WakeSettings

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(BENCH.parent))  # tests/test_proxy.py: the Caddy set-up the proxy test runs
import wake  # noqa: E402
from wake import OPERATOR, POLL_S, FakeCli, HttpSide, HubSide, Pair, Rotation  # noqa: E402

from tests.test_proxy import CADDYFILE, ROOT_CERT, caddy_env, until_tls_answers  # noqa: E402

# Owners (each its own device and listener) per listener series: with wake.SPAWNS_PER_OWNER spawns a
# minute each, enough that the rotation seldom waits for a minute to pass.
LISTENERS = 8
IDLE_S = 60.0
SETTLE_S = 3.0  # after a listener says hello, before its idle window: its start-up is not its idle cost
# DESIGN §11, p50 in ms: (series, measure) -> (aim, must not exceed).
AIMS = {
    ("wake, listener over HTTP", "commit → exec"): (300.0, 1000.0),
    ("wake, listener over HTTPS (Caddy)", "commit → exec"): (300.0, 1000.0),
    ("stop, listener over HTTP", "stop call → SIGINT"): (1000.0, 2000.0),
    ("stop, listener over HTTPS (Caddy)", "stop call → SIGINT"): (1000.0, 2000.0),
    ("wake, listener over HTTP, committed by another process", "commit → exec"): (300.0, 1000.0),
    ("stop, listener over HTTP, committed by another process", "stop call → SIGINT"): (1000.0, 2000.0),
}
_OP = re.compile(rb"POST /owner/v1/listener/([a-z]+) ")


@dataclass(frozen=True)
class Machine:
    """An owner's machine: its own home and HOME; it runs `agent-rooms` as processes."""

    name: str
    home: Path
    env: dict[str, str]


def agent_rooms(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent_rooms_mcp", *args]


async def machine_for(hub: Hub, root: Path, pair: Pair, url: str, fake: FakeCli, **env: str) -> Machine:
    """`owner enroll` on the hub's home, `agent-rooms login` from the new machine, and its listen.toml."""
    made = await hub.devices.enroll(OPERATOR, pair.owner, url)
    base = root / f"machine-{pair.owner}"
    work = base / "work" / pair.bot
    work.mkdir(parents=True)
    wake.give_to_run_as(work)
    home = base / "agent-rooms"
    # Its own host id, as a second machine would have: recovery kills left-behind processes only on its own.
    extra = {"HOME": str(base), **fake.env(), "AGENT_ROOMS_HOST_ID": pair.owner, **env}
    machine = Machine(f"{pair.owner}-laptop", home, wake.scrubbed_env(home, **extra))
    done = await anyio.run_process(
        agent_rooms("login", url, "--code", made.code, "--name", machine.name), env=machine.env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"login of {machine.name} to {url} failed: {done.stderr.decode(errors='replace')[-800:]}")
    policy = home / "listen.toml"
    # The sandbox as the owner gets it by default where bubblewrap starts here (bench/wake.py's `sandboxed`).
    sandbox = "on" if wake.sandboxed() else "off"
    agent = f'[agents.{pair.bot}]\nworkdir = "{work}"\nsandbox = "{sandbox}"\n'
    policy.write_text(f'workdir_root = "{work.parent}"\n{agent}')
    policy.chmod(0o600)
    return machine


async def held(hub: Hub, bots: list[str]) -> int:
    def read(conn: Any) -> int:
        marks = ",".join("?" * len(bots))
        query = f"SELECT count(*) FROM listener_holds h JOIN agents a USING (agent_id) WHERE a.handle IN ({marks})"
        return int(conn.execute(query, bots).fetchone()[0])

    return await hub.store.read(read)


@asynccontextmanager
async def listening(hub: Hub, machines: list[Machine], pairs: list[Pair], logs: Path) -> AsyncIterator[list[int]]:
    """`agent-rooms listen` on each machine, until each holds its bot; yields their pids."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for m in machines:
            with (logs / f"listen-{m.name}.log").open("ab") as log:
                procs.append(
                    subprocess.Popen(agent_rooms("listen"), env=m.env, stdout=log, stderr=log, cwd=BENCH.parent)
                )
        with anyio.fail_after(120):
            while await held(hub, [p.bot for p in pairs]) < len(pairs):
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError("a listener exited before holding its agent (see its listen-*.log)")
                await anyio.sleep(0.1)
        yield [p.pid for p in procs]
    except BaseException:
        for m in machines:
            tail = (logs / f"listen-{m.name}.log").read_text(errors="replace").splitlines()[-15:]
            print(f"--- listen-{m.name}.log ---\n" + "\n".join(tail), file=sys.stderr)
        raise
    finally:
        for p in procs:
            wake.stop_process(p)


class CountingRelay:
    """A loopback TCP relay to the hub that counts the listener API requests passing through, by operation."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self.ops: Counter[str] = Counter()

    async def serve(self, *, task_status: TaskStatus[int]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        async with listener:
            task_status.started(listener.extra(anyio.abc.SocketAttribute.local_port))
            await listener.serve(self._relay)

    async def _relay(self, client: SocketStream) -> None:
        upstream = await anyio.connect_tcp("127.0.0.1", self._upstream)
        async with client, upstream, anyio.create_task_group() as tg:

            async def pipe(src: SocketStream, dst: SocketStream, count: bool) -> None:
                # A request head arrives in one read on loopback; a body never holds this pattern (JSON).
                with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    async for chunk in src:
                        if count:
                            self.ops.update(m.decode() for m in _OP.findall(chunk))
                        await dst.send(chunk)
                tg.cancel_scope.cancel()  # either side closed: so does the relay

            tg.start_soon(pipe, client, upstream, True)
            tg.start_soon(pipe, upstream, client, False)


def cpu(pid: int) -> float:
    from run import process_cpu

    return process_cpu(pid)


async def cpu_over(pids: list[int], seconds: float) -> tuple[list[float], float]:
    """Each pid's CPU seconds over a window of about `seconds`, and the window's real length."""
    before, t0 = [cpu(p) for p in pids], time.perf_counter()
    await anyio.sleep(seconds)
    return [cpu(p) - b for p, b in zip(pids, before, strict=True)], time.perf_counter() - t0


async def idle_cost(hub: Hub, hub_pid: int, machine: Machine, pair: Pair, relay: CountingRelay, logs: Path,
                    idle_s: float) -> dict[str, Any]:  # fmt: skip
    """The hub alone, the hub and one idle listener, the hub alone again: CPU seconds per minute, requests."""
    (a1,), t_a1 = await cpu_over([hub_pid], idle_s / 2)
    async with listening(hub, [machine], [pair], logs) as (listener_pid,):
        await anyio.sleep(SETTLE_S)
        ops_before = relay.ops.copy()
        (hub_cpu, listener_cpu), t_b = await cpu_over([hub_pid, listener_pid], idle_s)
        ops = relay.ops - ops_before
    (a2,), t_a2 = await cpu_over([hub_pid], idle_s / 2)
    per_min = 60.0
    alone = (a1 + a2) / (t_a1 + t_a2) * per_min
    with_listener = hub_cpu / t_b * per_min
    return {
        "window_s": round(t_b, 1),
        "hub_alone_cpu_s_per_min": alone,
        "hub_with_listener_cpu_s_per_min": with_listener,
        "hub_delta_cpu_s_per_min": with_listener - alone,
        "listener_cpu_s_per_min": listener_cpu / t_b * per_min,
        "requests_per_min": sum(ops.values()) / t_b * per_min,
        "requests_by_op": dict(sorted(ops.items())),
    }


@asynccontextmanager
async def caddy_in_front(root: Path, hub_port: int) -> AsyncIterator[tuple[str, Path]]:
    """Caddy terminating TLS for the hub, as tests/test_proxy.py runs it: (its https URL, its CA's root)."""
    caddy = shutil.which("caddy")
    assert caddy is not None
    https_port = wake.free_port()
    url = f"https://localhost:{https_port}"
    tmp = root / "caddy"
    tmp.mkdir()
    argv = [caddy, "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"]
    with (root / "caddy.log").open("wb") as log:
        proc = subprocess.Popen(argv, env=caddy_env(tmp, https_port, hub_port), cwd=tmp, stdout=log, stderr=log)
    try:
        await wake.wait_port(https_port, proc)
        cert = tmp / "data" / ROOT_CERT
        with anyio.fail_after(60):
            while not cert.exists():
                await anyio.sleep(0.1)  # Caddy makes its CA once it runs
            await until_tls_answers(url + "/mcp", ssl.create_default_context(cafile=str(cert)))
        yield url, cert
    finally:
        wake.stop_process(proc)


async def listener_series(
    hub: Hub, side: HttpSide, fake: FakeCli, machines: list[Machine], pairs: list[Pair], logs: Path, way: str,
    n_wake: int, n_stop: int, other: HubSide | None = None,
) -> dict[str, list[dict[str, float]]]:  # fmt: skip
    """The wake and stop series through these machines' listeners; with `other`, also a mention and a stop
    committed by another process on the hub's home (a stdio server, the CLI), which the hub's long poll sees
    only at its next look (`_RECHECK_S`), so a random delay spreads them over that look's phase."""
    out = {}
    async with listening(hub, machines, pairs, logs):
        rotation = Rotation(pairs)
        await wake.warm(side, rotation, fake, "queued")
        out[f"wake, listener {way}"] = await wake.wake_series(side, rotation, fake, n_wake, 0.05, "queued")
        out[f"stop, listener {way}"] = await wake.stop_series(side, rotation, fake, n_stop, 0.05, "queued")
        if other is not None:
            what = f"listener {way}, committed by another process"
            out[f"wake, {what}"] = await wake.wake_series(other, rotation, fake, n_wake, _RECHECK_S, "queued")
            out[f"stop, {what}"] = await wake.stop_series(other, rotation, fake, n_stop, _RECHECK_S, "queued")
    return out


async def measure(root: Path, n_wake: int, n_stop: int, idle_s: float) -> dict[str, Any]:
    home = root / "home"
    pairs = await wake.build_world(home, root / "work")
    over_http, over_https, idle = pairs[:LISTENERS], pairs[LISTENERS : 2 * LISTENERS], pairs[2 * LISTENERS]
    embedded = pairs[2 * LISTENERS + 1 :]
    # The bench's own Hub on the same home runs no supervisor: the server's is the hub's only one.
    settings = Settings(home=home, wake=WakeSettings(enabled=False))
    async with Hub.open(settings) as hub:
        for p in [*over_http, *over_https, idle]:
            await hub.accounts.set_owner_local(OPERATOR, p.owner, False)  # their listeners wake their agents
    fake = FakeCli(root / "fake")
    raw: dict[str, list[dict[str, float]]] = {}
    result: dict[str, Any] = {}
    async with (
        wake.hub_server(home, fake, root / "hub.log") as (hub_proc, port),
        Hub.open(settings) as hub,
        anyio.create_task_group() as tg,
    ):
        url = f"http://127.0.0.1:{port}"
        side = HttpSide(hub, port)
        rotation = Rotation(embedded)
        print("listener bench: the hub's own supervisor (baseline)", file=sys.stderr, flush=True)
        await wake.warm(side, rotation, fake)
        raw["wake, embedded supervisor"] = await wake.wake_series(side, rotation, fake, n_wake, 0.05)
        raw["stop, embedded supervisor"] = await wake.stop_series(side, rotation, fake, n_stop, 0.05)

        print(f"listener bench: {LISTENERS} listeners over HTTP", file=sys.stderr, flush=True)
        machines = [await machine_for(hub, root, p, url, fake) for p in over_http]
        other = HubSide(hub, await wake.callers(hub, over_http))
        raw |= await listener_series(hub, side, fake, machines, over_http, root, "over HTTP", n_wake, n_stop, other)

        if shutil.which("caddy") is None:
            result["https_skipped"] = "caddy is not installed (apt-get install caddy): no HTTPS series"
            print(f"listener bench: {result['https_skipped']}", file=sys.stderr, flush=True)
        else:
            print(f"listener bench: {LISTENERS} listeners over HTTPS (Caddy)", file=sys.stderr, flush=True)
            async with caddy_in_front(root, port) as (https_url, cert):
                machines = [
                    await machine_for(hub, root, p, https_url, fake, SSL_CERT_FILE=str(cert)) for p in over_https
                ]
                way = "over HTTPS (Caddy)"
                raw |= await listener_series(hub, side, fake, machines, over_https, root, way, n_wake, n_stop)

        print(f"listener bench: idle cost, {idle_s * 2:.0f} s", file=sys.stderr, flush=True)
        relay = CountingRelay(port)
        relay_port = await tg.start(relay.serve)
        machine = await machine_for(hub, root, idle, f"http://127.0.0.1:{relay_port}", fake)
        result["idle"] = await idle_cost(hub, hub_proc.pid, machine, idle, relay, root, idle_s)
        tg.cancel_scope.cancel()
    result["raw"] = raw
    return result


def summarize(raw: dict[str, list[dict[str, float]]]) -> list[dict[str, Any]]:
    out = []
    for series, rows in raw.items():
        for name in rows[0]:
            entry: dict[str, Any] = {"series": series, "measure": name, **wake.quantiles([r[name] for r in rows])}
            if (series, name) in AIMS:
                aim, limit = AIMS[series, name]
                entry.update(aim_ms=aim, limit_ms=limit, p50_within_aim=entry["p50"] < aim)
                entry["p50_within_limit"] = entry["p50"] <= limit
            out.append(entry)
    return out


def print_tables(result: dict[str, Any]) -> None:
    print("\nWake and stop latency via a listener (ms), fake claude CLI, against the hub's own supervisor")
    print("| series | measure | n | p50 | p90 | max | aim (p50) | verdict |")
    print("|---|---|---|---|---|---|---|---|")
    for e in result["summary"]:
        aim = verdict = ""
        if "aim_ms" in e:
            aim = f"< {e['aim_ms']:.0f} (≤ {e['limit_ms']:.0f})"
            verdict = "met" if e["p50_within_aim"] else "within limit" if e["p50_within_limit"] else "OVER LIMIT"
        print(
            f"| {e['series']} | {e['measure']} | {e['n']} | {e['p50']:.1f} | {e['p90']:.1f} | {e['max']:.1f} | "
            f"{aim} | {verdict} |"
        )
    if "https_skipped" in result:
        print(f"HTTPS series skipped: {result['https_skipped']}")
    i = result["idle"]
    print(f"\nIdle listener over {i['window_s']:.0f} s (CPU seconds per minute)")
    print("| listener | hub alone | hub with the listener | hub's delta | requests/min (by op) |")
    print("|---|---|---|---|---|")
    ops = ", ".join(f"{k} {v}" for k, v in i["requests_by_op"].items())
    print(
        f"| {i['listener_cpu_s_per_min']:.3f} | {i['hub_alone_cpu_s_per_min']:.3f} | "
        f"{i['hub_with_listener_cpu_s_per_min']:.3f} | {i['hub_delta_cpu_s_per_min']:+.3f} | "
        f"{i['requests_per_min']:.1f} ({ops}) |"
    )


def run(n_wake: int = 25, n_stop: int = 15, idle_s: float = IDLE_S) -> dict[str, Any]:
    """Every series and the idle part in a fresh temporary directory; prints the tables, returns the results."""
    started = time.monotonic()
    if (why := wake.unwakeable()) is not None:
        print(f"listener bench: skipped, {why}", file=sys.stderr, flush=True)
        return {"skipped": why}
    with tempfile.TemporaryDirectory(prefix="agent-rooms-listener-bench-") as tmp:
        wake.open_to_run_as(Path(tmp))
        result = anyio.run(measure, Path(tmp), n_wake, n_stop, idle_s)
    result = {
        "method": {
            "wakes_per_series": n_wake,
            "stops_per_series": n_stop,
            "listeners_per_series": LISTENERS,
            "idle_s": idle_s,
            "hub_poll_s": POLL_S,
            "listener_recheck_s": _RECHECK_S,
            "aims_ms": {f"{s}: {m}": {"aim": a, "limit": lim} for (s, m), (a, lim) in AIMS.items()},
        },
        "summary": summarize(result["raw"]),
        **result,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    print_tables(result)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wakes", type=int, default=25, help="wakes per series")
    ap.add_argument("--stops", type=int, default=15, help="stops per series")
    ap.add_argument("--idle-seconds", type=float, default=IDLE_S, help="the idle listener's window")
    ap.add_argument("--out", type=Path, help="also write the results here as JSON")
    a = ap.parse_args(argv)
    result = run(a.wakes, a.stops, a.idle_seconds)
    if a.out is not None:
        a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nlistener bench took {result['elapsed_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
