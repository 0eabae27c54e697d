"""The torch learner's generation half: batched greedy or sampled answers with early
stop at the final answer, and the one-row stream of the live debate view.

``TorchGeneration`` is mixed into ``TorchLearner`` (backends/torch_peft.py), which loads
the model and owns its state; this half reads ``model``, ``tok``, ``chat``, ``device``,
``quantized``, ``seq2seq``, ``stop_ids``, ``answer_end``, ``static_cache`` and the
generation levers (``stop_on_device``, ``merge_for_generation``, ``contiguous_head``,
``fused_adapter``, ``packed_linears``) and counts ``tokens_generated``. Every lever
leaves greedy answers unchanged (tests/test_generation_speed.py); the shortcuts
themselves live in backends/lean_generation.py.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from saie_lite.protocols import Chat
from saie_lite.tasks import ANSWER_TAIL_TOKENS, cut_at_answer, reply_finished


class TorchGeneration:
    """Generation for a loaded ``TorchLearner`` (see the module docstring)."""

    _stop_tables_for = None  # (answer rule, tables) of the last _stop_tables

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
        if self.static_cache and str(self.device).startswith("cuda"):
            kw["cache_implementation"] = "static"
        with self._merged_adapter(), self._lean_forward(len(chats)):
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
            # not under the CUDA static cache: a new hook and bound methods per call
            # could make torch.compile trace again
            compiled = self.static_cache and str(self.device).startswith("cuda")
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

    def stream(self, chat: Chat, max_new_tokens: int, temperature: float = 0.0):
        """Yield decoded pieces as they are generated (generation runs in a thread)."""
        from threading import Thread

        from transformers import TextIteratorStreamer

        self.model.eval()
        ids, mask = self._left_padded([self.chat.prompt_ids(chat)])
        streamer = TextIteratorStreamer(self.tok, skip_prompt=True, skip_special_tokens=True)
        kwargs = {"input_ids": ids, "attention_mask": mask, "streamer": streamer}
        kwargs.update(self._sampling(max_new_tokens, temperature))
        worker = Thread(target=torch.no_grad()(self.model.generate), kwargs=kwargs, daemon=True)
        worker.start()
        for piece in streamer:
            self.tokens_generated += 1
            yield piece
        worker.join()


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
