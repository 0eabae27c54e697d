"""A loopback OpenAI-style server whose replies a test scripts: ok, 500, 429, slow,
malformed JSON, or closed; and legal but odd replies: content as text parts, null or
empty content, a refusal, ``message: null``, no choices. For fault tests; the real-server tests use llama_cpp.server."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _choice(message) -> dict:
    return {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}


# Replies an OpenAI-compatible server may legally (or brokenly) send: action -> body.
ODD = {
    # "parts:a|b" -> content [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    "parts": lambda arg: _choice(
        {
            "role": "assistant",
            "content": [{"type": "text", "text": t} for t in arg.split("|")],
        }
    ),
    "null": lambda arg: _choice({"role": "assistant", "content": None}),
    "empty": lambda arg: _choice({"role": "assistant", "content": ""}),
    "refusal": lambda arg: _choice({"role": "assistant", "content": None, "refusal": arg}),
    "nomessage": lambda arg: _choice(None),
    "nochoices": lambda arg: {"choices": [], "usage": {"completion_tokens": 0}},
}


class FaultServer:
    def __init__(self, default: str = "ok:Fine remark from the server.", port: int = 0):
        self.actions: deque[str] = deque()
        self.default = default
        self.requests: list[dict] = []
        self.in_flight = 0
        # what GET /models lists (None: the server has no such endpoint, 404), and HTTP
        # statuses to answer it with first (e.g. 503 while a server loads its model)
        self.models: list[str] | None = ["served-model"]
        self.get_failures: deque[int] = deque()
        self.gets = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                outer.gets += 1
                if outer.get_failures:
                    self.send_response(outer.get_failures.popleft())
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                found = self.path.endswith("/models") and outer.models is not None
                data = json.dumps(
                    {"object": "list", "data": [{"id": m, "object": "model"} for m in outer.models]}
                    if found
                    else {"error": "not found"}
                ).encode()
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer._lock:
                    outer.requests.append({"headers": dict(self.headers), "body": body})
                    action = outer.actions.popleft() if outer.actions else outer.default
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    outer._act(self, action)
                finally:
                    with outer._lock:
                        outer.in_flight -= 1

        ThreadingHTTPServer.allow_reuse_address = True
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _act(self, h, action: str) -> None:
        kind, _, arg = action.partition(":")
        if kind == "slow":
            time.sleep(float(arg))
            kind, arg = "ok", "A slow but fine remark."
        if kind == "ok":
            reply = {
                "choices": [{"message": {"role": "assistant", "content": arg}}],
                "usage": {"completion_tokens": len(arg.split())},
            }
            data, status = json.dumps(reply).encode(), 200
        elif kind == "malformed":
            data, status = b'{"choices": [ this is not json', 200
        elif kind in ODD:
            data, status = json.dumps(ODD[kind](arg)).encode(), 200
        else:  # an HTTP status code
            data, status = b'{"error": "scripted failure"}', int(kind)
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        if status == 429:
            # "429:N" asks the client to wait N seconds before trying again.
            h.send_header("Retry-After", arg or "0")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
