"""`agent-rooms doctor` (DESIGN §9.5): what is wrong with this hub's home and the way it is exposed, each
check under a stable id, `ok`, `warn` or `fail`, with the fix in words.

The public-mode checks take the flags `serve --http` takes and judge them with `public.exposure_for`, the
rule `serve` itself applies before it listens: doctor never has a rule of its own that could drift from it.
Each flag is judged alone first, so each problem is reported under its own id; the bind is then judged on
the flags that passed.
"""

from __future__ import annotations

import os
import shutil
import ssl
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio

from agent_rooms_mcp import clients, listen_policy, remote
from agent_rooms_mcp.errors import ErrorCode, RoomsError
from agent_rooms_mcp.home import PRIVATE_DIR, HomeError, check_private_file, load_issuer_key
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.listen_policy import ListenPolicy
from agent_rooms_mcp.listener import listener_holds_lock
from agent_rooms_mcp.models import AgentInfo, CheckStatus, DeviceList, DoctorCheck, DoctorReport, RunInfo, TokenInfo
from agent_rooms_mcp.public import BindRefused, exposure_for, is_loopback
from agent_rooms_mcp.services.overview import SharedInvoke
from agent_rooms_mcp.settings import Settings, WakeSettings
from agent_rooms_mcp.wake import cgroups
from agent_rooms_mcp.wake.egress import loopback_listeners, network_namespace_problem
from agent_rooms_mcp.wake.sandbox import RunAs, SandboxError, probe_here, run_as

OK, WARN, FAIL = CheckStatus.OK, CheckStatus.WARN, CheckStatus.FAIL
NOBODY = 65534  # the overflow uid Debian names `nobody`


@dataclass(frozen=True, slots=True)
class Exposed:
    """The flags `serve --http` would be started with."""

    host: str = "127.0.0.1"
    public_url: str | None = None
    trust_proxy: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


def check(settings: Settings, exposed: Exposed, *, fix: bool = False) -> DoctorReport:
    fixed = fix_modes(settings) if fix else []
    home = home_checks(settings)
    # The public.* checks judge the flags `serve --http` would get: an owner's machine (a device, no hub) serves
    # nothing, so they are left out there unless such flags were given.
    owners_machine = not settings.db_path.exists() and remote.device_path(settings).exists()
    exposure = exposure_checks(exposed) if not owners_machine or exposed != Exposed() else []
    checks = [*home, *listener_checks(settings), *exposure]
    if settings.db_path.exists():  # a hub's home: it serves the console (an owner's machine does not)
        checks.append(console_check(exposed.public_url))
    checks += wake_checks(settings)
    if settings.db_path.exists() and all(c.status is not FAIL for c in home):
        # What is in the database, and the clients configured for it: only a home that opens safely is read.
        checks += anyio.run(hub_checks, settings, exposed)
    return DoctorReport(ok=all(c.status is not FAIL for c in checks), checks=checks, fixed=fixed)


def _ok(check_id: str, message: str) -> DoctorCheck:
    return DoctorCheck(id=check_id, status=OK, message=message, fix=None)


def _fail(check_id: str, message: str, fix: str) -> DoctorCheck:
    return DoctorCheck(id=check_id, status=FAIL, message=message, fix=fix)


# The hub's home (DESIGN §8): directories 0700, key and database files 0600, owned by this user.


def home_checks(settings: Settings) -> list[DoctorCheck]:
    home = settings.home
    if not home.exists():
        return [_fail("home.dir", f"no home at {home}", "run: agent-rooms init")]
    checks = [_private_dirs(settings)]
    if settings.db_path.exists():
        checks += [_private_files("home.database", _database_files(settings.db_path)), _issuer_key(settings)]
        checks.append(_private_files("home.master_key", [settings.master_key_path]))
        checks.append(_private_files("home.tokens", sorted(settings.tokens_dir.glob("*"))))
    elif remote.device_path(settings).exists():
        # An owner's machine enrolled with a hub elsewhere: its one secret is the device credential.
        checks.append(_private_files("home.device", [remote.device_path(settings)]))
    else:
        checks.append(_fail("home.database", f"no hub at {home}", "run: agent-rooms init"))
    return checks


