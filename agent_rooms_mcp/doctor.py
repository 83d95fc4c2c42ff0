"""`agent-rooms doctor` (DESIGN §9.5): what is wrong with this hub's home and the way it is exposed, each
check under a stable id, `ok`, `warn` or `fail`, with the fix in words.

The public-mode checks take the flags `serve --http` takes and judge them with `public.exposure_for`, the
rule `serve` itself applies before it listens: doctor never has a rule of its own that could drift from it.
Each flag is judged alone first, so each problem is reported under its own id; the bind is then judged on
the flags that passed.
"""

from __future__ import annotations

import os
import ssl
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent_rooms_mcp import remote
from agent_rooms_mcp.home import PRIVATE_DIR, HomeError, check_private_file, load_issuer_key
from agent_rooms_mcp.models import CheckStatus, DoctorCheck, DoctorReport
from agent_rooms_mcp.public import BindRefused, exposure_for, is_loopback
from agent_rooms_mcp.settings import Settings
from agent_rooms_mcp.wake import cgroups

OK, WARN, FAIL = CheckStatus.OK, CheckStatus.WARN, CheckStatus.FAIL


@dataclass(frozen=True, slots=True)
class Exposed:
    """The flags `serve --http` would be started with."""

    host: str = "127.0.0.1"
    public_url: str | None = None
    trust_proxy: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


def check(settings: Settings, exposed: Exposed) -> DoctorReport:
    checks = [*home_checks(settings), *exposure_checks(exposed), run_containment(settings)]
    return DoctorReport(ok=all(c.status is not FAIL for c in checks), checks=checks)


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
