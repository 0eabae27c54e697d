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

A group's replies end at different lengths (remarks anywhere from a few tokens to
``max_new``). ``refill`` lets the next prompt take an ended reply's sequence id at once,
read in the same decode call as the others' next tokens, with the opening it shares with
a live sequence's prompt tagged, not read again. It saves decode calls but is off: on the
CPUs measured, reading a prompt beside 7 live sequences' cells costs more than that.

Sampling happens here: greedy is an argmax; temperature > 0 draws from the softmax with
a numpy generator seeded by the caller, so runs stay reproducible.
"""

from __future__ import annotations

from collections import deque
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


def prefill_plan(
    prompts: list[list[int]], cached: list[list[int]] = ()
) -> tuple[list[tuple[int, int, tuple[int, ...]]], list[tuple[int, int, int]]]:
    """How newly admitted prompts are read: (plan, copies).

    plan: every token they evaluate, in decode order, as (prompt, position, the prompts
    whose KV cells it fills). copies: (cached, prompt, m): the prompt's positions below m
    are already in the cache as the ``cached`` sequence's prompt (a sequence still
    decoding), so its cells are tagged with this prompt's sequence too instead.

    A prompt evaluates only what follows its longest common prefix with a cached prompt
    or an earlier one (its last token always, for its logits); the shared tokens are
    those of the earlier prompt, tagged with this one's id too: tagging a KV cell costs
    nothing, so any common prefix is shared. Prompts come in order, each one's tokens by
    position, so every sequence's tokens reach llama.cpp in increasing positions, as it
    requires."""
    n = len(prompts)
    # src: ("c", i) a cached prompt, ("p", r) an earlier prompt, None nothing shared
    src: list[tuple[str, int] | None] = [None] * n
    shared = [0] * n
    for s, prompt in enumerate(prompts):
        best = 0
        for kind, pool in (("c", cached), ("p", prompts[:s])):
            for r, other in enumerate(pool):
                k = common_prefix(other, prompt)
                if k > best:
                    best, src[s] = k, (kind, r)
        shared[s] = min(best, len(prompt) - 1)  # evaluate at least the last token
    also: list[dict[int, list[int]]] = [{} for _ in prompts]  # owner -> position -> sharers
    copied: dict[int, tuple[int, int]] = {}  # prompt -> (cached, positions below m)
    for s in range(n):
        for pos in range(shared[s]):
            kind, r = src[s]
            while kind == "p" and pos < shared[r]:  # the earlier prompt shares it in turn
                kind, r = src[r]
            if kind == "c":  # positions from a cache form a prefix, from one sequence
                copied[s] = (r, pos + 1)
            else:
                also[r].setdefault(pos, []).append(s)
    plan = [
        (s, pos, (s, *also[s].get(pos, ())))
        for s, prompt in enumerate(prompts)
        for pos in range(shared[s], len(prompt))
    ]
    return plan, [(c, s, m) for s, (c, m) in copied.items()]


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
        # Levers, for ``bench --only levers``. pack_prompts False: one decode call per
        # prompt. refill True: a sequence's id goes to the next prompt as soon as it ends.
        # Off: on a CPU a prompt read beside 7 live sequences' KV cells takes about 1.3x
        # as long (every token's attention spans every cell in use), which costs more
        # than the decode calls refilling saves (docs/benchmarks.md).
        self.pack_prompts = True
        self.refill = False

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()

    def _decode(self, entries: list[tuple[int, int, tuple[int, ...], bool]]) -> None:
        """entries: (token, position, sequence ids, wants logits)."""
        b = self.batch.batch
        b.n_tokens = len(entries)
        for k, (tok, pos, seqs, logits) in enumerate(entries):
            # the batch holds room for ``parallel`` ids per token, and at most that
            # many sequences are live
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
        """Reply token ids per prompt. ``done(reply)`` ends a reply early.

        Up to ``parallel`` replies decode together, each in its own sequence id. Prompts
        are admitted in order while their prompt plus ``max_new`` fits the ``kv_tokens``
        cells left (one alone always is): as a group that waits until all its replies
        have ended, or, with ``refill``, one by one as sequence ids come free."""
        if any(not p for p in prompts):
            raise ValueError("an empty prompt has no logits to start a reply from")
        out: list[list[int]] = [[] for _ in prompts]
        rng = np.random.default_rng(seed)
        mem = self.ctx.memory
        waiting = deque(range(len(prompts)))
        free = list(range(self.parallel - 1, -1, -1))  # free sequence ids, a stack
        live: dict[int, int] = {}  # sequence id -> prompt
        nxt: dict[int, int] = {}  # sequence id -> its next token, not yet decoded
        pos: dict[int, int] = {}  # sequence id -> that token's position
        cells = 0  # KV cells reserved: prompt + max_new per live sequence
        while waiting or live:
            # 1. each live sequence's new token: a stop id, max_new or done() ends it
            fed = []
            for seq, i in list(live.items()):
                tok = nxt[seq]
                ended = tok in stop_ids
                if not ended:
                    out[i].append(tok)
                    ended = len(out[i]) >= max_new or (done is not None and done(out[i]))
                if ended:
                    if self.refill:  # a fixed group's cells go all at once, below
                        llama_cpp.llama_memory_seq_rm(mem, seq, -1, -1)
                    del live[seq]
                    free.append(seq)
                    cells -= len(prompts[i]) + max_new
                else:
                    fed.append(seq)
            # 2. waiting prompts into the free sequence ids; a group starts on an empty
            #    cache, so its cells lie as they would for that group alone
            if not fed:
                llama_cpp.llama_memory_clear(mem, True)
            new: list[int] = []
            while waiting and free and (self.refill or not fed):
                need = len(prompts[waiting[0]]) + max_new
                if (fed or new) and cells + need > self.kv_tokens:
                    break
                seq = free.pop()
                live[seq] = waiting.popleft()
                new.append(seq)
                cells += need
            if not fed and not new:
                break
            # 3. the fed sequences' tokens, then the new prompts' (prefill_plan), in as few
            #    decode calls as n_batch allows; an opening a live sequence already holds
            #    is tagged with the new sequence, not read again
            plan, copies = prefill_plan(
                [prompts[live[q]] for q in new], [prompts[live[q]] for q in fed]
            )
            for c, j, m in copies:
                llama_cpp.llama_memory_seq_cp(mem, fed[c], new[j], 0, m)
            entries = [(-1, nxt[q], pos[q], (q,), q) for q in fed]
            for j, p, sharers in plan:
                prompt = prompts[live[new[j]]]
                last = new[j] if p == len(prompt) - 1 else None
                entries.append((j, prompt[p], p, tuple(new[k] for k in sharers), last))
            for chunk in self._chunks(entries):
                self._decode([(tok, p, seqs, q is not None) for _, tok, p, seqs, q in chunk])
                for k, (*_, q) in enumerate(chunk):
                    if q is not None:  # the token ending a prompt, or a fed one
                        nxt[q] = self._pick(self._logits(k), temperature, rng)
            for q in fed:
                pos[q] += 1
            for q in new:
                pos[q] = len(prompts[live[q]])
        return out

    def _chunks(self, entries):
        """Entries cut into decode calls of at most ``n_batch`` tokens (and, unless
        ``pack_prompts``, wherever the prompt they read changes)."""
        chunk: list = []
        for entry in entries:
            if chunk and (
                len(chunk) == self.n_batch or not self.pack_prompts and entry[0] != chunk[-1][0]
            ):
                yield chunk
                chunk = []
            chunk.append(entry)
        if chunk:
            yield chunk