def _private_dirs(settings: Settings) -> DoctorCheck:
    dirs = [d for d in (settings.home, settings.keys_dir, settings.tokens_dir) if d.exists()]
    for d in dirs:
        st = os.lstat(d)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            return _fail("home.dir", f"{d} is not a directory", f"replace {d} with a directory")
        if st.st_uid != os.geteuid():
            return _fail("home.dir", f"{d} is owned by another user", f"run as that user, or chown {d}")
        if st.st_mode & 0o077:
            mode = oct(stat.S_IMODE(st.st_mode))
            return _fail("home.dir", f"{d} is {mode}: group or others can reach it", f"chmod 700 {d}")
    return _ok("home.dir", f"{', '.join(str(d) for d in dirs)}: {oct(PRIVATE_DIR)}")


def _database_files(db: Path) -> list[Path]:
    return [p for p in (db.with_name(db.name + s) for s in ("", "-wal", "-shm")) if p.exists()]


def _private_files(check_id: str, paths: list[Path]) -> DoctorCheck:
    for path in paths:
        try:
            check_private_file(path)
        except FileNotFoundError:
            return _fail(check_id, f"{path} is missing", "run: agent-rooms init")
        except PermissionError as e:
            return _fail(check_id, str(e).split(";")[0], f"chmod 600 {path}")
    return _ok(check_id, f"{len(paths)} file(s), 0600")


def _issuer_key(settings: Settings) -> DoctorCheck:
    path = settings.issuer_key_path
    private = _private_files("home.issuer_key", [path])
    if private.status is FAIL:
        return private
    try:
        load_issuer_key(path)
    except HomeError as e:
        fix = f"restore {path} from a backup (a new key, made by moving it away and running init, voids every token)"
        return _fail("home.issuer_key", str(e), fix)
    return _ok("home.issuer_key", f"{path}: a k4.secret key, 0600")


# An owner's machine (DESIGN §9.1): enrolled with `login` (device.json), perhaps running `listen`.

_LOGIN_AGAIN = "log in again with a new code from the operator: agent-rooms login https://HUB --code CODE"


def listener_checks(settings: Settings) -> list[DoctorCheck]:
    """The device's standing at its hub, the key pinned at login, and the listener's policy and lock. Only on
    a machine with a private device.json: a loose one is home.device's failure, and is not read."""
    path = remote.device_path(settings)
    if settings.db_path.exists() or not path.exists() or _private_files("", [path]).status is FAIL:
        return []
    try:
        device = remote.load(settings)
    except HomeError as e:
        return [_fail("device.file", str(e), _LOGIN_AGAIN)]
    assert device is not None  # the file exists
    rules, policy_check = _policy(settings)
    checks = [*_device_checks(settings, device), policy_check]
    if rules is not None:
        checks.append(_workdirs(rules))
    checks.append(_listener_running(settings, configured=rules is not None))
    return checks


def _device_checks(settings: Settings, device: remote.Device) -> list[DoctorCheck]:
    """Reach the hub, have it judge the credential (a read of the owner's devices: no write, no audit row),
    and hold the key the hub now names against the one pinned at login."""
    timeout = settings.limits.doctor_hub_timeout_s
    pinned = _pinned_key(device)
    try:
        identity = remote.hub_identity(settings, device.hub, timeout)
    except (HomeError, RoomsError) as e:
        fix = f"start the hub, or check {device.hub} is reachable from here (a private CA: set SSL_CERT_FILE)"
        unchecked = DoctorCheck(id="device.credential", status=WARN, message="not checked: the hub is out of reach",
                                fix=None)  # fmt: skip
        return [_fail("device.hub", f"{device.hub}: {e}", fix), unchecked, pinned]
    reached = _ok("device.hub", f"{device.hub} answers (deployment {identity.deployment_id})")
    if pinned.status is OK and (identity.issuer_kid, identity.deployment_id) != (
        device.issuer_kid,
        device.deployment_id or identity.deployment_id,
    ):
        pinned = _fail(
            "device.issuer_key",
            f"{device.hub} now names issuer key {identity.issuer_kid} of deployment {identity.deployment_id}, not"
            f" {device.issuer_kid} pinned at login: its wake claims would be refused",
            "if the operator replaced the hub's key or home on purpose, " + _LOGIN_AGAIN + "; otherwise something"
            " else answers at that address: do not log in to it",
        )
    try:
        listed = remote.Remote(settings, device, timeout).call("device.list", {}, DeviceList)
    except RoomsError as e:
        fix = _LOGIN_AGAIN if e.code is ErrorCode.UNAUTHENTICATED else "try again; the hub's log says more"
        return [reached, _fail("device.credential", f"{device.hub} refused device {device.name}: {e.message}", fix),
                pinned]  # fmt: skip
    except HomeError as e:
        return [reached, _fail("device.credential", str(e), "try again; the hub's log says more"), pinned]
    mine = next((d for d in listed.devices if d.device_id == device.device_id), None)
    last_used = mine.last_used_at if mine is not None else "?"
    credential = _ok("device.credential", f"{device.hub} accepts device {device.name} of {device.owner} (last used"
                     f" {last_used})")  # fmt: skip
    return [reached, credential, pinned]


