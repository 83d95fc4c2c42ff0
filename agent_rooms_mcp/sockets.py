"""Unix sockets of a run directory: bound private whatever the path's length (Linux's sun_path is 108 bytes).

A leaf: the bridge, the relay inside a sandbox and the supervisor's listeners all use it, and none of them
may pull in more of the hub than this.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

# A Unix socket path longer than this is reached relative to its directory (sun_path is 108 bytes on Linux).
SUN_PATH_MAX = 100
PRIVATE_SOCKET = 0o600


@contextmanager
def _address(path: Path, open_flag: int) -> Iterator[str]:
    """The address to bind or connect `path` by: itself, or, past sun_path's length, the same name through its
    directory's descriptor (Linux's /proc/self/fd), open while the address is used."""
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, open_flag | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def bind_private_unix(path: Path, backlog: int) -> socket.socket:
    """A listening socket at `path`, mode 0600 before anyone can connect. Replaces a socket left there."""
    with suppress(FileNotFoundError):
        path.unlink()  # a socket left by a crashed server: the run directory is this run's alone
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _address(path, os.O_RDONLY) as address:
            sock.bind(address)
        # Before listen(): nobody can connect before the mode is ours (the 0700 directory already shuts
        # out other users; this keeps the socket private even if the directory's mode were widened).
        os.chmod(path, PRIVATE_SOCKET)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def connect_unix(path: Path) -> socket.socket:
    """A blocking connection to the socket at `path`, however long the path."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _address(path, os.O_PATH) as address:
            sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock
