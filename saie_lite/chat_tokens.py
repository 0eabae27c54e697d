"""Chat rendering and loss masks from a Hugging Face tokenizer, shared by every learner
backend whose tokenizer has a chat template (torch, MLX).

Masking goes through the model's own template: the prompt is rendered with the
generation prompt, the full chat with the target as the last assistant turn, and only
the tokens the full rendering adds (the target and its end-of-turn marker) carry loss.
"""

from __future__ import annotations

from dataclasses import dataclass

from saie_lite.protocols import Chat, TrainSequence

IGNORE = -100

# Used only when a tokenizer ships no chat template (base models): plain ChatML.
FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ChatTokenLearner:
    """Mixin for learners holding a ``ChatTokens`` as ``self.chat``: the protocol's
    tokenisation methods, once."""

    chat: ChatTokens

    def encode(self, seq: TrainSequence) -> tuple[list[int], list[int]]:
        return self.chat.encode(seq)

    def count_tokens(self, chat: Chat, target: str = "") -> int:
        return self.chat.count(chat, target)


class ChatTokens:
    def __init__(self, tok):
        self.tok = tok
        if getattr(tok, "chat_template", None) is None:
            tok.chat_template = FALLBACK_TEMPLATE
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        end = tok.convert_tokens_to_ids("<|im_end|>")
        self.stop_ids = sorted(
            {i for i in (tok.eos_token_id, end) if isinstance(i, int) and i >= 0}
        )

    def render(self, chat: Chat, generation_prompt: bool) -> str:
        return self.tok.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=generation_prompt
        )

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, chat: Chat) -> list[int]:
        return self.ids(self.render(chat, True))

    def encode(self, seq: TrainSequence) -> tuple[list[int], list[int]]:
        """Token ids and labels; labels are IGNORE everywhere but the target turn."""
        prompt = self.render(seq.context, True)
        full = self.render(seq.context + [{"role": "assistant", "content": seq.target}], False)
        if full.startswith(prompt):
            p_ids, t_ids = self.ids(prompt), self.ids(full[len(prompt) :])
        else:  # a template that rewrites earlier turns: fall back to prompt + target + eos
            p_ids = self.ids(prompt)
            t_ids = self.ids(seq.target) + [self.tok.eos_token_id]
        return p_ids + t_ids, [IGNORE] * len(p_ids) + t_ids

    def count(self, chat: Chat, target: str = "") -> int:
        if target:
            return len(self.encode(TrainSequence(chat, target))[0])
        return len(self.prompt_ids(chat))

    def encode_batch(self, sequences: list[TrainSequence], limit: int):
        """Encoded sequences cut to ``limit``, sorted by length (less padding per
        micro-batch), and the number of target tokens that carry loss."""
        encoded = [(i[:limit], lab[:limit]) for i, lab in map(self.encode, sequences)]
        n_target = sum(sum(1 for t in lab[1:] if t != IGNORE) for _, lab in encoded)
        encoded.sort(key=lambda x: len(x[0]))
        return encoded, n_target


# What one extra forward pass costs, in padded-token equivalents; measured on a 2-core
# CPU, where a micro-batch of a few hundred tokens already keeps the matmuls efficient.
MICRO_BATCH_OVERHEAD = 64
# On a GPU a pass is bound by kernel launches, not by its tokens: a 135M model took
# 1.24 s per 8-sequence update split for the CPU's sake against 0.39 s in one pass for
# TRL (H100, bench --device cuda). There only large padding waste justifies a split.
GPU_MICRO_BATCH_OVERHEAD = 4096


def micro_batches(
    lengths: list[int],
    max_rows: int,
    overhead: int = MICRO_BATCH_OVERHEAD,
    sizes: list[int] | None = None,
) -> list[tuple[int, int]]:
    """Split sequences (sorted by length) into contiguous micro-batches of at most
    ``max_rows`` that minimise padded tokens plus ``overhead`` per forward pass.

    Every micro-batch is padded to its longest row, so one long sequence in a batch of
    short ones wastes compute on padding; grouping by length removes most of it. The
    gradient is unchanged: the loss is normalised by the whole batch's target count.
    ``sizes``: how many sequences each row holds (a packed row holds several), counted
    against ``max_rows``; a single row larger than that still gets a micro-batch.
    Returns (start, end) index pairs. Exact dynamic programme; n is a batch size.
    """
    n = len(lengths)
    sizes = sizes or [1] * n
    best = [0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        first, held = end - 1, sizes[end - 1]
        while first > 0 and held + sizes[first - 1] <= max_rows:
            first -= 1
            held += sizes[first]
        for start in range(first, end):
            cost = best[start] + (end - start) * max(lengths[start:end]) + overhead
            if cost < best[end]:
                best[end], cut[end] = cost, start
    spans, end = [], n
    while end:
        spans.append((cut[end], end))
        end = cut[end]
    return spans[::-1]


@dataclass
class PackedRow:
    """Sequences that open with the same tokens, packed into one row: the shared prefix
    once, then each sequence's own continuation.

    ``segments``: 0 for the prefix, i for the i-th continuation; a token attends to the
    tokens before it in the prefix and in its own continuation, never to another
    continuation. ``positions`` restart where the prefix ends for every continuation,
    so each token sees exactly what it sees in its own unpacked sequence.
    ``predict``: (row index whose hidden state predicts, target id), one per target
    token of every packed sequence.
    """

    ids: list[int]
    positions: list[int]
    segments: list[int]
    predict: list[tuple[int, int]]
    n_sequences: int
    n_tokens: int  # tokens of the unpacked sequences (what the update trains on)


def common_prefix(rows: list[list[int]]) -> int:
    first, n = rows[0], min(map(len, rows))
    for i in range(n):
        if any(r[i] != first[i] for r in rows[1:]):
            return i
    return n


def pack_shared(encoded: list[tuple[list[int], list[int]]], groups: list[str]) -> list[PackedRow]:
    """Rows for a batch: the sequences of each non-empty group packed together (their
    token-level common prefix computed once), every other sequence a row of its own.
    Rows come sorted by length, like ``encode_batch``'s sequences."""
    by_group: dict[str, list[int]] = {}
    order: list[list[int]] = []
    for i, g in enumerate(groups):
        if g and g in by_group:
            by_group[g].append(i)
            continue
        order.append([i])
        if g:
            by_group[g] = order[-1]
    rows = [_pack([encoded[i] for i in members]) for members in order]
    rows.sort(key=lambda r: len(r.ids))
    return rows


def _pack(members: list[tuple[list[int], list[int]]]) -> PackedRow:
    p = common_prefix([ids for ids, _ in members])
    ids, positions, segments = list(members[0][0][:p]), list(range(p)), [0] * p
    predict = []
    for seg, (seq, labels) in enumerate(members, start=1):
        start = len(ids)  # where this continuation begins in the row
        ids += seq[p:]
        positions += range(p, len(seq))
        segments += [seg] * (len(seq) - p)
        for t in range(1, len(seq)):
            if labels[t] != IGNORE:
                # token t is predicted from position t-1: in the prefix or in this
                # sequence's own continuation
                src = t - 1 if t - 1 < p else start + (t - 1 - p)
                predict.append((src, labels[t]))
    return PackedRow(
        ids, positions, segments, predict, len(members), sum(len(s) for s, _ in members)
    )


def flatten_chat(chat: Chat) -> str:
    """A chat as plain text, for encoder-decoder models that have no chat template."""
    parts = []
    for m in chat:
        if m["role"] == "system":
            parts.append(m["content"])
        else:
            who = "User" if m["role"] == "user" else "Assistant"
            parts.append(f"{who}: {m['content']}")
    return "\n\n".join(parts) + "\n\nAssistant:"


class Seq2SeqTokens(ChatTokens):
    """Encoder-decoder models (Flan-T5): the chat is the encoder input, the target the
    decoder labels; every label token carries loss (nothing of the context is decoded)."""

    def __init__(self, tok):
        self.tok = tok
        self.stop_ids = [tok.eos_token_id]

    def _with_eos(self, text: str) -> list[int]:
        ids = self.tok(text)["input_ids"]
        # T5 tokenizers append </s> themselves; tokenizers without that rule get it here,
        # so the decoder learns where a reply ends.
        return ids if ids and ids[-1] == self.tok.eos_token_id else ids + [self.tok.eos_token_id]

    def prompt_ids(self, chat: Chat) -> list[int]:
        return self._with_eos(flatten_chat(chat))

    def encode(self, seq: TrainSequence) -> tuple[list[int], list[int]]:
        return self.prompt_ids(seq.context), self._with_eos(seq.target)

    def count(self, chat: Chat, target: str = "") -> int:
        return len(self.prompt_ids(chat)) + (len(self._with_eos(target)) if target else 0)

    def encode_batch(self, sequences: list[TrainSequence], limit: int):
        encoded = [(i[:limit], lab[:limit]) for i, lab in map(self.encode, sequences)]
        encoded.sort(key=lambda x: len(x[0]))
        return encoded, sum(len(lab) for _, lab in encoded)