def _pinned_key(device: remote.Device) -> DoctorCheck:
    if not device.issuer_key:
        return DoctorCheck(
            id="device.issuer_key",
            status=WARN,
            message=f"only the key's id {device.issuer_kid} is pinned (a device file from before listeners)",
            fix="run agent-rooms listen once: it fetches the key and keeps it if its id is the pinned one",
        )
    if not remote.key_matches(device.issuer_key, device.issuer_kid):
        return _fail("device.issuer_key", f"the pinned issuer key is not {device.issuer_kid}", _LOGIN_AGAIN)
    return _ok("device.issuer_key", f"{device.issuer_kid}, pinned at login")


def _policy(settings: Settings) -> tuple[ListenPolicy | None, DoctorCheck]:
    path = settings.home / listen_policy.POLICY_FILE
    if not path.exists():
        return None, DoctorCheck(
            id="listen.policy",
            status=WARN,
            message=f"no {path}: this machine wakes none of your agents",
            fix=f"to run them here, write {path} (0600); agent-rooms listen --help shows its keys",
        )
    try:
        rules = listen_policy.load(path)
    except PermissionError as e:
        return None, _fail("listen.policy", str(e).split(";")[0], f"chmod 600 {path}")
    except HomeError as e:
        return None, _fail("listen.policy", str(e), "mend the key it names; agent-rooms listen --help shows the format")
    return rules, _ok("listen.policy", f"{path}: 0600, {len(rules.agents)} agent(s)")


def _workdirs(rules: ListenPolicy) -> DoctorCheck:
    """Each workdir the policy names exists and, its links followed now, lies under the root (`listen` checks
    again at each claim; a run in a missing one fails `workdir_missing`)."""
    failed = workdir_failures(rules)
    return failed[0] if failed else _ok("listen.workdirs", f"every workdir exists under {rules.workdir_root}")


def workdir_failures(rules: ListenPolicy) -> list[DoctorCheck]:
    """One failed `listen.workdirs` check for each workdir the policy names that is missing or leads out of
    the root; `listen` warns with them at its start, in these words."""
    failed = []
    for rule in rules.agents.values():
        where = f"agents.{rule.handle}.workdir"
        if rule.workdir is None:
            continue
        if not rule.workdir.is_dir():
            fix = f"mkdir -p {rule.workdir}, or name an existing directory under {rules.workdir_root}"
            failed.append(_fail("listen.workdirs", f"{rules.path}: {where}: {rule.workdir} is not a directory", fix))
        elif not rules.inside_root(rule.workdir):
            fix = f"name a directory under {rules.workdir_root}, or point the link back inside it"
            failed.append(_fail("listen.workdirs", f"{rules.path}: {where}: {rule.workdir} leads out of"
                                f" {rules.workdir_root}", fix))  # fmt: skip
    return failed


def _listener_running(settings: Settings, *, configured: bool) -> DoctorCheck:
    if listener_holds_lock(settings.home):
        return _ok("listen.running", f"a listener runs from {settings.home} (it holds listen.lock)")
    if not configured:
        return _ok("listen.running", "no listener runs here")
    return DoctorCheck(
        id="listen.running",
        status=WARN,
        message=f"no listener runs from {settings.home}: your agents' wakes wait for one, then expire",
        fix="run: agent-rooms listen",
    )


# Woken runs (DESIGN §5 "Process containment"): which mechanism ends every process a run starts.


def run_containment(settings: Settings) -> DoctorCheck:
    """What a run started by a process like this one gets. Detection only reads: nothing is created or moved."""
    caps = settings.wake
    found = cgroups.detect(caps.cgroup, caps.run_pids_max)
    if found.mechanism is not cgroups.Mechanism.PROCESS_GROUP:
        return _ok("wake.cgroup", f"{found.mechanism.value}: {found.why}")
    if caps.cgroup != "auto":
        fix = "unset AGENT_ROOMS_CGROUP (auto takes the first mechanism the OS grants)"
    else:
        fix = ("run the hub with a cgroup of its own: a systemd unit with Delegate=yes (examples/), a user session "
               "where systemd-run --user answers, or root")  # fmt: skip
    message = f"process-group sweep only: a double-forked daemon can outlive its run, forks are unbounded ({found.why})"
    return DoctorCheck(id="wake.cgroup", status=WARN, message=message, fix=fix)


# Public mode (DESIGN §9.3): what `serve --http` with these flags would expose.


def exposure_checks(e: Exposed) -> list[DoctorCheck]:
    url, url_check = _alone(
        "public.url",
        e.public_url,
        lambda url: exposure_for(LOOPBACK, url, None, NO_TLS),
        quiet="no public URL: the hub is reached on this machine only",
        fine=f"clients reach the hub at {e.public_url}",
        fix="give --public-url https://HOST[:PORT], the address clients use (TLS ends at the hub or its proxy)",
    )
    proxy, proxy_check = _alone(
        "public.proxy",
        e.trust_proxy,
        lambda proxy: exposure_for(LOOPBACK, None, proxy, NO_TLS),
        quiet="no proxy named: forwarded headers are ignored",
        fine=f"forwarded headers count from {e.trust_proxy} only, and only it may connect",
        fix="name the TLS proxy by its IP address on this machine or a private network, e.g. --trust-proxy 127.0.0.1",
    )
    tls, tls_check = _tls(e.tls_cert, e.tls_key)
    return [url_check, proxy_check, tls_check, _bind(e.host, url, proxy, tls)]


def console_check(public_url: str | None) -> DoctorCheck:
    """DESIGN §9.2: over plain-HTTP loopback a browser sends the console's cookie to every port of the host,
    so a local program on another port could ride it; sessions there are kept short, and said so."""
    if public_url is not None:
        return _ok("console.cookie", "console sessions use a __Host- Secure cookie under HTTPS")
    return DoctorCheck(
        id="console.cookie",
        status=WARN,
        message="the console runs over plain HTTP on loopback: its cookie reaches every port of this host, so "
        "sessions last at most 15 minutes idle and 2 hours in all",
        fix="serve it under HTTPS with --public-url (and TLS or a proxy) for a Secure, __Host- cookie",
    )


LOOPBACK = "127.0.0.1"
NO_TLS: tuple[str | None, str | None] = (None, None)


def _alone(
    check_id: str, value: str | None, judge: Callable[[str], object], *, quiet: str, fine: str, fix: str
) -> tuple[str | None, DoctorCheck]:
    """One flag judged on its own by serve's rule: the value if it passed (else None), and its check."""
    if value is None:
        return None, _ok(check_id, quiet)
    try:
        judge(value)
    except BindRefused as refused:
        return None, _fail(check_id, str(refused), fix)
    return value, _ok(check_id, fine)


