"""Console login links and sessions (DESIGN §9.2, invariants 40, 91, 96).

A login link carries a one-time code (`services/one_time_codes.py`), void after `console_link_failures_max`
wrong secrets and consumed by the POST that redeems it (a GET only shows a button: link scanners and
unfurlers must not log anyone in). A session is a random cookie (256 bits) kept as a hash, with an idle and
an absolute expiry; under plain-HTTP loopback both are short, since a browser sends a loopback cookie to
every port of the host.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from agent_rooms_mcp import audit, policy
from agent_rooms_mcp.auth.tokens import new_id, secret_hash
from agent_rooms_mcp.clock import iso
from agent_rooms_mcp.models import ConsoleLink
from agent_rooms_mcp.principals import Human
from agent_rooms_mcp.services import one_time_codes
from agent_rooms_mcp.services.one_time_codes import CONSOLE_LINK
from agent_rooms_mcp.settings import Limits
from agent_rooms_mcp.store import queries
from agent_rooms_mcp.store.database import Store

SESSION_PREFIX = "csn"
LOGIN_PATH = "/console/login"
_COOKIE_BYTES = 32  # 256 bits
MISSING_SESSION = "missing_console_session"


class ConsoleDenied(Exception):
    """A link or a session cookie was refused: `reason` is for the audit row only; the page says the same
    thing for every reason."""

    def __init__(self, reason: str, actor: audit.Actor = audit.ANONYMOUS) -> None:
        super().__init__(reason)
        self.reason = reason
        self.actor = actor


@dataclass(frozen=True, slots=True)
class Login:
    """A redeemed link: the cookie to set (shown once, kept only as a hash) and how long it may live."""

    cookie: str
    session_id: str
    max_age_s: int


def console_actor(owner_id: str, session_id: str) -> audit.Actor:
    """An owner at the console: the rows their actions write say `via: console` and name the session."""
    return audit.Actor("owner", owner_id, owner_id, session_id, via="console")


class ConsoleSessions:
    def __init__(self, store: Store, limits: Limits) -> None:
        self._store = store
        self._limits = limits

    def _lifetimes(self, secure: bool) -> tuple[timedelta, timedelta]:
        """(idle, absolute) for a session over HTTPS or over plain-HTTP loopback."""
        if secure:
            return timedelta(seconds=self._limits.console_https_idle_s), timedelta(
                seconds=self._limits.console_https_absolute_s
            )
        return timedelta(seconds=self._limits.console_loopback_idle_s), timedelta(
            seconds=self._limits.console_loopback_absolute_s
        )

    async def mint_link(self, who: Human, owner_ref: str, base_url: str) -> ConsoleLink:
        """A one-time link for owner `owner_ref`; `who` is already known to act as that owner (owner_actions).
        A device's link remembers the device, so revoking it ends the sessions the link opened."""
        ttl = timedelta(seconds=self._limits.console_link_ttl_s)

        def run(conn: sqlite3.Connection) -> ConsoleLink:
            owner = queries.owner(conn, owner_ref)
            link = one_time_codes.issue(conn, CONSOLE_LINK, owner.owner_id, datetime.now(UTC), ttl, who.device_id)
            audit.append(conn, who.actor, "console.link", target=owner.owner_id, detail={"link": link.code_id})
            url = f"{base_url.rstrip('/')}{LOGIN_PATH}?code={quote(link.code)}"
            return ConsoleLink(owner=owner.handle, url=url, expires_at=link.expires_at)

        return await self._store.write(run)

    async def link_owner(self, code: str) -> str | None:
        """The handle of the owner a still usable link logs in, for its page to name before the button: a link
        someone else minted for themselves would otherwise log its clicker in as them unawares (and they would
        approve a connector onto the sender's agent). Reads only; a wrong secret answers None, uncounted."""
        now, failures_max = iso(datetime.now(UTC)), self._limits.console_link_failures_max

        def read(conn: sqlite3.Connection) -> str | None:
            link = one_time_codes.usable(conn, CONSOLE_LINK, code, now, failures_max)
            return None if link is None else link.owner_handle

        return await self._store.read(read)

    async def redeem(self, code: str, *, secure: bool) -> Login:
        """Consume a link and open a session; ConsoleDenied for an unknown, expired, used or void link (a wrong
        secret is counted on its link, in a transaction that stays committed)."""
        parts = one_time_codes.split(CONSOLE_LINK, code)
        if parts is None:
            raise ConsoleDenied(CONSOLE_LINK.refused("malformed"))
        link_id, secret = parts
        cookie = secrets.token_urlsafe(_COOKIE_BYTES)
        session_id = new_id(SESSION_PREFIX)
        _, absolute = self._lifetimes(secure)

        def run(conn: sqlite3.Connection) -> Login | str:
            now = datetime.now(UTC)
            link = one_time_codes.redeem(
                conn, CONSOLE_LINK, link_id, secret, iso(now), self._limits.console_link_failures_max
            )
            if isinstance(link, str):
                return link
            conn.execute(
                "INSERT INTO console_sessions (session_id, owner_id, cookie_hash, link_id, device_id, secure,"
                " created_at, last_seen_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (session_id, link.owner_id, secret_hash(cookie), link_id, link.device_id, int(secure),
                 iso(now), iso(now), iso(now + absolute)),
            )  # fmt: skip
            audit.append(conn, console_actor(link.owner_id, session_id), "console.login", target=session_id,
                         detail={"link": link_id, "secure": secure})  # fmt: skip
            return Login(cookie, session_id, int(absolute.total_seconds()))

        # A refusal is returned, not raised: the failure count must commit (a raise would roll it back).
        outcome = await self._store.write(run)
        if isinstance(outcome, str):
            raise ConsoleDenied(outcome)
        return outcome

    async def authenticate(self, cookie: str | None) -> Human:
        """The owner a session cookie stands for, or ConsoleDenied: revoked, idle too long, past its absolute
        expiry, or opened through a device revoked since."""
        if not cookie or not cookie.isascii():
            raise ConsoleDenied(MISSING_SESSION)
        digest, now = secret_hash(cookie), datetime.now(UTC)

        def read(conn: sqlite3.Connection) -> sqlite3.Row:
            row: sqlite3.Row | None = conn.execute(
                "SELECT s.*, d.revoked_at AS device_revoked_at FROM console_sessions s"
                " LEFT JOIN devices d ON d.device_id = s.device_id WHERE s.cookie_hash = ?",
                (digest,),
            ).fetchone()
            if row is None:
                raise ConsoleDenied("unknown_console_session")
            actor = console_actor(row["owner_id"], row["session_id"])
            idle, _ = self._lifetimes(bool(row["secure"]))
            if row["revoked_at"] is not None:
                raise ConsoleDenied("console_session_revoked", actor)
            if row["device_revoked_at"] is not None:
                raise ConsoleDenied("console_device_revoked", actor)
            if row["expires_at"] <= iso(now) or datetime.fromisoformat(row["last_seen_at"]) + idle <= now:
                raise ConsoleDenied("console_session_expired", actor)
            return row

        row = await self._store.read(read)
        if datetime.fromisoformat(row["last_seen_at"]) + timedelta(seconds=self._limits.console_touch_s) <= now:
            await self._store.write(
                lambda c: c.execute(
                    "UPDATE console_sessions SET last_seen_at = ? WHERE session_id = ? AND revoked_at IS NULL",
                    (iso(now), row["session_id"]),
                )
            )
        return Human(console_actor(row["owner_id"], row["session_id"]), owner_id=row["owner_id"])

    async def logout(self, who: Human) -> None:
        """End the session `who` came by (its id is the actor's credential id)."""
        session_id = who.actor.cred_id

        def run(conn: sqlite3.Connection) -> None:
            ended = conn.execute(
                "UPDATE console_sessions SET revoked_at = ? WHERE session_id = ? AND revoked_at IS NULL",
                (iso(datetime.now(UTC)), session_id),
            ).rowcount
            if ended:
                audit.append(conn, who.actor, "console.logout", target=session_id)

        await self._store.write(run)

    def still_active(self, session_id: str) -> Callable[[sqlite3.Connection], None]:
        """A write guard (`store.database.guarded_writes`): the session still holds in the transaction of each
        write a console request makes, so a logout, an expiry or a device revoked in between stops the write."""

        def check(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT s.revoked_at, s.expires_at, d.revoked_at AS device_revoked_at FROM console_sessions s"
                " LEFT JOIN devices d ON d.device_id = s.device_id WHERE s.session_id = ?",
                (session_id,),
            ).fetchone()
            held = row is not None and row["revoked_at"] is None and row["device_revoked_at"] is None
            policy.console_session_holds(held and row["expires_at"] > iso(datetime.now(UTC)))

        return check
