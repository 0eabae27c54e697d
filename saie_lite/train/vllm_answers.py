"""Learner answers from a vLLM server with the live adapter (``learner.generate_on: vllm``).

Generation is most of an online method's time, and vLLM serves it far faster than the
training process can. The user starts ``vllm serve BASE --enable-lora`` with
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``. Every N updates (``learner.snapshot_every``)
the current adapter is saved where the server can read it and loaded under a versioned
name, ``saie-RUN-stepK``: vLLM keys its prefix cache by adapter name, so a name is never
reused for other weights. The previous adapter is then unloaded, and answers are asked
from ``/v1/chat/completions`` with ``model`` = that name, in parallel.

The staleness rule is the snapshot path's: answers at update ``s`` come from the adapter
of update ``(s // N) * N``. Adapters are kept on disk under their names and the one in
use is recorded in ``RUN/vllm.json``, so a resumed run loads the same weights under the
same name and its answers match the uninterrupted run's. Server faults are retried like
the HTTP partner's; if the server stays down the loop checkpoints and says how to resume.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

from saie_lite.errors import PartnerError, UserError
from saie_lite.fsutil import atomic_write_text
from saie_lite.protocols import Chat, ExportsAdapter, MissingRemark, supports
from saie_lite.tasks import cut_at_answer
from saie_lite.train.fast_generation import due_step


class VllmAnswers:
    """Wraps a torch learner: ``generate`` runs on the vLLM server, the rest is local."""

    def __init__(self, learner, cfg, run_dir: Path):
        if not supports(learner, ExportsAdapter):
            raise UserError(
                "learner.generate_on=vllm needs the torch backend (its adapters load in vLLM): "
                "set learner.generate_on=local"
            )
        from saie_lite.backends.openai_http import OpenAIPartner

        lc = cfg.learner
        self.inner = learner
        self.seed = cfg.train.seed
        self.every = lc.snapshot_every
        self.url = lc.vllm_url.rstrip("/")
        self.run = Path(run_dir)
        self.dir = (
            Path(lc.vllm_adapter_dir).expanduser()
            if lc.vllm_adapter_dir
            else (self.run / "vllm-adapters")
        )
        self.prefix = f"saie-{self.run.name}"
        # The chat requests go through the HTTP partner's client: same timeouts, retries
        # with backoff, Retry-After, and replies without text handled the same way.
        client_cfg = copy.deepcopy(cfg)
        pc = client_cfg.partner
        pc.url, pc.model, pc.temperature = self.url, "", lc.temperature
        pc.concurrency, pc.api_key_env, pc.seed = lc.vllm_concurrency, "", cfg.train.seed
        self.client = OpenAIPartner(client_cfg)
        self.loaded: str | None = None
        self.refreshes = 0
        self.refresh_seconds = 0.0
        self.tokens_generated = 0

    def __getattr__(self, name):
        # train_step, save, count_tokens, name, ... are the learner's own.
        return getattr(self.inner, name)

    # -- the adapter on the server ------------------------------------------------
    def name_at(self, step: int) -> str:
        return f"{self.prefix}-step{step}"

    def refresh_if_due(self) -> None:
        want = self.name_at(due_step(self.inner.step, self.every))
        if self.loaded == want:
            return
        t0 = time.perf_counter()
        path = self.dir / want
        if not (path / "adapter_config.json").is_file():
            # Written under a temporary name and renamed: a half-written adapter never
            # carries a name the server might load.
            tmp = self.dir / f".tmp-{want}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            self.inner.save_adapter(tmp)
            os.replace(tmp, path)
        self._admin("load_lora_adapter", {"lora_name": want, "lora_path": str(path.resolve())})
        previous, self.loaded = self.loaded or self._recorded(), want
        atomic_write_text(self.run / "vllm.json", json.dumps({"adapter": want, "path": str(path)}))
        if previous and previous != want:
            self._admin("unload_lora_adapter", {"lora_name": previous}, must=False)
        self.refreshes += 1
        self.refresh_seconds += time.perf_counter() - t0

    def _recorded(self) -> str | None:
        try:
            return json.loads((self.run / "vllm.json").read_text()).get("adapter")
        except (OSError, ValueError):
            return None

    def _admin(self, endpoint: str, payload: dict, must: bool = True) -> None:
        """POST to a LoRA admin endpoint, retrying like the chat requests."""
        body = json.dumps(payload).encode("utf-8")
        last = "no attempt"
        for attempt in range(self.client.retries + 1):
            if attempt:
                time.sleep(self.client.backoff * 2 ** (attempt - 1))
            req = urllib.request.Request(
                f"{self.url}/{endpoint}",
                data=body,
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            try:
                with urllib.request.urlopen(req, timeout=self.client.timeout):
                    return
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode("utf-8", "replace")
                if endpoint == "load_lora_adapter" and e.code == 400 and "already" in detail:
                    return  # a resumed run: the server kept this name's weights
                if e.code == 404 and endpoint == "load_lora_adapter":
                    raise UserError(
                        f"vLLM server {self.url} has no /{endpoint} (HTTP 404): start it with "
                        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora"
                    ) from None
                if e.code < 500 and e.code != 429:
                    if not must:
                        return
                    raise UserError(
                        f"vLLM server {self.url} refused to {endpoint.replace('_', ' ')} "
                        f"(HTTP {e.code}: {detail.strip()}); can it read {payload.get('lora_path', '')}?"
                    ) from None
                last = f"HTTP {e.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = str(getattr(e, "reason", e))
        if must:
            raise PartnerError(
                f"vLLM learner server {self.url} failed after {self.client.retries + 1} "
                f"attempts to {endpoint.replace('_', ' ')} ({last})"
            )

    # -- generation ---------------------------------------------------------------
    def generate(
        self, chats: list[Chat], max_new_tokens: int, temperature: float = 0.0
    ) -> list[str]:
        self.refresh_if_due()
        self.client.model = self.loaded
        # Sampled answers follow the update count, as on the other paths.
        self.client.seed = self.seed * 1_000_003 + self.inner.step
        try:
            replies = self.client.generate(chats, max_new_tokens, temperature)
        except PartnerError as e:
            raise PartnerError(str(e).replace("partner server", "vLLM learner server", 1)) from None
        missing = [r for r in replies if isinstance(r, MissingRemark)]
        if missing:
            # An answer is not optional the way a remark is: the discussion starts from it.
            reason = missing[0].reason.replace("partner server", "vLLM learner server", 1)
            raise PartnerError(reason)
        self.tokens_generated = self.client.tokens_generated
        end = self.inner.answer_end
        return [cut_at_answer(r, end).strip() for r in replies]
