"""Unix sockets of a run directory: bound private whatever the path's length (Linux's sun_path is 108 bytes).

A leaf: the bridge, the relay inside a sandbox and the supervisor's listeners all use it, and none of them
may pull in more of the hub than this.
"""

from __future__ import annotations

import os
import socket
from contextlib import suppress
from pathlib import Path

# A Unix socket path longer than this is reached relative to its directory (sun_path is 108 bytes on Linux).
SUN_PATH_MAX = 100
PRIVATE_SOCKET = 0o600


def bind_private_unix(path: Path, backlog: int) -> socket.socket:
    """A listening socket at `path`, mode 0600 before anyone can connect. Replaces a socket left there."""
    with suppress(FileNotFoundError):
        path.unlink()  # a socket left by a crashed server: the run directory is this run's alone
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if len(os.fsencode(path)) <= SUN_PATH_MAX:
            sock.bind(str(path))
        else:
            # A longer path is bound through the run directory's descriptor (Linux's /proc/self/fd).
            fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                sock.bind(f"/proc/self/fd/{fd}/{path.name}")
            finally:
                os.close(fd)
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
        if len(os.fsencode(path)) <= SUN_PATH_MAX:
            sock.connect(str(path))
        else:
            fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                sock.connect(f"/proc/self/fd/{fd}/{path.name}")
            finally:
                os.close(fd)
    except BaseException:
        sock.close()
        raise
    return sock
