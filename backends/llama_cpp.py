"""Partner on llama-cpp-python: a quantized GGUF on CPU (or Metal/CUDA with n_gpu_layers).

The model stays loaded for the whole run. ``n_ctx`` is always set explicitly: the
library's default of 512 tokens silently truncates long discussions.
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from saie_lite.errors import UserError
from saie_lite.protocols import Chat

GGUF_MAGIC = b"GGUF"


EMBEDDED_Q8 = "embedded-q8_0"
EMBEDDED_Q4 = "embedded-q4_0"
EMBEDDED_F32 = "embedded-f32"
EMBEDDED_BF16 = "embedded-bf16"
EMBEDDED_REQUANT = {
    EMBEDDED_Q8: "q8_0",
    EMBEDDED_Q4: "q4_0",
    EMBEDDED_F32: "f32",
    EMBEDDED_BF16: "bf16",
}
# The shipped file, q8_0, f32 or bf16, whichever this machine runs fastest
# (partner_weights.py).
EMBEDDED_AUTO = "embedded-auto"
EMBEDDED_NAMES = ("embedded", EMBEDDED_AUTO, *EMBEDDED_REQUANT)


def embedded_requantized(quant: str, asked: str | None = None) -> Path:
    """The embedded model re-quantized to ``quant`` (q8_0, q4_0, f32 or bf16), built once
    from its float cache.

    Remark prompts are long (problem, reference, answer) while remarks are short, so the
    partner's speed is mostly prompt evaluation, which depends on the CPU's kernels for
    each weight type: on the AVX2 machine of the README's bench, prompts run 1.6x faster
    from f32 than from q8_0, q8_0 is a little faster than the shipped Q4_1 file, and
    q4_0 (repacked at load for the AVX2 kernels) no faster than q8_0; on a CPU with
    AVX512-BF16, bf16 is the fastest by far. ``bench --only levers`` measures them on
    yours.
    """
    from saie_lite.gguf_writer import write_gguf
    from saie_lite.paths import embedded_learner_dir

    target = embedded_learner_dir().parent / f"smollm2-135m-instruct-{quant}.gguf"
    if target.is_file():
        return target
    try:
        from saie_lite.backends.torch_models import ensure_embedded_learner
    except ImportError:
        raise UserError(
            f"partner.model={asked or 'embedded-' + quant} builds {quant} weights from the "
            "embedded model with torch: "
            "pip install 'saie-lite[torch]', or use partner.model=embedded"
        ) from None
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    write_gguf(ensure_embedded_learner(), tmp, quant, name="SmolLM2-135M-Instruct", hint="smollm2")
    os.replace(tmp, target)
    return target


def embedded_weights(quant: str) -> Path:
    """The embedded model's GGUF with ``quant`` weights: the shipped Q4_1 file, or one
    built once (what ``embedded-auto`` measures and runs)."""
    from saie_lite.paths import embedded_gguf

    if quant == "q4_1":
        return embedded_gguf()
    return embedded_requantized(quant, asked=EMBEDDED_AUTO)


def resolve_gguf(name: str, n_threads: int = 0) -> Path:
    """The GGUF file ``partner.model`` names; ``n_threads`` (``partner.n_threads``) is the
    thread count ``embedded-auto`` measures with."""
    from saie_lite.paths import EMBEDDED, embedded_gguf

    if name == EMBEDDED:
        return embedded_gguf()
    if name in EMBEDDED_REQUANT:
        return embedded_requantized(EMBEDDED_REQUANT[name])
    if name == EMBEDDED_AUTO:
        from saie_lite.backends.partner_weights import chosen

        return embedded_weights(chosen(embedded_weights, n_threads))
    p = Path(name).expanduser()
    if not p.is_file() and name.startswith(EMBEDDED + "-"):
        raise UserError(
            f"unknown partner model {name}: the embedded ones are {', '.join(EMBEDDED_NAMES)}"
        )
    if not p.is_file():
        raise UserError(
            f"partner model file not found: {name} (give a .gguf path with --partner-model, "
            "or 'embedded')"
        )
    with p.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise UserError(f"partner model {name} is not a GGUF file (its header lacks 'GGUF')")
    from saie_lite.gguf_writer import check_gguf

    check_gguf(p)  # a truncated download or export: one clear line, not a llama.cpp crash
    return p


@dataclass(frozen=True)
class Levers:
    """The partner's speed levers, as ``LlamaCppPartner.levers`` reads and switches them;
    neither changes a greedy remark, only its time (``saie-lite bench --only levers``)."""

    parallel: int  # prompts decoded together (llama_batched.py); 1 = one at a time
    reuse_prefix: bool  # llama.cpp's KV cache kept for the next prompt's shared opening
    pack_prompts: bool  # batched: a group's prompts read in shared decode calls, not one each
    refill: bool  # batched: an ended reply's place goes to the next prompt at once


class LlamaCppPartner:
    def __init__(self, cfg):
        from saie_lite.backends.llama_load import open_llama

        pc = cfg.partner
        path = resolve_gguf(pc.model, pc.n_threads)
        self.temperature = pc.temperature
        self.n_ctx = pc.n_ctx
        self.seed = pc.seed
        self.calls = 0
        self.tokens_generated = 0
        # Consecutive prompts that share a prefix (one answer's stances) reuse llama.cpp's
        # KV cache for it; ``levers`` switches this off to measure it.
        self.reuse_prefix = True
        self.parallel = pc.parallel
        self.pack_prompts = True
        self.refill = False  # slower on the CPUs measured (llama_batched.py says why)
        self._batched = None  # (decoder, chat formatter, end-of-generation ids), lazily
        self.name = f"llama_cpp:{path.name}:t{pc.temperature}:s{pc.seed}"
        try:
            self.llm = open_llama(
                model_path=str(path),
                n_ctx=pc.n_ctx,
                n_threads=pc.n_threads or os.cpu_count() or 1,
                n_gpu_layers=pc.n_gpu_layers,
                seed=pc.seed,
                verbose=False,
            )
        except (ValueError, RuntimeError) as e:
            raise UserError(
                f"llama.cpp could not load {path}: {str(e)[:160]} (is the file complete? "
                "re-download or re-export it)"
            ) from None

    def current_levers(self) -> Levers:
        return Levers(
            parallel=self.parallel,
            reuse_prefix=self.reuse_prefix,
            pack_prompts=self.pack_prompts,
            refill=self.refill,
        )

    @contextmanager
    def levers(self, **changes):
        """``with partner.levers(parallel=1): ...``: the named levers (fields of ``Levers``)
        switched for the block and restored on exit; yields the levers in effect. A
        batched decoder already built keeps the sequence count it was built with."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(Levers)}
        if unknown:
            raise TypeError(f"no such partner lever: {', '.join(sorted(unknown))}")
        want = dataclasses.replace(self.current_levers(), **changes)
        kept = self.current_levers()
        try:
            self._switch(want)
            yield self.current_levers()
        finally:
            self._switch(kept)

    def _switch(self, levers: Levers) -> None:
        self.parallel, self.reuse_prefix = levers.parallel, levers.reuse_prefix
        self.pack_prompts, self.refill = levers.pack_prompts, levers.refill

    def _fit(self, chat: Chat, max_tokens: int) -> Chat:
        """Clip the longest message until prompt + reply fit the context window."""
        chat = [dict(m) for m in chat]
        budget = self.n_ctx - max_tokens - 64  # 64: template tokens per message, generously

        def size() -> int:
            return sum(len(self.llm.tokenize(m["content"].encode(), add_bos=False)) for m in chat)

        while size() > budget:
            longest = max(chat, key=lambda m: len(m["content"]))
            if len(longest["content"]) < 64:
                raise UserError(f"partner prompt does not fit partner.n_ctx={self.n_ctx}: raise it")
            longest["content"] = longest["content"][: len(longest["content"]) * 3 // 4] + " [...]"
        return chat

    def _params(self, max_tokens: int, temperature: float | None) -> dict:
        t = self.temperature if temperature is None else temperature
        # A fresh seed per call would make sampled runs irreproducible; a fixed one per
        # partner, advanced per call, keeps them reproducible and still varied.
        self.calls += 1
        return {
            "max_tokens": max_tokens,
            "temperature": t,
            "top_k": 1 if t == 0 else 40,
            "seed": self.seed + self.calls,
        }

    def remark(self, chats: list[Chat], max_tokens: int) -> list[str]:
        return self.generate(chats, max_tokens, None)

    def generate(
        self, chats: list[Chat], max_new_tokens: int, temperature: float | None = 0.0
    ) -> list[str]:
        """One reply per chat; the partner doubles as a debate agent this way."""
        if self.parallel > 1 and len(chats) > 1:
            batched = self._batched_parts()
            if batched is not None:
                return self._generate_batched(chats, max_new_tokens, temperature, *batched)
        out = []
        for chat in chats:
            if not self.reuse_prefix:
                self.llm.reset()
            reply = self.llm.create_chat_completion(
                messages=self._fit(chat, max_new_tokens),
                **self._params(max_new_tokens, temperature),
            )
            self.tokens_generated += reply.get("usage", {}).get("completion_tokens", 0)
            out.append((reply["choices"][0]["message"]["content"] or "").strip())
        return out

    def _batched_parts(self):
        """Batched decoding renders prompts with the GGUF's own chat template, exactly as
        create_chat_completion does; when llama-cpp-python chose another chat format
        for this file, replies are decoded one at a time instead (None)."""
        if self._batched is None:
            if self.llm.chat_format != "chat_template.default":
                self._batched = False
                return None
            import llama_cpp
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            from saie_lite.backends.llama_batched import BatchedDecoder

            model = self.llm._model
            fmt = Jinja2ChatFormatter(
                template=self.llm.metadata["tokenizer.chat_template"],
                eos_token=model.token_get_text(self.llm.token_eos()),
                bos_token=model.token_get_text(self.llm.token_bos()),
            )
            vocab = llama_cpp.llama_model_get_vocab(model.model)
            eog = {t for t in range(self.llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}
            decoder = BatchedDecoder(
                self.llm,
                parallel=self.parallel,
                kv_tokens=min(self.parallel, 4) * self.n_ctx,
                n_threads=self.llm.n_threads,
            )
            self._batched = (decoder, fmt, eog)
        return self._batched or None

    def _generate_batched(self, chats, max_new_tokens, temperature, decoder, fmt, eog):
        prompts = []
        for chat in chats:
            r = fmt(messages=self._fit(chat, max_new_tokens))
            prompts.append(
                self.llm.tokenize(r.prompt.encode(), add_bos=not r.added_special, special=True)
            )
        params = self._params(max_new_tokens, temperature)
        decoder.pack_prompts, decoder.refill = self.pack_prompts, self.refill
        replies = decoder.generate(
            prompts, max_new_tokens, eog, params["temperature"], seed=params["seed"]
        )
        self.tokens_generated += sum(map(len, replies))
        return [self.llm.detokenize(r).decode("utf-8", errors="ignore").strip() for r in replies]

    def stream(self, chat: Chat, max_new_tokens: int, temperature: float | None = 0.0):
        """Yield the reply piece by piece (for the live debate view)."""
        pieces = self.llm.create_chat_completion(
            messages=self._fit(chat, max_new_tokens),
            stream=True,
            **self._params(max_new_tokens, temperature),
        )
        for chunk in pieces:
            delta = chunk["choices"][0].get("delta", {}).get("content")
            if delta:
                self.tokens_generated += 1
                yield delta


def create_partner(cfg, learner=None) -> LlamaCppPartner:
    return LlamaCppPartner(cfg)
