"""Partner (and debate agent) on any OpenAI-compatible chat-completions server: OpenAI,
Ollama, LM Studio, llama-server, vLLM, llama-cpp-python's own server.

Standard library only (urllib + a thread pool), so it adds no dependency. The API key is
read from the environment variable named in ``partner.api_key_env`` at request time and
is never stored on the object's name, in logs, in the run directory or in SQLite.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPException

from saie_lite.errors import PartnerError, UserError
from saie_lite.protocols import Chat

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAIPartner:
    def __init__(self, cfg):
        pc = cfg.partner
        if not pc.url:
            raise UserError(
                "partner 'openai' needs a server: --partner-url http://HOST:PORT/v1 "
                "(or partner.url in the recipe)"
            )
        self.url = pc.url.rstrip("/")
        self.model = pc.model
        self.key_env = pc.api_key_env
        if self.key_env and not os.environ.get(self.key_env):
            raise UserError(
                f"partner.api_key_env names {self.key_env}, which is not set: export it"
            )
        self.temperature = pc.temperature
        self.timeout = pc.timeout
        self.retries = pc.retries
        self.backoff = pc.backoff
        self.seed = pc.seed
        self.pool = ThreadPoolExecutor(max_workers=pc.concurrency)
        self.name = f"openai:{self.url}:{self.model}:t{pc.temperature}:s{pc.seed}"
        self.tokens_generated = 0
        self.requests_ok = 0  # successful completions (tests check nothing is asked twice)
        self._lock = threading.Lock()

    # -- one request, with retries ---------------------------------------------------
    def _headers(self) -> dict:
        h = {"Content-Type": "application/json"}
        key = os.environ.get(self.key_env) if self.key_env else None
        if key:
            h["Authorization"] = f"Bearer {key}"
        return h

    def _post(self, payload: dict) -> dict:
        body = json.dumps(payload).encode("utf-8")
        last = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                # Exponential backoff with jitter; a server's Retry-After wins when longer.
                time.sleep(self.backoff * 2 ** (attempt - 1) * (1 + random.random() / 4))
            req = urllib.request.Request(
                f"{self.url}/chat/completions", data=body, headers=self._headers(), method="POST"
            )
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
                if e.code in (401, 403):
                    raise PartnerError(
                        f"partner server {self.url} refused the request (HTTP {e.code}): "
                        "check the API key variable"
                    ) from None
                if e.code not in RETRY_STATUS:
                    raise PartnerError(
                        f"partner server {self.url} answered HTTP {e.code}: "
                        f"{e.read()[:200].decode('utf-8', 'replace')}"
                    ) from None
                wait = e.headers.get("Retry-After") if e.headers else None
                if wait and wait.isdigit():
                    time.sleep(min(float(wait), 60.0))
                continue
            except (urllib.error.URLError, TimeoutError, ConnectionError, HTTPException) as e:
                reason = getattr(e, "reason", e)
                last = "timed out" if isinstance(reason, TimeoutError) else str(reason)
                continue
            try:
                data = json.loads(raw)
                data["choices"][0]["message"]
                return data
            except (ValueError, KeyError, IndexError, TypeError):
                last = "malformed JSON reply"
                continue
        raise PartnerError(
            f"partner server {self.url} failed after {self.retries + 1} attempts ({last})"
        )

    def _complete(self, chat: Chat, max_tokens: int, temperature: float | None, seed: int) -> str:
        payload = {
            "model": self.model,
            "messages": chat,
            "max_tokens": max_tokens,
            "temperature": self.temperature if temperature is None else temperature,
            "seed": seed,
        }
        data = self._post(payload)
        with self._lock:
            self.requests_ok += 1
            self.tokens_generated += (data.get("usage") or {}).get("completion_tokens", 0)
        return (data["choices"][0]["message"].get("content") or "").strip()

    # -- the partner / agent interface -------------------------------------------------
    def generate(
        self, chats: list[Chat], max_new_tokens: int, temperature: float | None = None
    ) -> list[str]:
        """Requests run concurrently (``partner.concurrency``); results keep their order."""
        jobs = [
            self.pool.submit(self._complete, c, max_new_tokens, temperature, self.seed + i)
            for i, c in enumerate(chats)
        ]
        done: dict[int, str] = {}
        failure: PartnerError | None = None
        for i, job in enumerate(jobs):
            try:
                done[i] = job.result()
            except PartnerError as e:
                failure = failure or e
        if failure is not None:
            # What did arrive is handed back so the caller can keep (cache) it.
            failure.partial = done
            raise failure
        return [done[i] for i in range(len(chats))]

    def remark(self, chats: list[Chat], max_tokens: int) -> list[str]:
        return self.generate(chats, max_tokens, None)


def create_partner(cfg, learner=None) -> OpenAIPartner:
    return OpenAIPartner(cfg)
