"""Settings and named limits. The environment is read here and nowhere else (`Settings.from_env`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent_rooms_mcp.home import check_private_file

KIB = 1024
MIB = 1024 * KIB
# Every integer argument of every tool is at most this (the largest integer a JSON double holds exactly):
# past it SQLite overflows, and some clients would round it anyway.
INT_MAX = 2**53 - 1


@dataclass(frozen=True, slots=True)
class Limits:
    """DESIGN §3.2. Every cap a caller can hit has a name here, not a literal at the call site."""

    message_bytes: int = 32 * KIB
    file_bytes: int = 1 * MIB
    file_range_bytes: int = 64 * KIB
    file_name_bytes: int = 255
    page_default: int = 50
    page_max: int = 200
    # Every list result also ends once its answer would pass this many bytes of encoded JSON, structured
    # content and the SDK's text rendering together (invariants 65, 81): 200 messages of 32 KiB would be
    # 6.4 MiB raw and several times that encoded, far past what MCP clients pass on to a model.
    page_bytes: int = 256 * KIB
    # Kept free of a page for what wraps the result on the wire (JSON-RPC envelope, content block keys).
    result_frame_bytes: int = 1 * KIB
    long_poll_default_s: int = 25
    long_poll_max_s: int = 50
    # Another process's commits (a stdio server, the CLI) reach this process's long-polls this often: one
    # PRAGMA per look when nothing moved. This process's own commits wake them at once.
    waiter_watch_s: float = 0.1
    # Concurrent wait_for_messages calls of one agent; past it RATE_LIMITED, retry after this long.
    waits_per_agent: int = 8
    wait_retry_after_ms: int = 1000
    mentions_max: int = 20
    task_title_chars: int = 200
    # A task's note and a rejection's reason: a sentence or a paragraph, not a document.
    note_chars: int = 2000
    http_body_bytes: int = 4 * MIB
    # HTTP long-lived connections (DESIGN §9): a request head must arrive whole within head_timeout_s and
    # a body within body_timeout_s; at most http_connections open sockets (past it new ones are closed).
    http_head_timeout_s: float = 10.0
    http_body_timeout_s: float = 30.0
    http_connections: int = 512
    # `serve --http` told to stop waits this long for requests still running (long polls answer at once).
    http_shutdown_grace_s: int = 10
    # Legacy-era (initialize) sessions: per agent and in all, closed after this long without a request.
    http_sessions_per_agent: int = 8
    http_sessions: int = 512
    http_session_idle_s: float = 300.0
    http_retry_after_s: int = 5
    stdio_line_bytes: int = 4 * MIB
    # A run's bridge socket closes this long after its run ends, even with a bridge request still open.
    bridge_close_s: int = 2
    # A sandboxed run's egress proxy (wake/egress.py): a request head larger than egress_head_bytes, or not
    # whole within egress_head_timeout_s, is refused; at most egress_connections tunnels at once per run;
    # a tunnel with no byte either way for egress_idle_s is closed (model APIs stream, with pings, well
    # inside it); an upstream that does not accept within egress_connect_timeout_s gets 502.
    egress_head_bytes: int = 16 * KIB
    egress_head_timeout_s: float = 10.0
    egress_connections: int = 32
    egress_idle_s: float = 300.0
    egress_connect_timeout_s: float = 10.0
    pending_invites_per_room: int = 20
    invite_ttl_default_s: int = 24 * 3600
    invite_ttl_min_s: int = 60
    invite_ttl_max_s: int = 7 * 24 * 3600
    token_ttl_default_s: int = 90 * 24 * 3600
    token_ttl_max_s: int = 366 * 24 * 3600
    # A passport is accepted this far outside its nbf/exp window (clock skew, invariant 6).
    clock_skew_s: int = 10
    # SQLite waits this long for another process's write lock before giving up.
    busy_timeout_ms: int = 10_000
    # Failed authentication (DESIGN §9.3), counted per window: past `failed_auth_limit` failures of one
    # source with one credential (its hash's first 8 bytes), or past the global budget of all sources,
    # a failure is answered RATE_LIMITED (HTTP 429). Each window leaves at most `failed_auth_rows_per_source`
    # audit rows of single failures and one summary row per source, for at most
    # `failed_auth_sources_per_window` sources; the rest are counted together under one more summary row.
    failed_auth_window_s: int = 60
    failed_auth_limit: int = 20
    failed_auth_global_limit: int = 300
    failed_auth_rows_per_source: int = 5
    failed_auth_sources_per_window: int = 50
    # Per-agent token buckets (DESIGN §9.3, ratelimit.py): calls a minute, which is also the burst. Each
    # process answers up to `rate_local_calls` calls from credit before it settles with the shared bucket
    # in the database (1: every call settles; more: cheaper, and a process may run that far ahead of the
    # others: a hub served by one process is exact whatever this is, its credit being the whole bucket's
    # state). A settlement is a write transaction with its WAL write (docs/PERFORMANCE.md: the default was 4).
    rate_posts_per_min: int = 60
    rate_file_writes_per_min: int = 20
    rate_task_writes_per_min: int = 120
    rate_reads_per_min: int = 300
    rate_local_calls: int = 16
    # Owner actions an enrolled device may send a minute (DESIGN §9.3 "and per device"), counted like the
    # agents' buckets: each refused action writes an audit row, so this bounds what a device can write.
    rate_owner_actions_per_min: int = 120
    # Requests a device's listeners may send a minute to /owner/v1/listener/ (hello, wait, claim, renew,
    # reports), counted like the buckets above. An idle listener sends about 24 a minute, a busy one a few
    # per run; the bound keeps one device from flooding the hub's database with writes and reads.
    rate_listener_requests_per_min: int = 600
    # Devices (DESIGN §9.1): an enrollment code lives 15 minutes and is void after 5 failed attempts at it;
    # a device credential expires once it has gone this long unused.
    enrollment_ttl_s: int = 15 * 60
    enrollment_failures_max: int = 5
    device_idle_expiry_s: int = 90 * 24 * 3600
    # A device's last use is written at most this often (the expiry above needs no finer clock).
    device_touch_s: int = 3600
    device_name_chars: int = 64
    # The owner console (DESIGN §9.2): a login link lives 5 minutes and is void after 5 failed attempts at it.
    console_link_ttl_s: int = 5 * 60
    console_link_failures_max: int = 5
    # A console session over plain-HTTP loopback: a browser sends its cookie to every port of the host, so it
    # is short (idle, and in all). Under HTTPS (public mode) the cookie is `__Host-` and `Secure`, and lasts longer.
    console_loopback_idle_s: int = 15 * 60
    console_loopback_absolute_s: int = 2 * 3600
    console_https_idle_s: int = 60 * 60
    console_https_absolute_s: int = 12 * 3600
    # A session's last use is written at most this often (the idle expiry needs no finer clock).
    console_touch_s: int = 30
    # Rows a console page lists at most (audit tail, messages, runs).
    console_rows: int = 50
    # A console form's body (a reason, a scope list): a few fields, never a document.
    console_form_bytes: int = 64 * KIB
    # The tail of a run's event log a console page shows.
    console_run_log_bytes: int = 64 * KIB
    # How long the remote CLI waits for the hub to answer one owner action (`agent stop` waits for the
    # stop ladder, about a minute at most).
    owner_api_timeout_s: int = 120
    # How long `doctor` on an owner's machine waits for the hub: a check, not an action, so a hub out of
    # reach is reported soon rather than after the owner API's two minutes.
    doctor_hub_timeout_s: int = 10
    # `doctor` warns of an agent's token that expires within this long: its client stops working then.
    doctor_token_warn_s: int = 7 * 24 * 3600
    # `doctor` calls a run stale that is queued this long, or running with a lease this long expired.
    doctor_stale_run_s: int = 3600
    # How long `connect --apply/--check` and `doctor` wait for a client's own command (`claude mcp add`,
    # `claude mcp list`, which health-checks every server it knows) before giving up on it.
    client_cli_timeout_s: int = 120
    # Archived agents and rooms, and ended runs' files, are kept this long, then purged (DESIGN §6).
    retention_s: int = 30 * 24 * 3600
    # A serving hub purges this long after it starts, then this often (0: never; `agent-rooms purge` still does).
    purge_first_s: int = 60
    purge_every_s: int = 6 * 3600
    # After a purge, the database file is rewritten (VACUUM) only when this share of it is free pages: deleted
    # bytes are zeroed by secure_delete either way, and VACUUM holds the write lock for seconds on a big file.
    purge_vacuum_free_fraction: float = 0.25
    # The Claude.ai connector's OAuth (DESIGN §9.4): an authorization request waits this long for the owner's
    # approval, its code lives this long, an access token this long. A refresh token lives 30 days from its
    # last use and never past 90 days from the approval; the one just replaced is honoured once more within
    # the grace (Claude.ai may refresh twice at once). `/register` takes this many registrations an hour
    # from one source and in all; a client never approved is deleted after a day, one unused after 90 days.
    oauth_request_ttl_s: int = 10 * 60
    oauth_code_ttl_s: int = 60
    oauth_access_ttl_s: int = 3600
    oauth_refresh_idle_s: int = 30 * 24 * 3600
    oauth_refresh_max_s: int = 90 * 24 * 3600
    oauth_refresh_grace_s: int = 30
    oauth_register_per_source_per_h: int = 10
    oauth_register_per_h: int = 100
    # `/authorize` is anonymous and stores each request until it is approved or expires: at most this many
    # from one source an hour and in all, this many waiting at once, and a `state` of at most this many bytes
    # (else a loop of long requests fills the database under the one write lock).
    oauth_authorize_per_source_per_h: int = 120
    oauth_authorize_per_h: int = 2000
    oauth_requests_pending_max: int = 500
    oauth_state_max_bytes: int = 1024
    oauth_unapproved_client_s: int = 24 * 3600
    oauth_unused_client_s: int = 90 * 24 * 3600
    # Client ID metadata documents (DESIGN §9.4, invariant 108): one fetch takes at most this long and this
    # many bytes; a document is cached for its max-age clamped to these bounds, a failure for this long; at
    # most this many fetches a minute go to one registrable domain (all of `*.evil.example` is one), and this
    # many in all.
    oauth_cimd_timeout_s: float = 5.0
    oauth_cimd_bytes: int = 5 * KIB
    oauth_cimd_cache_min_s: int = 5 * 60
    oauth_cimd_cache_max_s: int = 24 * 3600
    oauth_cimd_failure_cache_s: int = 60
    oauth_cimd_fetches_per_domain_per_min: int = 10
    oauth_cimd_fetches_per_min: int = 60
    # Refused OAuth requests (services/oauth_refusals.py): in each window, a source's first refusal of each kind
    # gets an audit row, up to this many rows a source, for at most this many sources; the rest are counted
    # into one summary row per source when the window is over.
    oauth_refusal_window_s: int = 60
    oauth_refusal_rows_per_source: int = 5
    oauth_refusal_sources_per_window: int = 50

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Limits:
        """Any limit can be set as AGENT_ROOMS_LIMIT_<NAME> (AGENT_ROOMS_LIMIT_HTTP_HEAD_TIMEOUT_S=5)."""
        values: dict[str, int | float] = {}
        for name in cls.__dataclass_fields__:
            raw = env.get(f"AGENT_ROOMS_LIMIT_{name.upper()}")
            if raw is not None:
                kind = type(getattr(DEFAULT_LIMITS, name))
                try:
                    values[name] = kind(raw)
                except ValueError:
                    raise ValueError(f"AGENT_ROOMS_LIMIT_{name.upper()}: not a number: {raw!r}") from None
        return cls(**values)  # type: ignore[arg-type]


DEFAULT_LIMITS = Limits()


# AGENT_ROOMS_CGROUP's values (wake/cgroups.py): a mechanism by name, the first granted, or none.
CGROUP_CHOICES = ("auto", "cgroup2", "cgroup1", "systemd-scope", "process-group", "off")
# A run's process cap: far above what a CLI and its tools use (tens), far below what hurts the machine.
RUN_PIDS_MAX = 512


@dataclass(frozen=True, slots=True)
class WakeSettings:
    """DESIGN §5: where the CLIs are, and the caps and grace periods of woken runs."""

    # The supervisor runs in a serving process unless switched off, and never in the `serve` a woken
    # run starts as its own MCP server: a run must not spawn runs under its own process tree.
    enabled: bool = True
    claude_bin: str = "claude"
    codex_bin: str = "codex"
    openclaw_bin: str = "openclaw"
    contain: bool = False  # AGENT_ROOMS_WAKE_CONTAIN=1: Claude wakes run read-only
    max_running: int = 4
    max_running_per_owner: int = 2
    max_running_per_agent: int = 1
    spawns_per_minute_per_owner: int = 6
    max_depth: int = 3
    max_queued_per_owner: int = 50
    run_limit_s: float = 2 * 3600
    grace_int_s: float = 10.0
    grace_term_s: float = 5.0
    after_result_s: float = 10.0
    idle_s: float = 600.0
    # Another process's commits are seen this often (a pragma when nothing changed); this process's at once.
    poll_s: float = 0.05
    lease_s: float = 30.0
    # Leases name the host their processes run on; recovery kills left-behind processes only on its own.
    # Empty: the machine's host name. Set it when two homes share a machine (AGENT_ROOMS_HOST_ID).
    host_id: str = ""
    # A wake of an owner who is not local waits this long for that owner's listener, then ends `expired`.
    listener_wait_s: float = 3600.0
    # A wake queued for the hub's own supervisor that none started in this long ends `expired`: only a
    # supervisor that is off (AGENT_ROOMS_SUPERVISOR=0) or stuck lets it pass (DESIGN §5 "Receipts that settle").
    queued_wait_s: float = 24 * 3600.0
    # How often a serving process, supervisor or not, ends the wakes past those expiries (housekeeping.py).
    settle_every_s: float = 60.0
    # DESIGN §5 "Never root": the unprivileged user (name or UID[:GID]) a root supervisor runs CLIs as.
    run_as: str = ""
    bwrap: str = "bwrap"
    # The operator's own sandbox paths (os.pathsep-separated in the environment): read-only additions (a
    # toolchain outside /usr), read-write ones (a build cache), and paths hidden on top of the system's.
    sandbox_ro: tuple[str, ...] = ()
    sandbox_rw: tuple[str, ...] = ()
    sandbox_hide: tuple[str, ...] = ()
    # A provider's rate-limit reset time, as a run reported it, is trusted for the back-off of its (owner,
    # tool) only within these bounds: a listener (or a CLI's output) saying "now" or "next year" must not
    # make the owner's other machines retry at once or never. Five hours is Claude's longest usual window.
    backoff_min_s: float = 30.0
    backoff_max_s: float = 6 * 3600.0
    # A cgroup per run (DESIGN §5 "Process containment"): "auto" takes the first the OS grants of cgroup2,
    # cgroup1, systemd-scope; a named one is that or the process-group sweep; "off" is the sweep only
    # (AGENT_ROOMS_CGROUP). `run_pids_max` bounds the processes of one run, fork bombs included
    # (AGENT_ROOMS_LIMIT_RUN_PIDS_MAX).
    cgroup: str = "auto"
    run_pids_max: int = RUN_PIDS_MAX

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WakeSettings:
        raw_pids = env.get("AGENT_ROOMS_LIMIT_RUN_PIDS_MAX", str(RUN_PIDS_MAX))
        if not raw_pids.isdigit() or int(raw_pids) < 1:
            raise ValueError(f"AGENT_ROOMS_LIMIT_RUN_PIDS_MAX: not a positive whole number: {raw_pids!r}")
        cgroup = env.get("AGENT_ROOMS_CGROUP") or "auto"
        if cgroup not in CGROUP_CHOICES:
            raise ValueError(f"AGENT_ROOMS_CGROUP: {cgroup!r} is not one of {', '.join(CGROUP_CHOICES)}")
        return cls(
            enabled=env.get("AGENT_ROOMS_SUPERVISOR", "1") != "0" and not env.get("AGENT_ROOMS_RUN_ID"),
            claude_bin=env.get("AGENT_ROOMS_CLAUDE_BIN") or "claude",
            codex_bin=env.get("AGENT_ROOMS_CODEX_BIN") or "codex",
            openclaw_bin=env.get("AGENT_ROOMS_OPENCLAW_BIN") or "openclaw",
            contain=env.get("AGENT_ROOMS_WAKE_CONTAIN") == "1",
            host_id=env.get("AGENT_ROOMS_HOST_ID") or "",
            run_as=env.get("AGENT_ROOMS_RUN_AS") or "",
            bwrap=env.get("AGENT_ROOMS_BWRAP") or "bwrap",
            sandbox_ro=_paths(env.get("AGENT_ROOMS_SANDBOX_RO")),
            sandbox_rw=_paths(env.get("AGENT_ROOMS_SANDBOX_RW")),
            sandbox_hide=_paths(env.get("AGENT_ROOMS_SANDBOX_HIDE")),
            cgroup=cgroup,
            run_pids_max=int(raw_pids),
            # How long a wake may wait before it ends `expired` (DESIGN §5 "Receipts that settle").
            listener_wait_s=_seconds(env, "listener_wait_s", _WAKE_DEFAULTS.listener_wait_s),
            queued_wait_s=_seconds(env, "queued_wait_s", _WAKE_DEFAULTS.queued_wait_s),
            settle_every_s=_seconds(env, "settle_every_s", _WAKE_DEFAULTS.settle_every_s),
        )


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """A WakeSettings duration set as AGENT_ROOMS_LIMIT_<NAME>, as every limit may be."""
    raw = env.get(f"AGENT_ROOMS_LIMIT_{name.upper()}")
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"AGENT_ROOMS_LIMIT_{name.upper()}: not a number: {raw!r}") from None


_WAKE_DEFAULTS = WakeSettings()


def _paths(value: str | None) -> tuple[str, ...]:
    return tuple(p for p in (value or "").split(os.pathsep) if p)


@dataclass(frozen=True, slots=True)
class ClientPaths:
    """Where the MCP clients `connect --apply` configures keep their configuration (DESIGN §9): Claude Code's
    `~/.claude.json` and settings (under CLAUDE_CONFIG_DIR when set), Codex's `config.toml` (CODEX_HOME)."""

    claude_config_dir: Path
    claude_json: Path
    codex_home: Path

    @property
    def claude_settings(self) -> Path:
        return self.claude_config_dir / "settings.json"

    @property
    def codex_config(self) -> Path:
        return self.codex_home / "config.toml"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ClientPaths:
        user_home = Path(env.get("HOME") or Path.home()).expanduser()
        config_dir = env.get("CLAUDE_CONFIG_DIR")
        claude_dir = Path(config_dir).expanduser() if config_dir else user_home / ".claude"
        # With CLAUDE_CONFIG_DIR set, Claude Code keeps its `.claude.json` inside that directory too.
        claude_json = claude_dir / ".claude.json" if config_dir else user_home / ".claude.json"
        codex = env.get("CODEX_HOME")
        return cls(claude_dir, claude_json, Path(codex).expanduser() if codex else user_home / ".codex")


