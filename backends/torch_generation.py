"""The torch learner's generation half: batched greedy or sampled answers with early
stop at the final answer, and the one-row stream of the live debate view.

``TorchGeneration`` is mixed into ``TorchLearner`` (backends/torch_peft.py), which loads
the model and owns its state; this half reads ``model``, ``tok``, ``chat``, ``device``,
``quantized``, ``seq2seq``, ``stop_ids``, ``answer_end``, ``static_cache`` and the
generation levers (``stop_on_device``, ``merge_for_generation``, ``contiguous_head``,
``fused_adapter``, ``packed_linears``), holds ``generating`` (a lock) while a call
swaps weights, and counts ``tokens_generated``. Every lever
leaves greedy answers unchanged (tests/test_generation_speed.py); the shortcuts
themselves live in backends/lean_generation.py.
"""

from __future__ import annotations

import inspect
import threading
from contextlib import contextmanager

import torch

from saie_lite.protocols import Chat
from saie_lite.tasks import ANSWER_TAIL_TOKENS, cut_at_answer, reply_finished

# What a model's own generation config may set and still leave ``stream``'s loop picking
# the tokens ``generate`` would: token ids, cache and output switches, and the sampling
# knobs ``_sampling`` sets itself. Any other key (a repetition penalty, banned words, a
# minimum length, beams) changes the logits ``generate`` picks from, so the stream then runs
# transformers' ``generate`` on a worker thread instead.
PLAIN_GENERATION_KEYS = frozenset(
    {
        "_from_model_config",
        "transformers_version",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "return_dict_in_generate",
        "max_length",
        "max_new_tokens",
        "do_sample",
        "temperature",
        "top_p",
        "top_k",
    }
)


