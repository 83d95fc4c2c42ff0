"""The `Hub`: everything a request may use, opened once per process, and `init_home` for first run."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import structlog

from agent_rooms_mcp.home import HomeError, load_issuer_key
from agent_rooms_mcp.settings import Settings

if TYPE_CHECKING:
    from nacl.signing import SigningKey

    from agent_rooms_mcp import audit
    from agent_rooms_mcp.auth.authenticator import Authenticator
    from agent_rooms_mcp.ratelimit import RateLimits
    from agent_rooms_mcp.services.accounts import Accounts
    from agent_rooms_mcp.services.audit_checkpoints import Checkpoints
    from agent_rooms_mcp.services.consent import Consent
    from agent_rooms_mcp.services.console_sessions import ConsoleSessions
    from agent_rooms_mcp.services.containment import Containment
    from agent_rooms_mcp.services.devices import Devices
    from agent_rooms_mcp.services.files import Files
    from agent_rooms_mcp.services.grants import Grants
    from agent_rooms_mcp.services.invites import Invites
    from agent_rooms_mcp.services.listeners import Listeners
    from agent_rooms_mcp.services.messages import Messages
    from agent_rooms_mcp.services.oauth import OAuth
    from agent_rooms_mcp.services.overview import Overview
    from agent_rooms_mcp.services.purge import Purge
    from agent_rooms_mcp.services.rooms import Rooms
    from agent_rooms_mcp.services.run_control import Runs
    from agent_rooms_mcp.services.tasks import Tasks
    from agent_rooms_mcp.store.database import Store

log = structlog.get_logger("agent_rooms_mcp.hub")


@dataclass(frozen=True)
class Hub:
    settings: Settings
    store: Store
    auth: Authenticator
    accounts: Accounts
    rooms: Rooms
    messages: Messages
    files: Files
    invites: Invites
    tasks: Tasks
    grants: Grants
    consent: Consent
    runs: Runs
    rates: RateLimits
    devices: Devices
    listeners: Listeners
    containment: Containment
    checkpoints: Checkpoints
    purge: Purge
    overview: Overview
    console: ConsoleSessions
    oauth: OAuth

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings) -> AsyncIterator[Hub]:
        # The services are imported here, not at the top: importing `Hub` (gate.py and server.py do, and so every
        # stdio start before it answers `initialize`) loads no service, policy or store module (DESIGN §11).
        from agent_rooms_mcp.auth.authenticator import Authenticator
        from agent_rooms_mcp.auth.passports import PassportIssuer
        from agent_rooms_mcp.cimd import ClientDocuments
        from agent_rooms_mcp.ratelimit import RateLimits
        from agent_rooms_mcp.services.accounts import Accounts
        from agent_rooms_mcp.services.audit_checkpoints import Checkpoints
        from agent_rooms_mcp.services.consent import Consent
        from agent_rooms_mcp.services.console_sessions import ConsoleSessions
        from agent_rooms_mcp.services.containment import Containment
        from agent_rooms_mcp.services.devices import Devices
        from agent_rooms_mcp.services.files import Files
        from agent_rooms_mcp.services.grants import Grants
        from agent_rooms_mcp.services.invites import Invites
        from agent_rooms_mcp.services.listeners import Listeners
        from agent_rooms_mcp.services.messages import Messages
        from agent_rooms_mcp.services.oauth import OAuth
        from agent_rooms_mcp.services.overview import Overview
        from agent_rooms_mcp.services.purge import Purge
        from agent_rooms_mcp.services.rooms import Rooms
        from agent_rooms_mcp.services.run_control import Runs
        from agent_rooms_mcp.services.tasks import Tasks
        from agent_rooms_mcp.store.database import Store
        from agent_rooms_mcp.vault import Vault

        key = check_home(settings)
        async with Store.open(
            settings.db_path, busy_timeout_ms=settings.limits.busy_timeout_ms, watch_s=settings.limits.waiter_watch_s
        ) as store:
            deployment_id = await store.read(
                lambda c: c.execute("SELECT value FROM meta WHERE key = 'deployment_id'").fetchone()[0]
            )
            issuer = PassportIssuer(key, deployment_id, skew_s=settings.limits.clock_skew_s)
            limits = settings.limits
            auth = Authenticator(store, issuer, limits)
            # A window of failed authentications that closed while no hub ran gets its summary now.
            await auth.failures.summarise_closed_windows()
            vault = Vault(settings.master_key_path)
            accounts = Accounts(store, issuer, limits, vault)
            runs = Runs(store, limits)
            hub = cls(
                settings=settings,
                store=store,
                auth=auth,
                accounts=accounts,
                rooms=Rooms(store, limits),
                messages=Messages(store, limits, settings.wake),
                files=Files(store, limits),
                invites=Invites(store, limits),
                tasks=Tasks(store, limits, settings.wake),
                grants=Grants(store),
                consent=Consent(store, limits, settings.wake),
                runs=runs,
                rates=RateLimits(store, limits),
                devices=Devices(store, limits, key.verify_key, deployment_id),
                listeners=Listeners(store, settings.wake, accounts, key, deployment_id),
                containment=Containment(store, issuer, runs, settings.wake),
                checkpoints=Checkpoints(store, key, deployment_id, settings.audit_checkpoints_path),
                purge=Purge(store, settings),
                overview=Overview(store),
                console=ConsoleSessions(store, limits),
                oauth=OAuth(store, issuer, limits, vault, ClientDocuments(limits, settings.oauth_cimd_test_ca)),
            )
            try:
                yield hub
            finally:
                # The refusal trace counts in memory (services/oauth_refusals.py): written now, or lost with the
                # process. Shielded: a hub is usually closed by cancellation, which would cancel the write too.
                with anyio.CancelScope(shield=True):
                    try:
                        await hub.oauth.refusals.close()
                    except Exception as e:  # the hub closes all the same; what was not written is said
                        log.error("oauth.refusals_unwritten", error=type(e).__name__)


# What `Hub.open` imports, for a caller that would rather load it off its event loop (stdio.py).
OPEN_IMPORTS = (
    "agent_rooms_mcp.auth.authenticator",
    "agent_rooms_mcp.auth.passports",
    "agent_rooms_mcp.cimd",
    "agent_rooms_mcp.ratelimit",
    *(
        f"agent_rooms_mcp.services.{name}"
        for name in [
            "accounts",
            "audit_checkpoints",
            "consent",
            "console_sessions",
            "containment",
            "devices",
            "files",
            "grants",
            "invites",
            "listeners",
            "messages",
            "oauth",
            "overview",
            "purge",
            "rooms",
            "run_control",
            "tasks",
        ]
    ),
    "agent_rooms_mcp.store.database",
    "agent_rooms_mcp.vault",
)


def check_home(settings: Settings) -> SigningKey:
    """The issuer key of an initialised, safe home; HomeError naming the fix otherwise."""
    if not settings.db_path.exists():
        # Two ways out, for the two people who land here: the one starting a hub, and an owner whose hub is
        # elsewhere (DESIGN §9.1), who would otherwise make an empty hub that then shadows nothing but confuses.
        raise HomeError(
            f"no hub at {settings.home}; to start one here, run: agent-rooms init; to use a hub elsewhere, log in"
            " with the code its operator gave you: agent-rooms login URL --code CODE"
        )
    return load_issuer_key(settings.issuer_key_path)


async def init_home(settings: Settings, operator: audit.Actor) -> bool:
    """Create the home, issuer key and database if missing. Idempotent; True if anything was created."""
    from agent_rooms_mcp import audit
    from agent_rooms_mcp.home import create_issuer_key, ensure_private_dir, secure_database_files
    from agent_rooms_mcp.store.database import Store
    from agent_rooms_mcp.vault import create_master_key

    created = False
    for d in (settings.home, settings.keys_dir, settings.tokens_dir):
        ensure_private_dir(d)
    if not settings.issuer_key_path.exists():
        create_issuer_key(settings.issuer_key_path)
        created = True
    if not settings.master_key_path.exists():  # homes made before agent secrets existed get one too
        create_master_key(settings.master_key_path)
        created = True
    load_issuer_key(settings.issuer_key_path)  # refuses a key that others can read
    async with Store.open(settings.db_path, busy_timeout_ms=settings.limits.busy_timeout_ms) as store:

        def first_run(conn) -> bool:  # type: ignore[no-untyped-def]
            if conn.execute("SELECT 1 FROM meta WHERE key = 'deployment_id'").fetchone():
                return False
            deployment_id = "dep_" + secrets.token_urlsafe(16)
            conn.execute("INSERT INTO meta (key, value) VALUES ('deployment_id', ?)", (deployment_id,))
            audit.append(conn, operator, "hub.init", detail={"deployment_id": deployment_id})
            return True

        created = await store.write(first_run) or created
    secure_database_files(settings.db_path)
    return created
