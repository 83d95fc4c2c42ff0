"""structlog on stderr (stdout is the stdio protocol), JSON unless a person is watching; no secrets."""

from __future__ import annotations

import logging
import sys

import pydantic_core
import structlog
from structlog.processors import ExceptionRenderer
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor

from agent_rooms_mcp.clock import now_utc

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


# structlog's `add_log_level` names: a method's name, except these two.
_LEVEL_OF_METHOD = {"warn": "warning", "exception": "error"}

# Tracebacks with locals could print a token held in a variable: never show locals.
_render_exception = ExceptionRenderer(ExceptionDictTransformer(show_locals=False))


def _json_line(logger: object, method: str, event: EventDict) -> str:
    """A JSON line in one step: the level, the time, redaction, an exception's traceback, the encoding.

    Every call writes one (`tool.call`), so its cost is in every ratio of DESIGN §11. As structlog's chain of
    five processors (`add_log_level`, `TimeStamper`, `redact`, `ExceptionRenderer`, `JSONRenderer`) it cost
    ~40 µs per line measured inside the served process, against ~7 µs in a tight loop: a call touches each
    processor's code and data cold. The same fields in the same order, with `now_utc`'s text for the time
    (structlog's ISO form in UTC, formatted once per second), and `pydantic_core` to encode (json.dumps with a
    `default` builds an encoder per line); anything JSON cannot hold is written as its repr.

    >>> _json_line(None, "warn", {"event": "auth.ok", "token": "art_x"})[:71]
    '{"event":"auth.ok","token":"[redacted]","level":"warning","timestamp":"'
    """
    event["level"] = _LEVEL_OF_METHOD.get(method, method)
    event["timestamp"] = now_utc()
    redact(logger, method, event)
    if "exc_info" in event:
        event = _render_exception(logger, method, event)
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
    # JSON (a service, a pipe): `_json_line` alone. A person at a terminal: structlog's chain and its console
    # renderer, where the cost of a line does not matter.
    shared: list[Processor] = (
        []
        if json
        else [structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True), redact]
    )
    render: list[Processor] = (
        [_json_line] if json else [structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)]
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
