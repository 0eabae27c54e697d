"""Batched decoding on llama.cpp: several prompts in one context, one decode per step.

llama-cpp-python's high-level API decodes one sequence at a time, so a batch of remarks
(or of snapshot answers) pays for reading every weight once per token per sequence.
Here the sequences of a group share one llama.cpp context (unified KV cache, one
sequence id each) and every step decodes one token for all of them in a single call,
so the weights are read once per step. The group's prompts are read the same way: their
tokens packed into as few decode calls as ``n_batch`` allows, and a prefix shared
with an earlier prompt of the group (one answer's supportive and adversarial prompts,
the partner's instructions) evaluated once, its KV cells tagged with every sequence that
shares it. One call per prompt, many of them only an answer's second stance sentence,
read 32 remark prompts 1.04-1.08x slower on an AVX2 CPU (docs/benchmarks.md).

Sampling happens here: greedy is an argmax; temperature > 0 draws from the softmax with
a numpy generator seeded by the caller, so runs stay reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

import llama_cpp
import numpy as np
from llama_cpp import _internals


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def prefill_plan(prompts: list[list[int]]) -> list[tuple[int, int, tuple[int, ...]]]:
    """Every token the group's prompts evaluate, in decode order: (prompt, position,
    the sequence ids whose KV cells it fills).

    A prompt evaluates only what follows its longest common prefix with an earlier one
    (its last token always, for its logits); the shared tokens are those of the earlier
    prompt, tagged with this one's id too: tagging a KV cell costs nothing, so any common
    prefix is shared. Prompts come in order, each one's tokens by position, so every
    sequence's tokens reach llama.cpp in increasing positions, as it requires."""
    n = len(prompts)
    src, shared = [-1] * n, [0] * n
    for s, prompt in enumerate(prompts):
        best, r_best = 0, -1
        for r in range(s):
            k = common_prefix(prompts[r], prompt)
            if k > best:
                best, r_best = k, r
        # evaluate at least the last token; nothing shared leaves src -1, shared 0
        src[s], shared[s] = r_best, min(best, len(prompt) - 1)
    also: list[dict[int, list[int]]] = [{} for _ in prompts]  # owner -> position -> sharers
    for s in range(n):
        for pos in range(shared[s]):
            r = src[s]
            while pos < shared[r]:  # the earlier prompt shares that token in turn
                r = src[r]
            also[r].setdefault(pos, []).append(s)
    return [
        (s, pos, (s, *also[s].get(pos, ())))
        for s, prompt in enumerate(prompts)
        for pos in range(shared[s], len(prompt))
    ]


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
        # a prompt token may belong to every sequence of a group (a shared prefix)
        self.batch = _internals.LlamaBatch(
            n_tokens=n_batch, embd=0, n_seq_max=parallel, verbose=False
        )
        self.n_batch = n_batch
        self.parallel = parallel
        self.kv_tokens = kv_tokens
        self.n_vocab = llm.n_vocab()
        # False: one decode call per prompt (a lever, for ``bench --only levers``)
        self.pack_prompts = True

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()

    def _decode(self, entries: list[tuple[int, int, tuple[int, ...], bool]]) -> None:
        """entries: (token, position, sequence ids, wants logits)."""
        b = self.batch.batch
        b.n_tokens = len(entries)
        for k, (tok, pos, seqs, logits) in enumerate(entries):
            # the batch holds room for ``parallel`` ids per token; plan_groups caps a
            # group at that many sequences
            assert len(seqs) <= self.parallel
            b.token[k] = tok
            b.pos[k] = pos
            for j, seq in enumerate(seqs):
                b.seq_id[k][j] = seq
            b.n_seq_id[k] = len(seqs)
            b.logits[k] = logits
        code = llama_cpp.llama_decode(self.ctx.ctx, b)
        if code != 0:  # 1: no room in the KV cache; negative: the batch was refused
            raise RuntimeError(f"llama_decode failed with code {code}")

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
        if any(not p for p in prompts):
            raise ValueError("an empty prompt has no logits to start a reply from")
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

    def _prefill(self, prompts, temperature, rng) -> list[int]:
        """Evaluate the group's prompts (``prefill_plan``) and pick each one's first
        reply token from the logits of its last prompt token."""
        plan = prefill_plan(prompts)
        nxt = [0] * len(prompts)
        for chunk in self._chunks(plan):
            last = [pos == len(prompts[s]) - 1 for s, pos, _ in chunk]
            self._decode(
                [(prompts[s][pos], pos, seqs, w) for (s, pos, seqs), w in zip(chunk, last)]
            )
            for k, ((s, _, _), w) in enumerate(zip(chunk, last)):
                if w:
                    nxt[s] = self._pick(self._logits(k), temperature, rng)
        return nxt

    def _chunks(self, plan):
        """The plan cut into decode calls of at most ``n_batch`` tokens (and at every
        prompt's end unless ``pack_prompts``)."""
        chunk: list = []
        for entry in plan:
            if chunk and (
                len(chunk) == self.n_batch or not self.pack_prompts and entry[0] != chunk[-1][0]
            ):
                yield chunk
                chunk = []
            chunk.append(entry)
        if chunk:
            yield chunk

    def _group(self, prompts, max_new, stop_ids, temperature, rng, done, out) -> None:
        llama_cpp.llama_memory_clear(self.ctx.memory, True)
        nxt = self._prefill(prompts, temperature, rng)
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
                entries.append((tok, pos[s], (s,), True))
                pos[s] += 1
                still.append(s)
            if not entries:
                break
            self._decode(entries)
            for k, s in enumerate(still):
                nxt[s] = self._pick(self._logits(k), temperature, rng)
            active = still