def _tls(cert: str | None, key: str | None) -> tuple[tuple[str | None, str | None], DoctorCheck]:
    none = NO_TLS
    if cert is None and key is None:
        return none, _ok("public.tls", "no TLS of the hub's own")
    try:
        exposure_for(LOOPBACK, None, None, (cert, key))
    except BindRefused as refused:
        return none, _fail("public.tls", str(refused), "give --tls-cert F --tls-key F")
    assert cert is not None and key is not None  # exposure_for refuses one without the other
    for path in (cert, key):
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            return none, _fail("public.tls", f"{path}: {e.strerror}", f"make {path} readable by this user")
    mode = stat.S_IMODE(os.stat(key).st_mode)
    if mode & 0o077:
        return none, _fail("public.tls", f"{key} is {oct(mode)}: others can read the TLS key", f"chmod 600 {key}")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, ValueError) as e:
        fix = "give the certificate (chain) and the private key that belongs to it, both PEM"
        return none, _fail("public.tls", f"{cert} with {key}: {e}", fix)
    return (cert, key), _ok("public.tls", f"{cert} and {key} load; the key is 0600")


def _bind(host: str, url: str | None, proxy: str | None, tls: tuple[str | None, str | None]) -> DoctorCheck:
    """The bind, on the flags that passed their own checks: one that failed counts as not given."""
    try:
        exposure_for(host, url, proxy, tls)
    except BindRefused as refused:
        fix = "bind 127.0.0.1, or give a valid --public-url and TLS: --tls-cert/--tls-key, or --trust-proxy"
        return _fail("public.bind", str(refused), f"{fix} (examples/Caddyfile)")
    if url is not None and proxy is None and tls == (None, None):
        # Legal (the proxy reaches a loopback bind), but every client then looks like the proxy's address to
        # the failed-authentication limit, so one client's failures lock all of them out.
        return DoctorCheck(
            id="public.bind",
            status=WARN,
            message=f"public URL {url} over a proxy that is not named: all clients count as one address",
            fix="name the proxy: --trust-proxy 127.0.0.1 (or its private address)",
        )
    where = "loopback only" if is_loopback(host) else "beyond loopback, behind TLS"
    return _ok("public.bind", f"{host}: {where}")


# Woken CLIs (DESIGN §5): never as root, and in a sandbox that starts here.


def run_as_check(wake: WakeSettings, *, here: str = "this hub") -> tuple[DoctorCheck | None, RunAs | None]:
    """As root, the user woken CLIs run as instead (DESIGN §5 "Never root"), judged: without one every wake
    ends `root_refused`. `listen` says the same at its start (`here`: who runs as root). None when not root."""
    if os.geteuid() != 0:
        return None, None
    if not wake.run_as:
        return DoctorCheck(
            id="wake.run_as", status=WARN,
            message=f"{here} runs as root and AGENT_ROOMS_RUN_AS is not set: every wake ends root_refused",
            fix="set AGENT_ROOMS_RUN_AS to an unprivileged user (e.g. nobody)",
        ), None  # fmt: skip
    try:
        user = run_as(wake.run_as)
    except SandboxError as e:
        return _fail("wake.run_as", str(e), "set AGENT_ROOMS_RUN_AS to an existing unprivileged user"), None
    if user.uid == NOBODY:
        # Processes of the same uid can read a CLI's environment and files through /proc.
        return DoctorCheck(
            id="wake.run_as", status=WARN,
            message=f"woken CLIs run as {user.name}, a uid system daemons share: any of them could read "
            "a running CLI's environment and files",
            fix="create a dedicated user (useradd --system agent-rooms-run) and set AGENT_ROOMS_RUN_AS",
        ), user  # fmt: skip
    return _ok("wake.run_as", f"woken CLIs run as {user.name} (uid {user.uid}), never root"), user


def wake_checks(settings: Settings) -> list[DoctorCheck]:
    wake = settings.wake
    checks: list[DoctorCheck] = []
    # On an owner's machine (no database) the woken CLIs are the listener's.
    check, user = run_as_check(wake, here="this hub" if settings.db_path.exists() else "the listener here")
    if check is not None:
        checks.append(check)
    bwrap = shutil.which(wake.bwrap)
    why = "bubblewrap (bwrap) is not installed" if bwrap is None else probe_here(bwrap, user)
    if why is None:
        checks.append(_ok("wake.sandbox", "woken CLIs start in bubblewrap (a probe sandbox started)"))
    else:
        checks.append(DoctorCheck(
            id="wake.sandbox", status=WARN,
            message=f"no sandbox can start here ({why}): a sandboxed agent's wakes end sandbox_unavailable, and "
            "wakes another owner caused end sandbox_required",
            fix="install bubblewrap (Debian: apt install bubblewrap); or, for one agent of your own, "
            "agent-rooms agent set HANDLE --sandbox off (it then runs with your permissions)",
        ))  # fmt: skip
    checks.append(sandbox_network(bwrap))
    checks.append(run_containment(settings))
    return checks


