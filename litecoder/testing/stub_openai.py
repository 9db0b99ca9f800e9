"""A scripted OpenAI-compatible HTTP server for deterministic tests (no model needed).

Each request is answered by ``handler(path, body) -> (status, json_or_text, delay_s)``; the
handler can be swapped while the server runs (``server.handler = ...``). The server records
every request and the peak number handled at once. ``completion_body`` builds the JSON of a
completion or chat completion reply, ``tool_call`` one native tool call in it.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

Handler = Callable[[str, dict], "tuple[int, object, float]"]

__all__ = ["Handler", "StubServer", "completion_body", "echo_handler", "tool_call"]


def tool_call(name: str, arguments: object, call_id: str) -> dict:
    """One native tool call as a chat completion carries it (``arguments`` serialized unless a string)."""
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": text}}


def completion_body(texts: list[str], *, finish: str = "stop", model: str = "stub-model", chat: bool = False,
                    tool_calls: list[dict] | None = None) -> dict:
    """A reply with one choice per text; ``tool_calls`` (see ``tool_call``) go on the first choice
    of a chat reply, whose finish reason is then ``tool_calls``."""
    choices = []
    for i, text in enumerate(texts):
        tokens = list(range(len(text.split()) + 1))
        if chat and i == 0 and tool_calls:
            message = {"role": "assistant", "content": text or None, "tool_calls": tool_calls}
            choices.append({"index": i, "message": message, "finish_reason": "tool_calls"})
        elif chat:
            choices.append({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish})
        else:
            choices.append({"index": i, "text": text, "finish_reason": finish, "token_ids": tokens})
    completion_tokens = sum(len(t.split()) + 1 for t in texts)
    return {"model": model, "choices": choices, "usage": {"prompt_tokens": 7, "completion_tokens": completion_tokens}}


_counter = iter(range(10**9))


def echo_handler(path: str, body: dict) -> tuple[int, object, float]:
    """Answer every completion with ``n`` distinct task texts."""
    n = int(body.get("n", 1))
    texts = [f"Task {next(_counter)}: configure the service and write the report to /tmp/out.txt" for _ in range(n)]
    return 200, completion_body(texts, chat=path.endswith("chat/completions")), 0.0


class StubServer:
    def __init__(self, handler: Handler = echo_handler) -> None:
        self.handler = handler
        self.requests: list[tuple[str, dict, dict]] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self._lock = threading.Lock()
        stub = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, status: int, payload: object) -> None:
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                if self.path.endswith("/models"):
                    self._reply(200, {"data": [{"id": "stub-model"}]})
                elif self.path.endswith("/health"):
                    self._reply(200, {})
                else:
                    self._reply(404, {"error": "not found"})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with stub._lock:
                    stub.requests.append((self.path, body, dict(self.headers)))
                    stub.in_flight += 1
                    stub.peak_in_flight = max(stub.peak_in_flight, stub.in_flight)
                try:
                    status, payload, delay = stub.handler(self.path, body)
                    if delay:
                        time.sleep(delay)
                    self._reply(status, payload)
                finally:
                    with stub._lock:
                        stub.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "StubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
