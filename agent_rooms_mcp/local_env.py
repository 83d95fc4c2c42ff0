"""An owner's agent variables on their own machine (DESIGN §5, §9.1; invariant 94): sealed there, never sent.

On a device, `agent env set` keeps a variable (a provider key, say) for that owner's listener to give the
agent's woken CLI. `agent-env.json` (0600, in this machine's `AGENT_ROOMS_HOME`) maps each agent handle to
its variables; each value is sealed with the vault under this home's own master key (`keys/master.key`, made
on first use), bound to its handle and name, so a value copied to another agent or name does not open.
Nothing here talks to the hub: the hub never holds these values, so it can neither leak nor audit them.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog
from pydantic import BaseModel, ValidationError

from agent_rooms_mcp.encoding import EncodingError, b64url_decode, b64url_encode
from agent_rooms_mcp.envrules import TOOL_ALLOW, check_extra, check_new
from agent_rooms_mcp.errors import ErrorCode, RoomsError, invalid
from agent_rooms_mcp.home import (
    PRIVATE_FILE,
    HomeError,
    check_private_file,
    ensure_private_dir,
    write_private_file,
)
from agent_rooms_mcp.principals import check_handle
from agent_rooms_mcp.settings import Settings
from agent_rooms_mcp.vault import Vault, VaultError, create_master_key

__all__ = ["ENV_FILE", "PURPOSE", "LocalEnv"]

ENV_FILE = "agent-env.json"
# Its own purpose, apart from the hub's `agent-env`: a value sealed by a hub never opens as a listener's.
PURPOSE = "listener-agent-env"
_LOCK_FILE = ".agent-env.lock"

log = structlog.get_logger("agent_rooms_mcp.listener")


class _Stored(BaseModel):
    """The file: handle -> NAME -> the sealed value, base64url."""

    agents: dict[str, dict[str, str]] = {}


class LocalEnv:
    """One machine's sealed agent variables. Reads need no lock (a write replaces the file whole); writes
    take one, so two `env set` at once neither lose a variable nor make two master keys."""

    def __init__(self, home: Path) -> None:
        self._home = home
        self._path = home / ENV_FILE
        self._key_path = Settings(home=home).master_key_path
        self._vault = Vault(self._key_path)

    def set(self, handle: str, name: str, value: str, tool: str | None = None) -> list[str]:
        """Seal `value` as `name` for `handle`; the names it has after. INVALID_ARGUMENT, with the hub's
        words, for a name the hub would refuse.

        `tool` is the agent's tool when the caller knows it. `agent env set` on a device does not: only the
        hub knows, and asking it is the request this command promises never to make. Without it a name is
        taken if some wakeable tool may be given it, and `open_for`, where the listener knows the tool,
        checks it in full (as the spawn does once more)."""
        check_handle(handle)
        _check(name, value, tool)
        try:
            check_new(handle, name, value)
        except ValueError as e:
            raise invalid("value", str(e)) from None
        with self._locked():
            stored = self._read()
            if not self._key_path.exists():
                if stored.agents:
                    # A new key would seal this value and leave every earlier one unopenable, unnoticed until
                    # a run fails: say so now instead.
                    raise HomeError(
                        f"no master key at {self._key_path}, though {self._path} holds variables sealed under "
                        f"one; they cannot be opened: move {self._path} away and set them again"
                    )
                ensure_private_dir(self._key_path.parent)
                create_master_key(self._key_path)
            sealed = self._vault.seal(PURPOSE, _row(handle, name), value)
            stored.agents.setdefault(handle, {})[name] = b64url_encode(sealed)
            self._write(stored)
        log.info("listener.env.set", handle=handle, name=name)
        return sorted(stored.agents[handle])

    def unset(self, handle: str, name: str) -> list[str]:
        """Remove `name` from `handle`; the names left. NOT_FOUND naming the variable if it is not set."""
        with self._locked():
            stored = self._read()
            names = stored.agents.get(handle, {})
            if name not in names:
                raise RoomsError(
                    ErrorCode.NOT_FOUND,
                    f"no variable {name} is set for {handle} on this machine; see: agent-rooms agent env list {handle}",
                )
            del names[name]
            if not names:
                stored.agents.pop(handle)
            self._write(stored)
        log.info("listener.env.unset", handle=handle, name=name)
        return sorted(names)

    def names(self, handle: str) -> list[str]:
        return sorted(self._read().agents.get(handle, {}))

    def open_for(self, handle: str, tool: str) -> dict[str, str]:
        """`handle`'s variables, opened for one run of an agent of `tool`.

        Raises HomeError (the file or the master key is missing, unsafe or unreadable, or a variable is not
        allowed for `tool`) or VaultError (a value that does not open: another key, agent or name, or
        tampered bytes). The caller fails the run closed with `env_unavailable`: it never starts without
        them or with a part of them. Messages name files and variables, never a value."""
        sealed = self._read().agents.get(handle, {})
        if not sealed:
            return {}
        if not self._key_path.exists():
            # Vault's own message says `agent-rooms init`, which is the hub's fix, not a device's.
            raise HomeError(
                f"no master key at {self._key_path}: {handle}'s variables cannot be opened; "
                f"set them again with: agent-rooms agent env set {handle} NAME"
            )
        opened: dict[str, str] = {}
        for name, text in sorted(sealed.items()):
            row = _row(handle, name)
            try:
                value = self._vault.open(PURPOSE, row, b64url_decode(text))
            except EncodingError:
                raise VaultError(f"a stored {PURPOSE} secret does not open for {row}") from None
            try:
                # Here the tool is known: the full check the hub makes, which `set` could not.
                check_extra(name, value, tool)
            except ValueError as e:
                fix = f"remove it with: agent-rooms agent env unset {handle} {name}"
                raise HomeError(f"{self._path}: {e}; {fix}") from None
            opened[name] = value
        return opened

    def _read(self) -> _Stored:
        try:
            check_private_file(self._path)
            raw = self._path.read_bytes()
        except FileNotFoundError:
            return _Stored()
        except OSError as e:  # check_private_file's PermissionError among them: an unsafe file is not used
            raise HomeError(str(e)) from e
        try:
            return _Stored.model_validate_json(raw)
        except ValidationError:
            raise HomeError(
                f"{self._path} is not an agent variables file; move it away and set the variables again"
            ) from None

    def _write(self, stored: _Stored) -> None:
        # A temporary file, then a rename: a crash leaves the old file or the new one, never half of one.
        write_private_file(self._path, stored.model_dump_json(indent=2).encode())

    @contextmanager
    def _locked(self) -> Iterator[None]:
        ensure_private_dir(self._home)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self._home / _LOCK_FILE, flags, PRIVATE_FILE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def _row(handle: str, name: str) -> str:
    return f"{handle}/{name}"


def _check(name: str, value: str, tool: str | None) -> None:
    """The hub's own check (`envrules.check_extra`), as INVALID_ARGUMENT on `name` like the hub's. Without
    a tool, a name passes if any wakeable tool may be given it."""
    refusals: list[str] = []
    for each in [tool] if tool is not None else sorted(TOOL_ALLOW):
        try:
            check_extra(name, value, each)
            return
        except ValueError as e:
            refusals.append(str(e))
    if len(set(refusals)) == 1:  # a bad name or a reserved one: the same words for every tool
        raise invalid("name", refusals[0])
    # Denied for each tool in turn: the first tool's words, then the others named.
    others = sorted(TOOL_ALLOW)[1:]
    raise invalid("name", f"{refusals[0]}, and for {' and '.join(others)} too")
