"""Placeholder until brief E lands: a device's sealed agent variables (replaced on merge)."""

from __future__ import annotations

from pathlib import Path


class LocalEnv:
    def __init__(self, home: Path) -> None:
        self._home = home

    def open_for(self, handle: str, tool: str) -> dict[str, str]:
        return {}
