"""Devices: an owner's own machines, enrolled by a one-time code, acting for that owner only (DESIGN §9.1).

An enrollment code is a one-time code (`services/one_time_codes.py`), void after `enrollment_failures_max`
wrong secrets. Redeeming one makes a device and its credential (`ard_` + 256 bits, stored as a hash), which
expires once it goes `device_idle_expiry_s` unused. A device credential is never valid for MCP tools: it is
looked up here only, never by the agents' authenticator (invariant 105).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nacl.signing import VerifyKey

from agent_rooms_mcp import audit, policy
from agent_rooms_mcp.auth.paseto import k4_pid
from agent_rooms_mcp.auth.tokens import CredentialKind, credential_kind, new_id, new_token, secret_hash
from agent_rooms_mcp.clock import iso, now_utc
from agent_rooms_mcp.encoding import b64url_encode
from agent_rooms_mcp.errors import invalid, not_found
from agent_rooms_mcp.models import DeviceInfo, DeviceList, DeviceLogin, Enrollment, HubIdentity
from agent_rooms_mcp.principals import Human
from agent_rooms_mcp.services import one_time_codes
from agent_rooms_mcp.services.listeners import release_device
from agent_rooms_mcp.services.one_time_codes import ENROLLMENT
from agent_rooms_mcp.settings import Limits
from agent_rooms_mcp.store import queries
from agent_rooms_mcp.store.database import Store, fresh_snapshot
from agent_rooms_mcp.store.rows import DeviceRow


class DeviceDenied(Exception):
    """Authentication of a device or an enrollment code failed: `reason` is for the audit row only, and the
    caller answers it like every other failed authentication (through the failed-auth limiter)."""

    def __init__(self, reason: str, actor: audit.Actor = audit.ANONYMOUS) -> None:
        super().__init__(reason)
        self.reason = reason
        self.actor = actor


_DEVICES = "SELECT d.*, o.handle AS owner_handle FROM devices d JOIN owners o ON o.owner_id = d.owner_id"


def look_up_device(conn: sqlite3.Connection, digest: bytes, now: datetime, idle: timedelta) -> DeviceRow:
    """The active device whose credential hash is `digest`, or DeviceDenied with the reason: the one lookup
    behind `authenticate` and behind a receipt's proof that a device is now refused (services/containment)."""
    row = conn.execute(_DEVICES + " WHERE d.cred_hash = ?", (digest,)).fetchone()
    if row is None:
        raise DeviceDenied("unknown_device")
    device = DeviceRow.from_row(row)
    actor = device_actor(device.owner_id, device.device_id)
    if device.revoked_at is not None:
        raise DeviceDenied("device_revoked", actor)
    if datetime.fromisoformat(device.last_used_at) + idle <= now:
        raise DeviceDenied("device_expired", actor)
    return device


def prove_devices_refused(db_path: Path, device_ids: Sequence[str], idle: timedelta) -> dict[str, str | None]:
    """For each device id, why `authenticate` now refuses its credential (None: it would be accepted), read on
    a fresh connection after the revoke committed; like `prove_refused` for tokens, it audits nothing."""
    answers = dict[str, str | None]()
    with fresh_snapshot(db_path) as conn:
        now = datetime.now(UTC)
        for device_id in device_ids:
            found = conn.execute("SELECT cred_hash FROM devices WHERE device_id = ?", (device_id,)).fetchone()
            try:
                if found is None:
                    raise DeviceDenied("unknown_device")
                look_up_device(conn, bytes(found["cred_hash"]), now, idle)
                answers[device_id] = None
            except DeviceDenied as denied:
                answers[device_id] = denied.reason
    return answers


def device_actor(owner_id: str, device_id: str) -> audit.Actor:
    return audit.Actor("owner", owner_id, owner_id, device_id, via="device")


def _info(device: DeviceRow, now: datetime, idle: timedelta) -> DeviceInfo:
    if device.revoked_at is not None:
        status = "revoked"
    elif datetime.fromisoformat(device.last_used_at) + idle <= now:
        status = "expired"
    else:
        status = "active"
    return DeviceInfo(
        device_id=device.device_id,
        owner=device.owner_handle,
        name=device.name,
        created_at=device.created_at,
        last_used_at=device.last_used_at,
        status=status,  # type: ignore[arg-type]
    )