# The sandbox's network (DESIGN §5): a namespace of its own whose one way out is the egress proxy, or else
# the host's network, with the loopback ports a woken CLI could reach listed for the owner to judge.

PORTS_SHOWN = 20


def _first(items: list[str], shown: int) -> str:
    """The first `shown` items, and how many more there are: a check names some, never thousands."""
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def sandbox_network(bwrap: str | None) -> DoctorCheck:
    problem = network_namespace_problem(bwrap)
    if problem is None:
        says = "bwrap --unshare-net works: a sandboxed run reaches only its model API and the hub, by its proxy"
        return _ok("wake.network", says)
    ports = loopback_listeners()
    if ports is None:
        reach = "the ports it could reach cannot be listed here (no /proc/net)"
    elif not ports:
        reach = "no TCP port listens on loopback now"
    else:
        reach = f"it could reach these loopback TCP ports: {_first(ports, PORTS_SHOWN)}"
    if bwrap is None:
        fix = "install bubblewrap (Debian: apt install bubblewrap)"
    else:
        fix = "allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1; on Ubuntu also "
        fix += "kernel.apparmor_restrict_unprivileged_userns=0)"
    return DoctorCheck(
        id="wake.network",
        status=WARN,
        message=f"{problem}: a woken CLI shares this host's network; {reach}",
        fix=f"{fix}, or stop or firewall the services behind those ports",
    )


# What the database holds (DESIGN §9.5): the agents' CLIs and workdirs, stale runs, tokens near expiry,
# invoke agents in rooms shared with another owner, and the clients configured for this hub.


async def hub_checks(settings: Settings, exposed: Exposed) -> list[DoctorCheck]:
    async with Hub.open(settings) as hub:
        agents = (await hub.accounts.list_agents()).agents
        local = {o.handle for o in (await hub.accounts.list_owners()).owners if o.local}
        mine = [a for a in agents if a.owner in local]  # the agents this hub spawns; others wake on listeners
        checks = [_agent_clis(settings, mine), _agent_workdirs(mine)]
        checks.append(_stale_runs(await hub.overview.stale_runs(settings.limits.doctor_stale_run_s)))
        checks.append(_tokens_near_expiry(settings, (await hub.accounts.list_tokens(None)).tokens))
        checks.append(_shared_invoke(await hub.overview.invoke_in_shared_rooms()))
        urls = {exposed.public_url.rstrip("/") + "/mcp"} if exposed.public_url else set()
        checks += await clients.drift(settings, hub.accounts.token_status, Path.cwd(), urls)
    return checks


def cli_version(binary: str, timeout_s: float) -> str | None:
    """`BIN --version`'s first line, or None when it is not installed or does not answer."""
    found = shutil.which(binary)
    if found is None:
        return None
    try:
        done = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if done.returncode == 0 and lines else None


def _agent_clis(settings: Settings, agents: list[AgentInfo]) -> DoctorCheck:
    tools = sorted({a.tool for a in agents})
    if not tools:
        return _ok("agents.cli", "no agent of a local owner: this hub spawns no CLI")
    binaries = {
        "claude": settings.wake.claude_bin,
        "codex": settings.wake.codex_bin,
        "openclaw": settings.wake.openclaw_bin,
    }
    found, missing = [], []
    for tool in tools:
        binary = binaries.get(tool, tool)
        version = cli_version(binary, settings.limits.client_cli_timeout_s)
        if version is None:
            missing.append((tool, binary, [a.handle for a in agents if a.tool == tool]))
        else:
            found.append(f"{tool}: {version}")
    if missing:
        said = "; ".join(f"{binary} does not answer --version: the wakes of {', '.join(who)} end "
                         "cli_not_found" for tool, binary, who in missing)  # fmt: skip
        fix = "install it (npm install -g @anthropic-ai/claude-code / @openai/codex), or name its path in "
        fix += "AGENT_ROOMS_CLAUDE_BIN / AGENT_ROOMS_CODEX_BIN / AGENT_ROOMS_OPENCLAW_BIN"
        return DoctorCheck(id="agents.cli", status=WARN, message=said, fix=fix)
    return _ok("agents.cli", "; ".join(found))


