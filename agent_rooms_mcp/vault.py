"""Secrets the hub must keep (DESIGN §8), such as a provider key an owner gives one agent's CLI.

Each value is sealed with the hub's master key (XChaCha20-Poly1305 through PyNaCl's `Aead`), with its
purpose and row as associated data: a ciphertext copied to another row, agent or purpose does not open.
Without the key nothing opens and nothing falls back to plaintext: the caller fails closed.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from nacl.exceptions import CryptoError
from nacl.secret import Aead

from agent_rooms_mcp.encoding import pae
from agent_rooms_mcp.home import HomeError, check_private_file, write_private_file

_DOMAIN = b"agent-rooms/vault/v1"
AGENT_ENV = "agent-env"


class VaultError(Exception):
    """A sealed value that does not open: the wrong key, row or purpose, or tampered bytes."""


def create_master_key(path: Path) -> None:
    write_private_file(path, secrets.token_bytes(Aead.KEY_SIZE))


class Vault:
    """Loads the master key on first use, so a hub that keeps no secrets never needs one."""

    def __init__(self, key_path: Path) -> None:
        self._path = key_path
        self._aead: Aead | None = None

    def _box(self) -> Aead:
        if self._aead is None:
            try:
                check_private_file(self._path)
                key = self._path.read_bytes()
            except FileNotFoundError as e:
                raise HomeError(f"no master key at {self._path}; run: agent-rooms init") from e
            except OSError as e:
                raise HomeError(str(e)) from e
            if len(key) != Aead.KEY_SIZE:
                raise HomeError(f"{self._path} is not a master key")
            self._aead = Aead(key)
        return self._aead

    def seal(self, purpose: str, row: str, value: str) -> bytes:
        return bytes(self._box().encrypt(value.encode(), _bound(purpose, row)))

    def open(self, purpose: str, row: str, sealed: bytes) -> str:
        try:
            return self._box().decrypt(sealed, _bound(purpose, row)).decode()
        except CryptoError:
            raise VaultError(f"a stored {purpose} secret does not open for {row}") from None


def _bound(purpose: str, row: str) -> bytes:
    return pae(_DOMAIN, purpose.encode(), row.encode())
