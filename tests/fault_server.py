"""A loopback OpenAI-style server whose replies a test scripts: ok, 500, 429, slow,
malformed JSON, or closed; and legal but odd replies: content as text parts, null or
empty content, a refusal, ``message: null``, no choices. And untrustworthy ones: a
redirect, a trickle, a huge body, an event stream, gzip, a web page. For fault tests; the
real-server tests use llama_cpp.server."""

from __future__ import annotations

import gzip
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


def _ok(text: str) -> dict:
    return {
        "choices": [{"message": {"role": "assistant", "content": text}}],
        "usage": {"completion_tokens": len(text.split())},
    }


class FaultServer:
    def __init__(
        self, default: str = "ok:Fine remark from the server.", port: int = 0, host="127.0.0.1"
    ):
        self.actions: deque[str] = deque()
        self.default = default
        self.requests: list[dict] = []
        self.in_flight = 0
        # what GET /models lists (None: the server has no such endpoint, 404), and HTTP
        # statuses to answer it with first (e.g. 503 while a server loads its model)
        self.models: list[str] | None = ["served-model"]
        self.get_failures: deque[int] = deque()
        self.get_actions: deque[str] = deque()  # scripted GET replies, as for POST
        self.gets = 0
        self.get_requests: list[dict] = []  # path and headers of every GET
        self.closing = False
        self.max_in_flight = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                outer.gets += 1
                outer.get_requests.append({"path": self.path, "headers": dict(self.headers)})
                if outer.get_actions or self.path.endswith("/chat/completions"):
                    # a client that followed a redirect turned its POST into this GET
                    outer._act(self, outer.get_actions.popleft() if outer.get_actions else "ok:")
                    return
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
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _act(self, h, action: str) -> None:
        try:
            self._reply(h, action)
        except OSError:  # a broken pipe or reset, over TLS too
            pass  # the client stopped reading (a capped or timed-out reply): as it should

    def _reply(self, h, action: str) -> None:
        kind, _, arg = action.partition(":")
        headers = {"Content-Type": "application/json"}
        if kind == "slow":
            time.sleep(float(arg))
            kind, arg = "ok", "A slow but fine remark."
        if kind == "redirect":  # "redirect:302:LOCATION"
            code, _, location = arg.partition(":")
            h.send_response(int(code))
            h.send_header("Location", location)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if kind in ("trickle", "tricklehead"):
            return self._trickle(h, kind, *arg.split(":"))
        if kind in ("huge", "hugenolength"):
            return self._huge(h, float(arg), kind == "huge")
        if kind == "ok":
            data, status = json.dumps(_ok(arg)).encode(), 200
        elif kind == "sse":
            chunk = {"choices": [{"delta": {"content": "Fine."}}]}
            data, status = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode(), 200
            headers["Content-Type"] = "text/event-stream"
        elif kind in ("gzip", "br"):  # "br" sends bytes no JSON reader can take
            data = json.dumps(_ok("Compressed remark.")).encode()
            data, status = gzip.compress(data) if kind == "gzip" else b"\x8b\x05\x80" + data, 200
            headers["Content-Encoding"] = kind
        elif kind == "html":
            data, status = b"<!DOCTYPE html><html><head><title>Chat UI</title></head></html>", 200
            headers["Content-Type"] = "text/html; charset=utf-8"
        elif kind == "malformed":
            data, status = b'{"choices": [ this is not json', 200
        elif kind in ODD:
            data, status = json.dumps(ODD[kind](arg)).encode(), 200
        else:  # an HTTP status code; "400:TEXT" answers TEXT as the error body
            status = int(kind)
            data = arg.encode() if arg and status != 429 else b'{"error": "scripted failure"}'
        h.send_response(status)
        for name, value in headers.items():
            h.send_header(name, value)
        if status == 429:
            # "429:N" asks the client to wait N seconds before trying again.
            h.send_header("Retry-After", arg or "0")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _trickle(self, h, kind: str, every: str, count: str) -> None:
        """A whole, valid reply, but ``count`` bytes of it (padding in the body, or a
        header for "tricklehead") come one every ``every`` seconds."""
        data = json.dumps(_ok("A trickled remark.")).encode()
        n = int(count)
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        if kind == "trickle":
            h.send_header("Content-Length", str(len(data) + n))
            h.end_headers()
            h.wfile.write(data[:-1])
            slow, rest = b" " * n, data[-1:]
        else:
            h.send_header("Content-Length", str(len(data)))
            h.flush_headers()  # no blank line yet: the headers go on
            slow, rest = b"X-Pad: " + b"p" * n, b"\r\n\r\n" + data
        for i in range(len(slow)):
            if self.closing:
                return
            h.wfile.write(slow[i : i + 1])
            h.wfile.flush()
            time.sleep(float(every))
        h.wfile.write(rest)

    def _huge(self, h, mb: float, with_length: bool) -> None:
        """A valid reply whose remark is ``mb`` MB long; its length declared or not (then
        the body ends when the connection closes)."""
        text = "a" * int(mb * 2**20)
        data = json.dumps(_ok(text)).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        if with_length:
            h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        for i in range(0, len(data), 1 << 16):
            h.wfile.write(data[i : i + (1 << 16)])

    def close(self) -> None:
        self.closing = True
        self.httpd.shutdown()
        self.httpd.server_close()
