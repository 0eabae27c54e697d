"""Partner (and debate agent) on any OpenAI-compatible chat-completions server: OpenAI,
Ollama, LM Studio, llama-server, vLLM, llama-cpp-python's own server.

Standard library only (urllib + a thread pool), so it adds no dependency. The API key is
read from the environment variable named in ``partner.api_key_env`` at request time and
is never stored on the object's name, in logs, in the run directory or in SQLite.

A reply without text (null or empty content, a refusal, ``message: null``, no choices) is
retried like a failed request; if every attempt gives none, that remark comes back as a
``MissingRemark`` (the training loop decides whether the run can go on without it).

Only the server given is trusted (see ``http_trust``): redirects are not followed, the
timeout bounds a whole reply, a reply's size is capped (``partner.max_reply_mb``), and a
reply that is not JSON (an event stream, a compressed body, a web page) ends in a line
saying what arrived. A server's error text is printed only through ``safe_text``.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPException

from saie_lite.backends.http_trust import BadReply, error_text, fetch, what_arrived
from saie_lite.errors import PartnerError, UserError
from saie_lite.protocols import Chat, MissingRemark
from saie_lite.safe_text import one_line

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
NOTE_WAIT = 5.0  # seconds: a longer wait before a retry is announced on stderr
# A request that reached no answer: refused, reset, timed out, or cut off mid-reply.
NETWORK_ERRORS = (urllib.error.URLError, TimeoutError, ConnectionError, HTTPException)


def _headers(key_env: str, headers: dict) -> dict:
    """Every request asks for one plain JSON reply; the key, when there is one, goes in
    the Authorization header, to partner.url only (redirects are not followed)."""
    h = {**headers, "Accept": "application/json", "Accept-Encoding": "identity"}
    key = os.environ.get(key_env) if key_env else None
    if key:
        h["Authorization"] = f"Bearer {key}"
    return h


def _reason(e: Exception) -> str:
    reason = getattr(e, "reason", e)
    return "timed out" if isinstance(reason, TimeoutError) else str(reason)


class OpenAIPartner:
    def __init__(self, cfg):
        pc = cfg.partner
        if not pc.url:
            raise UserError(
                "partner 'openai' needs a server: --partner-url http://HOST:PORT/v1 "
                "(or partner.url in the recipe)"
            )
        self.url = pc.url.rstrip("/")
        self.key_env = pc.api_key_env
        if self.key_env and not os.environ.get(self.key_env):
            raise UserError(
                f"partner.api_key_env names {self.key_env}, which is not set: export it"
            )
        self.temperature = pc.temperature
        self.timeout = pc.timeout
        self.max_bytes = int(pc.max_reply_mb * 2**20)
        self.model = pc.model  # a new run has asked the server for it (served_model)
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
        return _headers(self.key_env, {"Content-Type": "application/json"})

    def _post(self, payload: dict) -> tuple[dict, str] | MissingRemark:
        """(reply, text) of one completion, retrying failures; a ``MissingRemark`` when
        every attempt answered without usable text; ``PartnerError`` when the server
        itself kept failing (down, HTTP errors, malformed JSON)."""
        body = json.dumps(payload).encode("utf-8")
        last, no_text, retry_after = "no attempt", False, 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                # Exponential backoff with jitter; a server's Retry-After wins when longer.
                # Waiting happens only before another attempt, never after the last one.
                delay = self.backoff * 2 ** (attempt - 1) * (1 + random.random() / 4)
                wait = max(delay, min(retry_after, 60.0))
                if wait >= NOTE_WAIT:  # a silent minute looks like a hang
                    print(
                        f"partner server {self.url}: {last}, trying again in {wait:.0f} s "
                        f"(attempt {attempt + 1} of {self.retries + 1})",
                        file=sys.stderr,
                        flush=True,
                    )
                time.sleep(wait)
            retry_after, no_text = 0.0, False
            try:
                headers, raw = fetch(
                    f"{self.url}/chat/completions",
                    body,
                    self._headers(),
                    self.timeout,
                    self.max_bytes,
                )
            except BadReply as e:
                raise PartnerError(f"partner server {self.url} {e}") from None
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
                if e.code in (401, 403):
                    raise PartnerError(
                        f"partner server {self.url} refused the request (HTTP {e.code}): "
                        "check the API key variable"
                    ) from None
                if e.code not in RETRY_STATUS:
                    hint = {
                        404: " (check partner.url, which ends in /v1, and partner.model)",
                        400: " (a prompt past the server's context size? raise its context, "
                        "or lower partner.max_tokens or learner.max_seq_len)",
                        413: " (a prompt too long for the server: raise its limit, or lower "
                        "learner.max_seq_len)",
                    }.get(e.code, "")
                    raise PartnerError(
                        f"partner server {self.url} answered HTTP {e.code}{hint}: {error_text(e)}"
                    ) from None
                wait = e.headers.get("Retry-After") if e.headers else None
                if wait and wait.strip().isdigit():
                    retry_after = float(wait)
                continue
            except NETWORK_ERRORS as e:
                last = _reason(e)
                if last == "timed out":
                    last = f"timed out: no whole reply within partner.timeout={self.timeout:g} s"
                continue
            try:
                data = json.loads(raw)
            except (ValueError, RecursionError):
                arrived = what_arrived(headers, raw)
                if arrived:  # the server's setup, not a passing fault: asking again gets the same
                    raise PartnerError(f"partner server {self.url} {arrived}") from None
                last = "malformed JSON reply"
                continue
            text, problem = read_reply(data)
            if problem is None:
                return data, text
            last, no_text = problem, problem != MALFORMED
        if no_text:
            return MissingRemark(f"partner server {self.url} returned {last}")
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
            "stream": False,  # one JSON reply; some servers and proxies stream unless told
        }
        got = self._post(payload)
        if isinstance(got, MissingRemark):
            return got
        data, text = got
        with self._lock:
            self.requests_ok += 1
            usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
            self.tokens_generated += usage.get("completion_tokens") or 0
        return text

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


def served_model(pc, note) -> str:
    """The model to ask for when ``partner.model`` is left at 'embedded', the llama_cpp
    partner's default, which names nothing on a server: the one model ``GET /models``
    lists (llama-server, LM Studio with one model loaded). Several or none need
    ``--partner-model``, and the line lists them; a server without ``/models`` keeps
    the name as it was sent before, with a note. Retried like a chat request (a
    llama-server answers 503 while it loads its model)."""
    url = pc.url.rstrip("/")
    headers = _headers(pc.api_key_env, {})
    name = "--partner-model NAME (partner.model)"
    last, tries = "no attempt", 0
    for attempt in range(pc.retries + 1):
        if attempt:
            time.sleep(pc.backoff * 2 ** (attempt - 1))
        tries += 1
        try:
            # a model list is quick to give: a server that takes longer is not ready
            got, raw = fetch(
                f"{url}/models", None, headers, min(pc.timeout, 10.0), int(pc.max_reply_mb * 2**20)
            )
        except BadReply as e:
            raise UserError(f"partner server {url} {e}") from None
        except urllib.error.HTTPError as e:
            if e.code == 404:
                note(
                    f"partner server {url} does not list its models (GET /models: HTTP 404): "
                    f"asking for model {pc.model!r}; if it needs a name, give {name}"
                )
                return pc.model
            if e.code in (401, 403):
                raise UserError(
                    f"partner server {url} refused to list its models (HTTP {e.code}): check "
                    "the API key variable (partner.api_key_env)"
                ) from None
            last = f"HTTP {e.code}"
            if e.code in RETRY_STATUS:
                continue
            break
        except NETWORK_ERRORS as e:
            last = _reason(e)
            continue
        try:
            listed = json.loads(raw).get("data")
            ids = [m["id"] for m in listed if isinstance(m, dict) and isinstance(m.get("id"), str)]
        except (ValueError, AttributeError, TypeError, RecursionError):
            arrived = what_arrived(got, raw)
            if arrived:
                raise UserError(f"partner server {url} {arrived}") from None
            raise UserError(
                f"partner server {url} answered GET /models with something that is not a "
                f"model list: name the model with {name}"
            ) from None
        if len(ids) != 1:
            offer = ", ".join(ids[:10]) + (", ..." if len(ids) > 10 else "") if ids else "none"
            raise UserError(
                f"partner server {url} serves {len(ids)} models ({offer}): pick one with {name}"
            )
        return ids[0]
    raise UserError(
        f"partner server {url} did not list its models ({last}, {tries} "
        f"attempt{'s' if tries > 1 else ''}): "
        f"start the server (check partner.url), or name the model with {name}"
    )


MALFORMED = "a malformed reply (not a chat completion)"


def read_reply(data) -> tuple[str, str | None]:
    """(text, None) for a usable chat completion, else ("", what was wrong).

    Content may be a string or a list of text parts (joined). Null or empty content,
    ``message: null`` and an empty ``choices`` list are replies without text: they are
    retried, and if they persist the remark is missing (with the server's ``refusal``).
    """
    if not isinstance(data, dict):
        return "", MALFORMED
    choices = data.get("choices")
    if not choices:
        if choices is None and "error" in data:
            return "", f"an error: {one_line(data['error'])[:200]}"
        return "", "no choices"
    if not isinstance(choices, list) or not isinstance(choices[0], dict):
        return "", MALFORMED
    message = choices[0].get("message")
    if message is None:
        return "", "message: null"
    if not isinstance(message, dict):
        return "", MALFORMED
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(
            p if isinstance(p, str) else str(p.get("text") or "")
            for p in content
            if isinstance(p, str) or (isinstance(p, dict) and p.get("type", "text") == "text")
        )
    elif content is not None and not isinstance(content, str):
        return "", MALFORMED
    refusal = message.get("refusal")
    if refusal and not (content or "").strip():
        return "", f"a refusal: {str(refusal).strip()[:200]!r}"
    if content is None:
        return "", "content: null"
    if not content.strip():
        return "", "empty content"
    return content.strip(), None


def create_partner(cfg, learner=None) -> OpenAIPartner:
    return OpenAIPartner(cfg)