class Devices:
    def __init__(self, store: Store, limits: Limits, issuer_key: VerifyKey, deployment_id: str) -> None:
        self._store = store
        self._limits = limits
        self._key = issuer_key
        self._kid = k4_pid(issuer_key)
        self._deployment_id = deployment_id

    def identity(self) -> HubIdentity:
        """What `login` pins: the issuer key and its id, public by nature."""
        return HubIdentity(
            deployment_id=self._deployment_id, issuer_kid=self._kid, issuer_key=b64url_encode(bytes(self._key))
        )

    async def enroll(self, operator: audit.Actor, owner_ref: str, hub_url: str) -> Enrollment:
        """A one-time code for owner `owner_ref` (operator action, on the hub's machine)."""
        ttl = timedelta(seconds=self._limits.enrollment_ttl_s)

        def run(conn: sqlite3.Connection) -> Enrollment:
            owner = queries.owner(conn, owner_ref)
            issued = one_time_codes.issue(conn, ENROLLMENT, owner.owner_id, datetime.now(UTC), ttl, None)
            detail = {"enrollment": issued.code_id}
            audit.append(conn, operator, "owner.enroll", target=owner.owner_id, detail=detail)
            return Enrollment(
                owner=owner.handle,
                code=issued.code,
                expires_at=issued.expires_at,
                login_command=f"agent-rooms login {hub_url} --code {issued.code}",
            )

        return await self._store.write(run)

    async def redeem(self, code: str, name: str) -> DeviceLogin:
        """Make a device of the code's owner; DeviceDenied for an unknown, expired, used or void code (and a
        wrong secret is counted on its code, in a transaction of its own that stays committed)."""
        name = name.strip()
        if not name or len(name) > self._limits.device_name_chars or not name.isprintable():
            raise invalid("name", f"give the device a printable name of at most {self._limits.device_name_chars}")
        parts = one_time_codes.split(ENROLLMENT, code)
        if parts is None:
            raise DeviceDenied(ENROLLMENT.refused("malformed"))
        enrollment_id, secret = parts
        credential = new_token(CredentialKind.DEVICE)
        device_id = new_id("dev")

        def run(conn: sqlite3.Connection) -> DeviceLogin | str:
            now = now_utc()
            enrollment = one_time_codes.redeem(
                conn, ENROLLMENT, enrollment_id, secret, now, self._limits.enrollment_failures_max
            )
            if isinstance(enrollment, str):
                return enrollment
            conn.execute("UPDATE enrollments SET device_id = ? WHERE enrollment_id = ?", (device_id, enrollment_id))
            conn.execute(
                "INSERT INTO devices (device_id, owner_id, name, cred_hash, created_at, last_used_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (device_id, enrollment.owner_id, name, secret_hash(credential), now, now),
            )
            audit.append(
                conn,
                device_actor(enrollment.owner_id, device_id),
                "device.enroll",
                target=device_id,
                detail={"enrollment": enrollment_id},
            )
            return DeviceLogin(
                device_id=device_id,
                owner=enrollment.owner_handle,
                name=name,
                credential=credential,
                issuer_kid=self._kid,
            )

        # A refusal is returned, not raised: the failure count must commit (a raise would roll it back).
        outcome = await self._store.write(run)
        if isinstance(outcome, str):
            raise DeviceDenied(outcome)
        return outcome

    async def authenticate(self, credential: str | None) -> Human:
        """The owner a device credential acts for, or DeviceDenied. Only `ard_` is looked up here, and only
        here: any other kind is refused from its prefix, before any lookup (invariant 105)."""
        if not credential:
            raise DeviceDenied("missing_credential")
        kind = credential_kind(credential)
        if kind is None:
            raise DeviceDenied("malformed_credential")
        if kind is not CredentialKind.DEVICE:
            raise DeviceDenied("wrong_credential_kind")
        idle = timedelta(seconds=self._limits.device_idle_expiry_s)
        now, digest = datetime.now(UTC), secret_hash(credential)
        device = await self._store.read(lambda c: look_up_device(c, digest, now, idle))
        actor = device_actor(device.owner_id, device.device_id)
        last_used = datetime.fromisoformat(device.last_used_at)
        # Use is recorded coarsely: the 90-day expiry needs no more, and most requests then write nothing.
        if last_used + timedelta(seconds=self._limits.device_touch_s) <= now:
            await self._store.write(
                lambda c: c.execute(
                    "UPDATE devices SET last_used_at = ? WHERE device_id = ? AND revoked_at IS NULL",
                    (iso(now), device.device_id),
                )
            )
        return Human(actor, owner_id=device.owner_id, device_id=device.device_id)

    def still_active(self, device_id: str) -> Callable[[sqlite3.Connection], None]:
        """A write guard (`store.database.guarded_writes`): the device is still active, not revoked nor
        idle-expired, in the transaction of the write it guards (invariant 92's revoke, checked at write
        time and not only when the request began)."""
        idle = timedelta(seconds=self._limits.device_idle_expiry_s)

        def check(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT revoked_at, last_used_at FROM devices WHERE device_id = ?", (device_id,)
            ).fetchone()
            revoked = row is None or row["revoked_at"] is not None
            expired = row is not None and datetime.fromisoformat(row["last_used_at"]) + idle <= datetime.now(UTC)
            policy.device_holds(revoked, expired)

        return check

    async def list_devices(self, who: Human) -> DeviceList:
        """The operator sees every device; a device sees its owner's."""
        now, idle = datetime.now(UTC), timedelta(seconds=self._limits.device_idle_expiry_s)
        sql = _DEVICES + " WHERE ?1 IS NULL OR d.owner_id = ?1 ORDER BY d.created_at, d.device_id"
        devices = await self._store.read(lambda c: [DeviceRow.from_row(r) for r in c.execute(sql, (who.owner_id,))])
        return DeviceList(devices=[_info(d, now, idle) for d in devices])

    async def revoke(self, who: Human, device_id: str | None) -> DeviceInfo:
        """Revoke a device: on a device, `None` means itself. Effective on its next request."""
        target = device_id or who.device_id
        if target is None:
            raise invalid("device_id", "name the device to revoke (see: agent-rooms device list)")
        now, idle = datetime.now(UTC), timedelta(seconds=self._limits.device_idle_expiry_s)

        def device(conn: sqlite3.Connection) -> DeviceRow:
            row = conn.execute(_DEVICES + " WHERE d.device_id = ?", (target,)).fetchone()
            if row is None:
                raise not_found("device", target)
            return DeviceRow.from_row(row)

        def run(conn: sqlite3.Connection) -> DeviceInfo:
            found = device(conn)
            policy.may_revoke_device(who, found.owner_id, found.device_id)
            if found.revoked_at is None:
                conn.execute("UPDATE devices SET revoked_at = ? WHERE device_id = ?", (iso(now), target))
                # Its listener's runs lose their tokens in this same transaction (DESIGN §9.1).
                runs = release_device(conn, who.actor, target, iso(now))
                audit.append(conn, who.actor, "device.revoke", target=target,
                             detail={"owner_id": found.owner_id, "runs": runs})  # fmt: skip
            return _info(device(conn), now, idle)

        return await self._store.write(run)
