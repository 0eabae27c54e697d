"""A loopback server speaking the vLLM endpoints the `generate_on: vllm` path uses:
`/v1/load_lora_adapter`, `/v1/unload_lora_adapter` and `/v1/chat/completions` with
`model` = a loaded adapter's name. Each reply names the adapter and the adapter file's
hash, so a test sees which weights answered. `fail_chats` makes the next N chat requests
answer HTTP 500 (a server in trouble)."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class LoraServer:
    def __init__(self):
        self.loaded: dict[str, str] = {}  # name -> hash of the adapter weights
        self.log: list[tuple[str, str]] = []  # (endpoint, adapter name)
        self.fail_chats = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body) -> None:
                data = json.dumps(body).encode() if not isinstance(body, bytes) else body
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    status, reply = outer.handle(self.path, body)
                self._send(status, reply)

        ThreadingHTTPServer.allow_reuse_address = True
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def handle(self, path: str, body: dict):
        if path == "/v1/load_lora_adapter":
            name = body["lora_name"]
            self.log.append(("load", name))
            if name in self.loaded:
                return 400, {"message": f"The lora adapter '{name}' has already been loaded."}
            weights = Path(body["lora_path"]) / "adapter_model.safetensors"
            if not weights.is_file():
                return 400, {"message": f"No adapter found at {body['lora_path']}"}
            self.loaded[name] = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
            return 200, {"ok": True}
        if path == "/v1/unload_lora_adapter":
            self.log.append(("unload", body["lora_name"]))
            if self.loaded.pop(body["lora_name"], None) is None:
                return 404, {"message": "not loaded"}
            return 200, {"ok": True}
        if path == "/v1/chat/completions":
            self.log.append(("chat", body["model"]))
            if self.fail_chats:
                self.fail_chats -= 1
                return 500, {"message": "engine busy"}
            if body["model"] not in self.loaded:
                return 404, {"message": f"The model `{body['model']}` does not exist."}
            # The weights' hash, not the name: the name holds the run's, and the reply must
            # not differ between two runs trained alike.
            text = f"Adapter ({self.loaded[body['model']]}) says 7.\n#### 7"
            return 200, {
                "choices": [{"message": {"role": "assistant", "content": text}}],
                "usage": {"completion_tokens": 9},
            }
        return 404, {"message": "no such endpoint"}

    def close(self) -> None:
        self.httpd.shutdown()