@dataclass(frozen=True, slots=True)
class Settings:
    home: Path
    limits: Limits = field(default=DEFAULT_LIMITS)
    # stdio only: the credential this server process acts with (DESIGN §2).
    stdio_token: str | None = None
    # Set when AGENT_ROOMS_TOKEN_FILE named a file we refused to read; the server still starts.
    stdio_token_problem: str | None = None
    wake: WakeSettings = field(default_factory=WakeSettings)
    clients: ClientPaths = field(default_factory=lambda: ClientPaths.from_env(os.environ))
    # AGENT_ROOMS_OAUTH_ALLOW_LOOPBACK_CIMD_FOR_TESTS=CA.pem: FOR THE TEST SUITE ONLY. Client ID metadata
    # documents may then come from loopback addresses, over TLS this CA vouches for. A hub refuses to serve
    # OAuth with it unless its own public URL is a loopback one (web/oauth_api.py), so no real deployment can
    # run with it.
    oauth_cimd_test_ca: Path | None = None

    @property
    def db_path(self) -> Path:
        return self.home / "hub.db"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def issuer_key_path(self) -> Path:
        return self.keys_dir / "issuer.paserk"

    @property
    def master_key_path(self) -> Path:
        return self.keys_dir / "master.key"

    @property
    def tokens_dir(self) -> Path:
        return self.home / "tokens"

    @property
    def runs_dir(self) -> Path:
        """Each run's directory, which a sandbox binds in: token file, MCP config, tmp/ and its bridge socket."""
        return self.home / "runs"

    @property
    def run_logs_dir(self) -> Path:
        """The supervisor's record of each run (events, stderr tail), kept apart so no run can rewrite it."""
        return self.home / "run-logs"

    @property
    def applied_clients_path(self) -> Path:
        """What `connect --apply` configured, so `--check`, `--new-token` and `doctor` know its entries."""
        return self.home / "clients.json"

    @property
    def audit_checkpoints_path(self) -> Path:
        """Every audit checkpoint this hub signed, one a line: the next one extends the last. The copy that
        counts against tampering is the one the owner keeps away from this machine (DESIGN §6)."""
        return self.home / "audit-checkpoints"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        home = Path(env.get("AGENT_ROOMS_HOME") or Path.home() / ".agent-rooms").expanduser().absolute()
        token = env.get("AGENT_ROOMS_TOKEN") or None
        problem = None
        if token is None and env.get("AGENT_ROOMS_TOKEN_FILE"):
            token, problem = _read_token_file(Path(env["AGENT_ROOMS_TOKEN_FILE"]).expanduser())
        return cls(
            home=home,
            limits=Limits.from_env(env),
            stdio_token=token.strip() if token else None,
            stdio_token_problem=problem,
            wake=WakeSettings.from_env(env),
            clients=ClientPaths.from_env(env),
            oauth_cimd_test_ca=Path(ca) if (ca := env.get("AGENT_ROOMS_OAUTH_ALLOW_LOOPBACK_CIMD_FOR_TESTS")) else None,
        )


def _read_token_file(path: Path) -> tuple[str | None, str | None]:
    """A token file must be ours and private (0600), like a key file."""
    try:
        check_private_file(path)
        return path.read_text(encoding="ascii").strip(), None
    except (OSError, UnicodeDecodeError) as e:
        return None, f"{path}: {e}"
