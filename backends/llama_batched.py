"""Batched decoding on llama.cpp: several prompts in one context, one decode per step.

llama-cpp-python's high-level API decodes one sequence at a time, so a batch of remarks
(or of snapshot answers) pays for reading every weight once per token per sequence.
Here the sequences of a group share one llama.cpp context (unified KV cache, one
sequence id each) and every step decodes one token for all of them in a single call,
so the weights are read once per step. A prompt that shares a long prefix with an
earlier one in the group (one answer's supportive and adversarial prompts) copies that
prefix's KV cells instead of evaluating it again.

Sampling happens here: greedy is an argmax; temperature > 0 draws from the softmax with
a numpy generator seeded by the caller, so runs stay reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

import llama_cpp
import numpy as np
from llama_cpp import _internals

MIN_SHARED_PREFIX = 16  # shorter common prefixes are cheaper to re-evaluate than to copy


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def plan_groups(lengths: list[int], max_new: int, parallel: int, kv_tokens: int) -> list[list[int]]:
    """Consecutive prompts grouped so a group has at most ``parallel`` sequences and its
    prompts plus replies fit the ``kv_tokens`` cells of the shared cache."""
    groups: list[list[int]] = []
    used = 0
    for i, n in enumerate(lengths):
        need = n + max_new
        if groups and len(groups[-1]) < parallel and used + need <= kv_tokens:
            groups[-1].append(i)
            used += need
        else:
            groups.append([i])
            used = need
    return groups


class BatchedDecoder:
    def __init__(self, llm, parallel: int, kv_tokens: int, n_threads: int, n_batch: int = 512):
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = kv_tokens
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = parallel
        params.kv_unified = True  # one pool of cells: sequences of any length share it
        params.n_threads = params.n_threads_batch = n_threads
        self.ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        self.batch = _internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=False)
        self.n_batch = n_batch
        self.parallel = parallel
        self.kv_tokens = kv_tokens
        self.n_vocab = llm.n_vocab()

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """entries: (token, position, sequence id, wants logits)."""
        b = self.batch.batch
        b.n_tokens = len(entries)
        for k, (tok, pos, seq, logits) in enumerate(entries):
            b.token[k] = tok
            b.pos[k] = pos
            b.seq_id[k][0] = seq
            b.n_seq_id[k] = 1
            b.logits[k] = logits
        if llama_cpp.llama_decode(self.ctx.ctx, b) != 0:
            raise RuntimeError("llama_decode failed (no room in the KV cache)")

    def _logits(self, k: int) -> np.ndarray:
        ptr = llama_cpp.llama_get_logits_ith(self.ctx.ctx, k)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def _pick(self, logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
        if temperature <= 0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / temperature
        p = np.exp(z - z.max())
        return int(rng.choice(len(p), p=p / p.sum()))

    def generate(
        self,
        prompts: list[list[int]],
        max_new: int,
        stop_ids: set[int],
        temperature: float = 0.0,
        seed: int = 0,
        done: Callable[[list[int]], bool] | None = None,
    ) -> list[list[int]]:
        """Reply token ids per prompt. ``done(reply)`` ends a reply early."""
        out: list[list[int]] = [[] for _ in prompts]
        rng = np.random.default_rng(seed)
        groups = plan_groups([len(p) for p in prompts], max_new, self.parallel, self.kv_tokens)
        for group in groups:
            self._group(
                [prompts[i] for i in group],
                max_new,
                stop_ids,
                temperature,
                rng,
                done,
                [out[i] for i in group],
            )
        return out

    def _group(self, prompts, max_new, stop_ids, temperature, rng, done, out) -> None:
        mem = self.ctx.memory
        llama_cpp.llama_memory_clear(mem, True)
        nxt: list[int] = []
        for s, prompt in enumerate(prompts):
            shared, src = 0, -1
            for r in range(s):
                k = common_prefix(prompts[r], prompt)
                if k > shared:
                    shared, src = k, r
            shared = min(shared, len(prompt) - 1)  # evaluate at least the last token
            if shared >= MIN_SHARED_PREFIX:
                llama_cpp.llama_memory_seq_cp(mem, src, s, 0, shared)
            else:
                shared = 0
            for start in range(shared, len(prompt), self.n_batch):
                chunk = prompt[start : start + self.n_batch]
                last = start + len(chunk) == len(prompt)
                self._decode(
                    [(t, start + k, s, last and k == len(chunk) - 1) for k, t in enumerate(chunk)]
                )
            nxt.append(self._pick(self._logits(len(chunk) - 1), temperature, rng))
        pos = [len(p) for p in prompts]
        active = list(range(len(prompts)))
        while active:
            entries, still = [], []
            for s in active:
                tok = nxt[s]
                if tok in stop_ids:
                    continue
                out[s].append(tok)
                if len(out[s]) >= max_new or (done is not None and done(out[s])):
                    continue
                entries.append((tok, pos[s], s, True))
                pos[s] += 1
                still.append(s)
            if not entries:
                break
            self._decode(entries)
            for k, s in enumerate(still):
                nxt[s] = self._pick(self._logits(k), temperature, rng)
            active = still
