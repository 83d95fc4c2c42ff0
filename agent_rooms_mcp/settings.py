"""Settings and named limits. The environment is read here and nowhere else (`Settings.from_env`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent_rooms_mcp.home import check_private_file

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True, slots=True)
class Limits:
    """DESIGN §3.2. Every cap a caller can hit has a name here, not a literal at the call site."""

    message_bytes: int = 32 * KIB
    file_bytes: int = 1 * MIB
    file_range_bytes: int = 64 * KIB
    file_name_bytes: int = 255
    page_default: int = 50
    page_max: int = 200
    # A page of messages also ends once its texts pass this many bytes (invariant 65): 200 messages of
    # 32 KiB would be 6.4 MiB, far past what MCP clients pass on to a model.
    page_bytes: int = 256 * KIB
    long_poll_default_s: int = 25
    long_poll_max_s: int = 50
    # Cross-process writers are not notified in-process; a long-poll looks again this often.
    long_poll_recheck_s: float = 0.25
    mentions_max: int = 20
    task_title_chars: int = 200
    # A task's note and a rejection's reason: a sentence or a paragraph, not a document.
    note_chars: int = 2000
    http_body_bytes: int = 4 * MIB
    stdio_line_bytes: int = 4 * MIB
    pending_invites_per_room: int = 20
    invite_ttl_default_s: int = 24 * 3600
    invite_ttl_min_s: int = 60
    invite_ttl_max_s: int = 7 * 24 * 3600
    token_ttl_default_s: int = 90 * 24 * 3600
    token_ttl_max_s: int = 366 * 24 * 3600
    # A passport is accepted this far outside its nbf/exp window (clock skew, invariant 6).
    clock_skew_s: int = 10
    # SQLite waits this long for another process's write lock before giving up.
    busy_timeout_ms: int = 10_000


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Settings:
    home: Path
    limits: Limits = field(default=DEFAULT_LIMITS)
    # stdio only: the credential this server process acts with (DESIGN §2).
    stdio_token: str | None = None
    # Set when AGENT_ROOMS_TOKEN_FILE named a file we refused to read; the server still starts.
    stdio_token_problem: str | None = None

    @property
    def db_path(self) -> Path:
        return self.home / "hub.db"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def issuer_key_path(self) -> Path:
        return self.keys_dir / "issuer.paserk"

    @property
    def tokens_dir(self) -> Path:
        return self.home / "tokens"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        home = Path(env.get("AGENT_ROOMS_HOME") or Path.home() / ".agent-rooms").expanduser().absolute()
        token = env.get("AGENT_ROOMS_TOKEN") or None
        problem = None
        if token is None and env.get("AGENT_ROOMS_TOKEN_FILE"):
            token, problem = _read_token_file(Path(env["AGENT_ROOMS_TOKEN_FILE"]).expanduser())
        return cls(home=home, stdio_token=token.strip() if token else None, stdio_token_problem=problem)


def _read_token_file(path: Path) -> tuple[str | None, str | None]:
    """A token file must be ours and private (0600), like a key file."""
    try:
        check_private_file(path)
        return path.read_text(encoding="ascii").strip(), None
    except (OSError, UnicodeDecodeError) as e:
        return None, f"{path}: {e}"
