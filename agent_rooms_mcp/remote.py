"""The owner's side of a device (DESIGN §9.1): `login`, the device file, and owner actions sent to the hub.

`device.json` (0600, in this machine's `AGENT_ROOMS_HOME`) holds the hub's URL, the device's id and name, its
owner, the issuer key id pinned at `login`, and the device credential. It never leaves this machine but as
the `Authorization` header of requests to that hub.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx2
from nacl.signing import VerifyKey
from pydantic import BaseModel, ValidationError

from agent_rooms_mcp.auth.paseto import k4_pid
from agent_rooms_mcp.encoding import EncodingError, b64url_decode
from agent_rooms_mcp.errors import ErrorCode, RoomsError, invalid
from agent_rooms_mcp.home import HomeError, check_private_file, ensure_private_dir, write_private_file
from agent_rooms_mcp.models import DeviceLogin, HubIdentity
from agent_rooms_mcp.settings import Settings

R = TypeVar("R", bound=BaseModel)

DEVICE_FILE = "device.json"
_API = "/owner/v1/"


class Device(BaseModel):
    hub: str
    device_id: str
    owner: str
    name: str
    issuer_kid: str
    credential: str
    # The issuer key itself (base64url), checked against issuer_kid at login: a listener verifies each
    # claimed wake with it. Empty in device files written before listeners; `listen` then fetches it once
    # and keeps it only if its id is the pinned one.
    issuer_key: str = ""
    deployment_id: str = ""


def device_path(settings: Settings) -> Path:
    return settings.home / DEVICE_FILE


def hub_url(text: str) -> str:
    """A hub's base URL: https, or http to a loopback hub only (DESIGN §9.1: tests and one machine)."""
    parts = urlsplit(text.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
        raise invalid("hub", f"{text!r}: give the hub's URL, like https://hub.example.org")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise invalid("hub", f"{text!r}: plain http is refused except for a loopback hub; use https://")
    # People paste the MCP URL they already use (`…/mcp`): the owner API sits beside it, so take its base.
    path = parts.path.rstrip("/").removesuffix("/mcp")
    return f"{parts.scheme}://{parts.netloc}{path}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load(settings: Settings) -> Device | None:
    path = device_path(settings)
    if not path.exists():
        return None
    check_private_file(path)
    try:
        return Device.model_validate_json(path.read_bytes())
    except ValidationError:
        raise HomeError(f"{path}: not a device file; log in again with agent-rooms login") from None


def forget(settings: Settings) -> None:
    device_path(settings).unlink(missing_ok=True)


def _client(settings: Settings, timeout_s: float | None = None) -> httpx2.Client:
    # Redirects are not followed: a credential goes to the URL the owner logged in to, nowhere else.
    return httpx2.Client(timeout=timeout_s or settings.limits.owner_api_timeout_s, follow_redirects=False)


def _identity(http: httpx2.Client, base: str) -> HubIdentity:
    return HubIdentity.model_validate(_answer(http.get(base + _API + "hub")))


def hub_identity(settings: Settings, base: str, timeout_s: float | None = None) -> HubIdentity:
    """What the hub at `base` says about itself (no credential needed): its deployment and issuer key."""
    with _client(settings, timeout_s) as http, _reaching(base):
        return _identity(http, base)


def login(settings: Settings, url: str, code: str, name: str) -> Device:
    """Redeem an enrollment code at the hub, pin its issuer key, and keep the credential in device.json."""
    base = hub_url(url)
    with _client(settings) as http, _reaching(base):
        identity = _identity(http, base)
        made = DeviceLogin.model_validate(_answer(http.post(base + _API + "login", json={"code": code, "name": name})))
    if made.issuer_kid != identity.issuer_kid or not key_matches(identity.issuer_key, identity.issuer_kid):
        raise RoomsError(ErrorCode.UNAUTHENTICATED, "the hub named two different issuer keys; not logging in")
    device = Device(
        hub=base,
        device_id=made.device_id,
        owner=made.owner,
        name=made.name,
        issuer_kid=made.issuer_kid,
        credential=made.credential,
        issuer_key=identity.issuer_key,
        deployment_id=identity.deployment_id,
    )
    ensure_private_dir(settings.home)
    write_private_file(device_path(settings), device.model_dump_json(indent=2).encode())
    return device


def key_matches(key: str, kid: str) -> bool:
    """Is `key` (base64url) the public key whose PASERK id is `kid`?"""
    try:
        return k4_pid(VerifyKey(b64url_decode(key))) == kid
    except (EncodingError, ValueError, TypeError):
        return False


def pinned_key(settings: Settings, device: Device) -> tuple[VerifyKey, str]:
    """The issuer key pinned at login, and the hub's deployment id. A device file from before listeners
    holds only the key's id: the key is fetched once, kept only if its id is that one."""
    if not device.issuer_key or not device.deployment_id:
        identity = hub_identity(settings, device.hub)
        if not key_matches(identity.issuer_key, device.issuer_kid):
            raise HomeError(f"the hub at {device.hub} now signs with another key than the one pinned at login")
        device = device.model_copy(update={"issuer_key": identity.issuer_key, "deployment_id": identity.deployment_id})
        write_private_file(device_path(settings), device.model_dump_json(indent=2).encode())
    if not key_matches(device.issuer_key, device.issuer_kid):
        raise HomeError(f"{device_path(settings)}: the pinned issuer key does not match its id; log in again")
    return VerifyKey(b64url_decode(device.issuer_key)), device.deployment_id


@dataclass(frozen=True)
class Remote:
    """Owner actions sent to a hub with this machine's device credential."""

    settings: Settings
    device: Device
    timeout_s: float | None = None  # default: the settings' owner_api_timeout_s

    def call(self, name: str, args: dict[str, Any], result: type[R]) -> R:
        with _client(self.settings, self.timeout_s) as http, _reaching(self.device.hub):
            answer = http.post(
                self.device.hub + _API + "actions/" + name,
                json=args,
                headers={"Authorization": f"Bearer {self.device.credential}"},
            )
        return result.model_validate(_answer(answer))


@contextmanager
def _reaching(base: str) -> Iterator[None]:
    try:
        yield
    except httpx2.TransportError as e:
        raise HomeError(f"cannot reach the hub at {base}: {e}") from None


def _answer(response: httpx2.Response) -> Any:
    """The JSON body of a 200, or the hub's refusal as the RoomsError it was on the hub."""
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        body = None
    if response.status_code == 200 and body is not None:
        return body
    if isinstance(body, dict):
        code = str(body.get("code") or body.get("error"))
        if code in ErrorCode.__members__:
            retry = response.headers.get("retry-after")
            message = str(body.get("message") or _GENERIC.get(code, code))
            retry_ms = body.get("retry_after_ms") or (int(retry) * 1000 if retry and retry.isdigit() else None)
            error = RoomsError(ErrorCode(code), message, retry_after_ms=retry_ms)
            missing = body.get("missing")
            if code == "NOT_FOUND" and isinstance(missing, dict) and isinstance(missing.get("kind"), str):
                ref = missing.get("ref")
                error.missing = (missing["kind"], ref if isinstance(ref, str) else None)
            raise error
        if code == "INTERNAL":  # the hub failed on its side (and logged it); nothing was changed
            raise HomeError(f"the hub at {response.url} failed on its side; its log says why (HTTP 500)")
    raise HomeError(f"the hub answered HTTP {response.status_code} without a code: is {response.url} agent-rooms?")


_GENERIC = {
    "UNAUTHENTICATED": "the hub refused this device (revoked, expired or unknown) or the code; "
    "log in again with a new code from the operator (agent-rooms owner enroll HANDLE)",
    "RATE_LIMITED": "too many failed attempts from here; wait and try again",
}
