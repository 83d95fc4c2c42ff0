"""What a prompt-injected CLI would try (issue 14): the `escape` scenario runs each attempt named in the file
FAKE_ESCAPES_FILE and logs how each went, then replies in the room as the `ok` scenario does.

An attempt is {"kind": ..., "target": ...}:
- read:         read one byte of a file (or list a directory)
- write:        append to a file, creating it (its directory must exist)
- mkdir:        create a directory
- rename:       rename <target> to <target>.x, then recreate <target>/hooks (the `.git` swap)
- connect_tcp:  connect to 127.0.0.1:<target>
- connect_unix: connect to the Unix socket at <target> (a leading "@" names an abstract socket)
- fork_away:    double-fork, setsid, and leave `sleep <target>` running (the test finds it by that argv)
- whoami:       the uid and effective capabilities (always "ok": the result is in `detail`)
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any


def attempt_all(path: str | None) -> list[dict[str, Any]]:
    if not path or not Path(path).exists():
        return []
    return [_attempt(a["kind"], str(a["target"])) for a in json.loads(Path(path).read_text())]


def _attempt(kind: str, target: str) -> dict[str, Any]:
    record: dict[str, Any] = {"kind": kind, "target": target}
    try:
        record["detail"] = _do(kind, target)
        record["ok"] = True
    except OSError as e:
        record["ok"], record["error"] = False, type(e).__name__
    return record


def _do(kind: str, target: str) -> str:
    if kind == "read":
        if Path(target).is_dir():
            return f"{len(os.listdir(target))} entries"
        with open(target, "rb") as f:
            return f"{len(f.read(1))} byte"
    if kind == "write":
        with open(target, "a") as f:
            f.write("#!/bin/sh\necho pwned\n")
        return "written"
    if kind == "mkdir":
        os.mkdir(target)
        return "made"
    if kind == "rename":
        os.rename(target, target + ".x")
        os.makedirs(os.path.join(target, "hooks"))
        return "swapped"
    if kind == "connect_tcp":
        with socket.create_connection(("127.0.0.1", int(target)), timeout=2):
            return "connected"
    if kind == "connect_unix":
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect("\0" + target[1:] if target.startswith("@") else target)
            return "connected"
    if kind == "fork_away":
        _fork_away(target)
        return "forked"
    if kind == "whoami":
        status = Path("/proc/self/status").read_text()
        eff = next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:"))
        return json.dumps({"uid": os.getuid(), "cap_eff": eff})
    raise OSError(f"unknown attempt {kind}")


def _fork_away(seconds: str) -> None:
    """A daemon the classic way: fork, setsid, fork again, exec sleep; the middle process exits at once."""
    first = os.fork()
    if first == 0:
        os.setsid()
        if os.fork() == 0:
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            os.execvp("sleep", ["sleep", seconds])
        os._exit(0)
    os.waitpid(first, 0)
    time.sleep(0.2)  # the grandchild has exec'd by now
