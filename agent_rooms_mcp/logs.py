"""structlog on stderr (stdout is the stdio protocol), JSON unless a person is watching; no secrets."""

from __future__ import annotations

import logging
import sys

import pydantic_core
import structlog
from structlog.processors import ExceptionRenderer
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor

REDACTED = frozenset(
    {"token", "passport", "authorization", "invite_code", "code", "text", "body", "content", "prompt", "env"}
)


def redact(_logger: object, _method: str, event: EventDict) -> EventDict:
    """Defence in depth: we log ids, never secrets or message bodies.

    >>> redact(None, "info", {"event": "auth.ok", "token": "art_x", "agent_id": "agt_1"})
    {'event': 'auth.ok', 'token': '[redacted]', 'agent_id': 'agt_1'}
    """
    for key in REDACTED & event.keys():
        event[key] = "[redacted]"
    return event


def _json_line(event: EventDict, **_: object) -> str:
    """A log line's JSON. structlog's default, json.dumps with a `default`, builds a new encoder for every line:
    that was a third of the per-call `tool.call` line's cost. Anything JSON cannot hold is written as its repr."""
    return pydantic_core.to_json(event, fallback=repr).decode()


class _CurrentStderr:
    """Whatever `sys.stderr` is when a line is written, not when logging was set up: a CLI command run in-process
    (a test's CliRunner) swaps it for a buffer of its own and closes that buffer after, and a logger cached on it
    would then fail every later line with "I/O operation on closed file"."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(*, json: bool | None = None, level: int = logging.INFO) -> None:
    json = (not sys.stderr.isatty()) if json is None else json
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    # Tracebacks with locals could print a token held in a variable: never show locals.
    render: list[Processor] = (
        [
            ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
            structlog.processors.JSONRenderer(serializer=_json_line),
        ]
        if json
        else [structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)]
    )
    structlog.configure(
        processors=[*shared, *render],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
        )
    )
    # The SDK calls logging.basicConfig when a server is built; force=True keeps ours in place.
    logging.basicConfig(handlers=[handler], level=logging.WARNING, force=True)