def _agent_workdirs(agents: list[AgentInfo]) -> DoctorCheck:
    for a in agents:
        if a.workdir is not None and not Path(a.workdir).is_dir():
            fix = f"mkdir -p {a.workdir}, or agent-rooms agent set {a.handle} --workdir DIR"
            return _fail("agents.workdir", f"{a.handle}'s workdir {a.workdir} is not a directory: its wakes end"
                         " workdir_missing", fix)  # fmt: skip
    set_ = [a for a in agents if a.workdir is not None]
    return _ok("agents.workdir", f"{len(set_)} workdir(s) exist; the others' runs work in a directory of their own")


SHOWN = 5  # items a check names before "and N more"


def _stale_runs(runs: list[RunInfo]) -> DoctorCheck:
    if not runs:
        return _ok("runs.stale", "no run waits or runs past its time")
    shown = _first([f"{r.run_id} ({r.agent}, {r.state} since {r.started_at or r.created_at})" for r in runs], SHOWN)
    return DoctorCheck(
        id="runs.stale",
        status=WARN,
        message=f"{len(runs)} run(s) stale: {shown}",
        fix="start the hub (agent-rooms serve) or the owner's listener so they settle, or stop them: "
        "agent-rooms agent stop AGENT",
    )


def _tokens_near_expiry(settings: Settings, tokens: list[TokenInfo]) -> DoctorCheck:
    soon = datetime.now(UTC) + timedelta(seconds=settings.limits.doctor_token_warn_s)
    near = [t for t in tokens if t.status == "active" and datetime.fromisoformat(t.expires_at) < soon]
    if not near:
        return _ok("tokens.expiry", "no active agent token expires within the warning window")
    shown = _first([f"{t.token_id} of {t.agent} at {t.expires_at}" for t in near], SHOWN)
    return DoctorCheck(
        id="tokens.expiry",
        status=WARN,
        message=f"{len(near)} token(s) expiring soon: {shown}",
        fix="agent-rooms connect AGENT --new-token (entries made with --apply read the new one)",
    )


def _shared_invoke(found: list[SharedInvoke]) -> DoctorCheck:
    if not found:
        return _ok("rooms.invoke", "no unsandboxed invoke agent sits in a room another owner is in")
    shown = ", ".join(f"{f.agent} in {f.room}" for f in found)
    return DoctorCheck(
        id="rooms.invoke",
        status=WARN,
        message=f"woken without a sandbox, with their owner's permissions, on words from other owners: {shown}",
        fix="agent-rooms agent set AGENT --sandbox on, or take invoke away (agent-rooms agent scopes AGENT ...), "
        "or run other owners' work on a hub of its own (README: public mode)",
    )


# `doctor --fix`: file modes only. Anything riskier is the person's to do, from the fix each check names.


def fix_modes(settings: Settings) -> list[str]:
    """Tighten the home's directories to 0700 and its secret files to 0600: only this user's own, never
    through a link, and nothing else changed."""
    me = os.geteuid()
    fixed: list[str] = []
    dirs = [settings.home, settings.keys_dir, settings.tokens_dir]
    files = [
        *_database_files(settings.db_path),
        settings.issuer_key_path,
        settings.master_key_path,
        settings.applied_clients_path,
        remote.device_path(settings),
        settings.home / listen_policy.POLICY_FILE,
        *(sorted(settings.tokens_dir.glob("*")) if settings.tokens_dir.is_dir() else []),
    ]
    for path, kind, mode in [
        *((d, stat.S_ISDIR, PRIVATE_DIR) for d in dirs),
        *((f, stat.S_ISREG, 0o600) for f in files),
    ]:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not kind(st.st_mode) or st.st_uid != me or not stat.S_IMODE(st.st_mode) & 0o077:
            continue
        os.chmod(path, mode, follow_symlinks=False)
        fixed.append(f"chmod {mode:o} {path}")
    return fixed