class TorchGeneration:
    """Generation for a loaded ``TorchLearner`` (see the module docstring)."""

    _stop_tables_for = None  # (answer rule, tables) of the last _stop_tables
    _caller = None  # the thread inside a generate/stream call, while one runs

    @contextmanager
    def _one_call(self):
        """Held for each generate/stream call, which swaps weights in and back out: a
        call waits for another thread's to end; in the thread of a stream still open
        (suspended at a piece) it would merge the merged weights again, so it raises."""
        self._not_inside_own_stream()
        with self.generating:
            self._caller = threading.get_ident()
            try:
                yield
            finally:
                self._caller = None

    def _compiles(self) -> bool:
        """A static KV cache on CUDA: transformers compiles the forward there, so a new
        hook or bound method per call could make it trace again, and only ``generate``
        runs the compiled forward."""
        return self.static_cache and str(self.device).startswith("cuda")

    def _left_padded(self, prompts: list[list[int]]):
        """Left padding: every row's last prompt token sits at the same position, so one
        batched decode with a KV cache serves the whole batch."""
        width = max(len(p) for p in prompts)
        pad = self.tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor(
            [[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device
        )
        return ids, mask

    def _sampling(self, max_new_tokens: int, temperature: float) -> dict:
        kw = {
            "max_new_tokens": max_new_tokens,
            "pad_token_id": self.tok.pad_token_id,
            "eos_token_id": self.stop_ids,
            "use_cache": True,
            "do_sample": temperature > 0,
        }
        if temperature > 0:
            kw.update(temperature=temperature, top_p=1.0, top_k=0)
        return kw

    @torch.no_grad()
    def generate(
        self, chats: list[Chat], max_new_tokens: int, temperature: float = 0.0
    ) -> list[str]:
        self.model.eval()
        ids, mask = self._left_padded([self.chat.prompt_ids(c) for c in chats])
        kw = self._sampling(max_new_tokens, temperature)
        if self.answer_end is not None:
            start = 0 if self.seq2seq else ids.shape[1]
            stopper = self._device_stopper if self.stop_on_device else self._answer_stopper
            kw["stopping_criteria"] = [stopper(start)]
        if self._compiles():
            kw["cache_implementation"] = "static"
        with self._one_call(), self._merged_adapter(), self._lean_forward(len(chats)):
            out = self.model.generate(input_ids=ids, attention_mask=mask, **kw)
        # A decoder-only model returns prompt + reply; an encoder-decoder only the reply.
        new = out if self.seq2seq else out[:, ids.shape[1] :]
        # Rows that stopped early are padded to the longest; count real tokens only.
        self.tokens_generated += int((new != self.tok.pad_token_id).sum())
        texts = [self.tok.decode(row, skip_special_tokens=True) for row in new]
        return [cut_at_answer(t, self.answer_end).strip() for t in texts]

    def _answer_stopper(self, start: int):
        """Per-row early stop once the reply holds a finished final answer: a row that
        is done stops costing decode steps, and the batch ends when every row is done."""
        from transformers import StoppingCriteria

        tok, answer_end = self.tok, self.answer_end

        class AnswerEnd(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                rows = input_ids[:, start:].tolist()
                done = [reply_finished(tok, row, answer_end) for row in rows]
                return torch.tensor(done, device=input_ids.device)

        return AnswerEnd()

    def _device_stopper(self, start: int, every: int = 16):
        """The same early stop as ``_answer_stopper``, judged on the device: a row's tail
        is copied to the host and decoded only when its new token can close a final
        answer ('#### 18' closes at the whitespace after the number, 'answer is (B)' at
        its ')') while an opening mark ('#', '(') lies in the tail that is decoded; and
        every ``every`` tokens for all running rows, so a rule or a tokenizer these
        marks miss still stops, at most ``every`` - 1 tokens late. A late stop changes
        no answer: ``generate`` cuts the text at the first finished answer."""
        from transformers import StoppingCriteria

        tok, answer_end = self.tok, self.answer_end
        tables = self._stop_tables()

        class AnswerEndOnDevice(StoppingCriteria):
            def __init__(self):
                self.calls = 0
                self.done = None

            def __call__(self, input_ids, scores, **kwargs):
                if self.done is None:
                    self.done = torch.zeros(
                        input_ids.shape[0], dtype=torch.bool, device=input_ids.device
                    )
                self.calls += 1
                if tables is None or self.calls % every == 0:
                    may = ~self.done
                else:
                    closes, opens = tables
                    tail = input_ids[:, max(start, input_ids.shape[1] - ANSWER_TAIL_TOKENS) :]
                    may = closes[input_ids[:, -1]] & opens[tail].any(dim=1) & ~self.done
                rows = may.nonzero().flatten().tolist()  # usually none: one small copy
                if rows:
                    replies = input_ids[rows, start:].tolist()
                    done = [
                        r
                        for r, reply in zip(rows, replies)
                        if reply_finished(tok, reply, answer_end)
                    ]
                    if done:
                        self.done[done] = True
                return self.done.clone()

        return AnswerEndOnDevice()

    def _stop_tables(self):
        """(closes, opens) for ``_device_stopper``: per token id, on the device, whether
        its text holds a character that can close / open a final answer under the
        current rule; None for a rule with no known marks (checked every few tokens)."""
        if self._stop_tables_for and self._stop_tables_for[0] is self.answer_end:
            return self._stop_tables_for[1]
        marks = answer_marks(self.answer_end)
        tables = None
        if marks is not None:
            texts = token_texts(self.tok)
            head = self.model.get_base_model().get_output_embeddings()
            size = max(len(texts), getattr(head, "out_features", 0))
            tables = []
            for has in marks:
                # ids past the tokenizer's (padded embeddings) and undecodable pieces of
                # a character count as marks: checking too often costs a decode, never
                # an answer
                t = torch.ones(size, dtype=torch.bool)
                t[: len(texts)] = torch.tensor([has(x) or "\ufffd" in x for x in texts])
                tables.append(t.to(self.device))
            tables = tuple(tables)
        self._stop_tables_for = (self.answer_end, tables)
        return tables

    @contextmanager
    def _merged_adapter(self):
        """The adapter folded into the frozen weights for one ``generate`` call: each
        adapted layer then costs one matmul per token instead of three and an add.

        Only where merging is exact enough to keep greedy answers: float32 base and
        adapter, not quantized (W + BA rounded to bf16 or 4 bits is another model), and
        adapters switched on (the ``self`` partner generates from the base alone). The
        base tensors are swapped for merged copies and swapped back, never added to and
        subtracted from as PEFT's merge_adapter/unmerge_adapter do, which would drift the
        frozen base by rounding on every call. The copies cost the adapted layers'
        memory once more while generating."""
        from saie_lite.backends.lean_generation import merged_weight

        kept = []
        try:
            for m in self._mergeable_layers():
                w = m.base_layer.weight
                merged = merged_weight(m)
                kept.append((m, w.data))
                w.data = merged
                m.merged_adapters.append("default")
            yield
        finally:
            for m, data in kept:
                m.base_layer.weight.data = data
                if "default" in m.merged_adapters:
                    m.merged_adapters.remove("default")

    @contextmanager
    def _lean_forward(self, rows: int):
        """The generation shortcuts that are on (``contiguous_head``, ``fused_adapter``,
        ``packed_linears``), for one ``generate`` call of ``rows`` prompts, inside
        ``_merged_adapter`` (merged layers keep PEFT's forward; their merged weights are
        what gets packed)."""
        from contextlib import ExitStack

        from saie_lite.backends import lean_generation as lean

        with ExitStack() as stack:
            compiled = self._compiles()
            head = self.model.get_base_model().get_output_embeddings()
            if self.contiguous_head and head is not None and not compiled:
                stack.enter_context(lean.contiguous_head(head))
            if self.fused_adapter and not self.quantized and not compiled:
                stack.enter_context(lean.fused_adapter(lean.fusable_layers(self.model)))
            if self.packed_linears and self.device == "cpu":  # merged weights, if any
                layers = lean.packable_linears(self.model)
                stack.enter_context(lean.packed_linears(layers, rows))
            yield

    def _mergeable_layers(self) -> list:
        if not self.merge_for_generation or self.quantized:
            return []
        from saie_lite.backends.lean_generation import lora_layers

        return [
            m
            for m in lora_layers(self.model)
            if m.base_layer.weight.dtype == torch.float32
            and m.lora_A["default"].weight.dtype == torch.float32
        ]

    @torch.no_grad()  # torch's decorator restores grad mode around each resumption
    def stream(self, chat: Chat, max_new_tokens: int, temperature: float = 0.0):
        """Yield the reply's text piece by piece as it is decoded, for the live debate view.

        The reply is decoded here, in the caller's thread, one forward per token on a
        dynamic KV cache, under the same per-call merge and shortcuts as ``generate``
        and with the tokens it would pick there (tested). Not on a worker thread:
        torch's OpenMP pool runs its parallel products about 1.5x slower from a second
        thread while the first thread's pool exists (a one-row reply: 6.5 s on the
        caller's thread, 9.8 s on a worker, docs/benchmarks.md). Where the loop would
        not pick ``generate``'s tokens (``_loop_streams``) the reply comes from
        transformers' ``generate`` on a worker thread instead."""
        self.model.eval()
        ids, mask = self._left_padded([self.chat.prompt_ids(chat)])
        params = self._loop_streams()
        if params is None:
            yield from self._stream_on_thread(ids, mask, max_new_tokens, temperature)
            return
        reply: list[int] = []
        shown = text = ""
        with self._one_call(), self._merged_adapter(), self._lean_forward(1):
            for token in self._decoded(ids, mask, max_new_tokens, temperature, params):
                reply.append(token)
                self.tokens_generated += 1
                text = self.tok.decode(
                    reply, skip_special_tokens=True, clean_up_tokenization_spaces=False
                )
                # a character split over tokens shows once whole
                if not text.endswith("\ufffd") and text.startswith(shown) and text != shown:
                    piece, shown = text[len(shown) :], text
                    yield piece
        if text.startswith(shown) and text != shown:  # the tail, a split character too
            yield text[len(shown) :]

    def _loop_streams(self) -> frozenset[str] | None:
        """The model forward's parameter names when ``stream``'s own loop picks the
        tokens ``generate`` would, else None: not for encoder-decoder models, a model whose
        generation config sets anything outside ``PLAIN_GENERATION_KEYS``, a forward
        that takes neither ``cache`` (transformers 5) nor ``past_key_values``, or the
        CUDA static cache (``generate`` compiles its forward)."""
        if self.seq2seq or self._compiles():
            return None
        if set(self.model.generation_config.to_diff_dict()) - PLAIN_GENERATION_KEYS:
            return None
        params = frozenset(inspect.signature(self.model.get_base_model().forward).parameters)
        return params if params & {"cache", "past_key_values"} else None

    def _not_inside_own_stream(self) -> None:
        if self._caller == threading.get_ident():
            raise RuntimeError(
                "generate() or stream() called while this thread's stream() is still open: "
                "read it to the end or close() it first"
            )

    def _decoded(self, ids, mask, max_new_tokens: int, temperature: float, params):
        """Token ids of one reply, as ``generate``'s loop picks them: the prompt in one
        forward (the head on its last position only, where the model allows, as
        ``generate`` does), then one token per forward on the KV cache; argmax, or a
        draw from the softmax of logits / temperature; a stop id ends the reply.
        ``params``: the forward's parameter names (``_loop_streams``)."""
        keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        # transformers 5 names the KV cache ``cache``, earlier ``past_key_values``
        cache = "cache" if "cache" in params else "past_key_values"
        out = self.model(input_ids=ids, attention_mask=mask, use_cache=True, **keep)
        for step in range(max_new_tokens):
            logits = out.logits[:, -1].to(dtype=torch.float32)
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1)
                token = torch.multinomial(probs, num_samples=1).squeeze(1)
            else:
                token = torch.argmax(logits, dim=-1)
            if int(token) in self.stop_ids:
                return
            yield int(token)
            if step + 1 < max_new_tokens:
                mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
                out = self.model(
                    input_ids=token[:, None],
                    attention_mask=mask,
                    use_cache=True,
                    **{cache: getattr(out, cache)},
                    **keep,
                )

    def _stream_on_thread(self, ids, mask, max_new_tokens: int, temperature: float):
        """transformers' ``generate`` on a worker thread with its text streamer. An error
        there ends the stream and is raised here rather than leaving the reader waiting;
        a stream abandoned mid-way runs to its end on the worker, holding ``_one_call``."""
        from transformers import TextIteratorStreamer

        self._not_inside_own_stream()  # the worker's own check would wait, not raise
        streamer = TextIteratorStreamer(self.tok, skip_prompt=True, skip_special_tokens=True)
        kwargs = {"input_ids": ids, "attention_mask": mask, "streamer": streamer}
        kwargs.update(self._sampling(max_new_tokens, temperature))
        failed: list[BaseException] = []

        def run() -> None:
            try:
                with self._one_call(), torch.no_grad():
                    with self._merged_adapter(), self._lean_forward(1):
                        self.model.generate(**kwargs)
            except BaseException as e:  # handed to the reader, which raises it
                failed.append(e)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        for piece in streamer:
            self.tokens_generated += 1
            yield piece
        worker.join()
        if failed:
            raise failed[0]


def answer_marks(answer_end):
    """(closes, opens) text tests for the early-stop rules there are, read off the rule
    itself: a number answer ('#### 18') is finished by whitespace after it and opened by
    '#'; a choice ('answer is (B)') is finished by ')' and opened by '('. None for any
    other rule."""
    if answer_end("#### 7\n") is not None and answer_end("#### 7") is None:
        return (lambda t: any(c.isspace() for c in t)), (lambda t: "#" in t)
    if answer_end("The answer is (B)") is not None and answer_end("The answer is (B") is None:
        return (lambda t: ")" in t), (lambda t: "(" in t)
    return None


def token_texts(tok) -> list[str]:
    """Each token id's text as it reads after other text (a SentencePiece word piece
    keeps its leading space only there), special tokens as '' (skipped when decoding)."""
    ref = tok("a", add_special_tokens=False)["input_ids"][-1:]
    lead = len(tok.decode(ref, skip_special_tokens=True))
    pairs = [ref + [i] for i in range(len(tok))]
    return [t[lead:] for t in tok.batch_decode(pairs, skip_special_tokens=True)]
