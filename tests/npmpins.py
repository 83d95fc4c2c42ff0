"""Node tools the suite runs for real (the MCP Inspector, the MCP conformance suite), each pinned with the Node 22
it needs by a package.json + package-lock.json under tests/, installed once per lock file with `npm ci` into
.cache/ (ignored by git).

Without npm or its registry a test that needs one skips, saying why; where CI sets the tool's `require`
variable (.ci/run, when npm exists) the same absence fails instead, so it cannot pass unseen.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

CACHE = Path(__file__).resolve().parents[1] / ".cache"
NODE = Path("node_modules/node/bin/node")
# Generous bounds for a loaded two-core machine, not expectations: about 30 s to install.
PING_TIMEOUT_S = 60
INSTALL_TIMEOUT_S = 900


@dataclass(frozen=True)
class NpmPins:
    """One pinned Node tool: where its package.json and lock live, what its checks are called in a skip's
    reason, the environment variable that turns that skip into a failure, and the file that proves it installed."""

    pins: Path
    what: str
    require: str
    entry: Path

    def unavailable(self, reason: str) -> NoReturn:
        if os.environ.get(self.require):
            pytest.fail(f"{reason} ({self.require} is set)")
        pytest.skip(reason)

    def install(self) -> Path:
        """The folder holding node_modules/, installed once per lock file; a half-done install is never reused."""
        locks = [self.pins / "package.json", self.pins / "package-lock.json"]
        key = hashlib.sha256(b"".join(p.read_bytes() for p in locks)).hexdigest()[:16]
        cache = CACHE / self.pins.name
        home = cache / key
        if (home / self.entry).exists() and (home / NODE).exists():
            return home
        npm = shutil.which("npm")
        if npm is None:
            self.unavailable(f"npm is not installed: the {self.what} checks need it")
        self._ping(npm)
        staging = cache / f"{key}.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for p in locks:
            shutil.copy(p, staging / p.name)
        installed = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=staging,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
        assert installed.returncode == 0, installed.stderr[-4000:]
        try:
            staging.rename(home)
        except OSError:  # another run installed it meanwhile
            shutil.rmtree(staging, ignore_errors=True)
        return home

    def _ping(self, npm: str) -> None:
        try:
            ping = subprocess.run(
                [npm, "ping", "--fetch-retries=0", f"--fetch-timeout={PING_TIMEOUT_S * 1000 // 2}"],
                capture_output=True,
                text=True,
                timeout=PING_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            self.unavailable(f"the npm registry did not answer `npm ping`: the {self.what} checks need it")
        if ping.returncode != 0:
            said = [line for line in ping.stderr.splitlines() if line.startswith("npm error")] or ["no error text"]
            self.unavailable(f"the npm registry is unreachable ({said[0]}): the {self.what} checks need it")
