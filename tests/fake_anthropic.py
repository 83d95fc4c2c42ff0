"""A fake Anthropic Messages API on loopback, for driving the real Claude Code CLI (research/wake.md §7.3).

Stdlib only: a threaded HTTP server in a background thread, so it serves whatever event loop the test runs.
Every POST /v1/messages is recorded (path, headers, JSON body); `reply`, a function of the request body,
decides the answer, which is streamed as the minimal SSE sequence the CLI accepts:

    message_start -> content_block_start -> content_block_delta -> content_block_stop -> message_delta -> message_stop

`Text` ends the turn, `ToolUse` asks for a tool call (stop_reason "tool_use"), and `Hang` sends message_start and
one text delta, then holds the connection open until the server closes.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "claude-sonnet-4-5"


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class ToolUse:
    name: str
    input: dict[str, Any]
    id: str = field(default_factory=lambda: "toolu_" + uuid.uuid4().hex[:24])


@dataclass(frozen=True)
class Hang:
    text: str = "thinking"


Reply = Text | ToolUse | Hang


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    def text(self) -> str:
        """Everything the model was shown, as one string: system, messages, tool results."""
        return json.dumps([self.body.get("system"), self.body.get("messages")])


class FakeAnthropic:
    def __init__(self, reply: Callable[[Request], Reply]) -> None:
        self.reply = reply
        self.requests: list[Request] = []
        self.hanging = threading.Event()  # set once a Hang reply has started streaming
        self._closing = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-anthropic", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def messages(self) -> list[Request]:
        """The model calls (streamed /v1/messages), not token counts or other side requests."""
        return [r for r in self.requests if r.path.split("?")[0] == "/v1/messages" and r.body.get("stream")]

    def __enter__(self) -> FakeAnthropic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def _handler(fake: FakeAnthropic) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                body = {}
            request = Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            fake.requests.append(request)
            path = self.path.split("?")[0]
            if path == "/v1/messages/count_tokens":
                return self._json({"input_tokens": 10})
            if path != "/v1/messages":
                return self._json({"type": "error", "error": {"type": "not_found_error", "message": path}}, 404)
            answer = fake.reply(request)
            if not body.get("stream"):
                return self._json(_message(answer))
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("cache-control", "no-cache")
            self.send_header("connection", "close")
            self.end_headers()
            self.close_connection = True
            for event in _events(answer):
                self.wfile.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
                self.wfile.flush()
            if isinstance(answer, Hang):
                fake.hanging.set()
                fake._closing.wait(120)

        def _json(self, document: dict[str, Any], status: int = 200) -> None:
            data = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


_USAGE = {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def _message(answer: Reply) -> dict[str, Any]:
    """A non-streamed reply (side requests the CLI may make): plain text, whatever was asked."""
    text = answer.text if isinstance(answer, Text | Hang) else "ok"
    return {
        "id": "msg_" + uuid.uuid4().hex[:24],
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": _USAGE,
    }


def _events(answer: Reply) -> list[dict[str, Any]]:
    start = {**_message(answer), "content": [], "stop_reason": None, "usage": {**_USAGE, "output_tokens": 1}}
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    if isinstance(answer, ToolUse):
        block = {"type": "tool_use", "id": answer.id, "name": answer.name, "input": {}}
        delta = {"type": "input_json_delta", "partial_json": json.dumps(answer.input)}
        stop = "tool_use"
    else:
        block = {"type": "text", "text": ""}
        delta = {"type": "text_delta", "text": answer.text}
        stop = "end_turn"
    events.append({"type": "content_block_start", "index": 0, "content_block": block})
    events.append({"type": "content_block_delta", "index": 0, "delta": delta})
    if isinstance(answer, Hang):
        return events
    events.append({"type": "content_block_stop", "index": 0})
    events.append({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": _USAGE})
    events.append({"type": "message_stop"})
    return events
