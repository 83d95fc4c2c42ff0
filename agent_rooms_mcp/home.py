"""The hub's home directory: its layout, file modes, and the issuer key on disk (DESIGN §8).

Directories are 0700 and files 0600 whatever the umask; a key file that others could read,
a symlink, or a file owned by someone else is refused rather than used.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from nacl.signing import SigningKey

from agent_rooms_mcp.encoding import EncodingError, b64url_decode, b64url_encode

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
_SECRET_PREFIX = "k4.secret."


class HomeError(Exception):
    """The home is unsafe or unusable; the message names the file and the fix."""


def ensure_private_dir(path: Path, *, also_owner: int | None = None) -> None:
    """A 0700 directory of ours, made if missing. `also_owner`: a uid that may own it instead (a directory a
    root supervisor handed to the unprivileged user its CLIs run as)."""
    # mkdir's mode is filtered by the umask, so the mode is set again explicitly.
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise HomeError(f"{path} must be a directory, not a symlink")
    if st.st_uid not in (os.geteuid(), also_owner):
        raise HomeError(f"{path} is owned by another user")
    os.chmod(path, PRIVATE_DIR)


def write_private_file(path: Path, data: bytes) -> None:
    """Write atomically, 0600 from the first byte: never a moment where others could read it."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def check_private_file(path: Path) -> None:
    """Refuse a symlink, a file owned by another user, or one that group or others can touch."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise PermissionError(f"{path} is a symlink; refusing to use it")
    if not stat.S_ISREG(st.st_mode):
        raise PermissionError(f"{path} is not a regular file")
    if st.st_uid != os.geteuid():
        raise PermissionError(f"{path} is owned by another user")
    if st.st_mode & 0o077:
        raise PermissionError(f"{path} is readable by group or others; run: chmod 600 {path}")


def create_issuer_key(path: Path) -> SigningKey:
    key = SigningKey.generate()
    # PASERK k4.secret form: seed followed by the public key.
    encoded = _SECRET_PREFIX + b64url_encode(bytes(key) + bytes(key.verify_key))
    write_private_file(path, encoded.encode("ascii"))
    return key


def load_issuer_key(path: Path) -> SigningKey:
    try:
        check_private_file(path)
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError as e:
        raise HomeError(f"no issuer key at {path}; run: agent-rooms init") from e
    except (OSError, UnicodeDecodeError) as e:
        raise HomeError(str(e)) from e
    if not text.startswith(_SECRET_PREFIX):
        raise HomeError(f"{path} is not a k4.secret key")
    try:
        raw = b64url_decode(text[len(_SECRET_PREFIX) :])
    except EncodingError:
        raise HomeError(f"{path} is not a k4.secret key") from None
    if len(raw) != 64:
        raise HomeError(f"{path} is not a k4.secret key")
    key = SigningKey(raw[:32])
    if bytes(key.verify_key) != raw[32:]:
        raise HomeError(f"{path}: public half does not match the secret half")
    return key


def secure_database_files(db_path: Path) -> None:
    """SQLite creates -wal and -shm itself, with modes from the umask: pin them to 0600."""
    for suffix in ("", "-wal", "-shm"):
        p = db_path.with_name(db_path.name + suffix)
        if p.exists() and not p.is_symlink():
            os.chmod(p, PRIVATE_FILE)
