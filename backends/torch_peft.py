"""Learner on transformers + PEFT: LoRA on CPU/MPS, QLoRA (4-bit bitsandbytes) on CUDA.

Also provides the ``self`` partner: the learner's own frozen base (adapters disabled).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saie_lite.backends import cpu_dtype
from saie_lite.backends.packed_attention import packed_forward, row_layout
from saie_lite.backends.torch_generation import TorchGeneration
from saie_lite.backends.torch_models import quiet_transformers, resolve_model_path
from saie_lite.backends.torch_setup import (
    hide_bitsandbytes,
    quantization_config,
    resolve_device,
    resolve_dtype,
    resolve_quantize,
)
from saie_lite.chat_tokens import (
    GPU_MICRO_BATCH_OVERHEAD,
    IGNORE,
    MICRO_BATCH_OVERHEAD,
    ChatTokenLearner,
    ChatTokens,
    PackedRow,
    Seq2SeqTokens,
    micro_batches,
    pack_shared,
)
from saie_lite.errors import UserError
from saie_lite.protocols import Chat, StepStats, TrainSequence


@dataclass(frozen=True)
class Levers:
    """The learner's speed levers, as ``TorchLearner.levers`` reads and switches them.

    Each leaves the loss and the greedy answers as they are, only the time differs
    (``saie-lite bench --only levers`` measures each off, then on, on one loaded model)."""

    split_head: bool  # logits of the target tokens only (off: the full-vocabulary head)
    plan_micro_batches: bool  # micro-batches planned by length (off: fixed-size slices)
    pass_overhead: float  # the per-pass cost the plan weighs (CPU and GPU defaults differ)
    blockwise_attention: bool  # packed rows' attention block by block (packed_attention.py)
    share_prefix: bool  # ``train.share_prefix``: a group's shared opening computed once
    max_seq_len: int  # ``learner.max_seq_len``: not a lever, the cut the bench trains at
    stop_on_device: bool  # early stop judged on the device (off: every token decoded)
    merge_for_generation: bool  # the adapter folded in while generating, where exact
    contiguous_head: bool  # the head reads the prefill's last position contiguous
    fused_adapter: bool  # unmerged adapters scale and add their output in place
    packed_linears: bool  # CPU: the model's weights packed for oneDNN once per call
    answer_end: Any  # the rule that stops a reply at its final answer; None = no early stop


class TorchLearner(TorchGeneration, ChatTokenLearner):
    """LoRA learner. One optimizer step per ``train_step``; micro-batches accumulate.
    Generation (answers, the debate stream) is its other half: backends/torch_generation.py."""

    def __init__(self, cfg):
        lc = cfg.learner
        self.cfg = cfg
        self.device = resolve_device(lc.device)
        if lc.n_threads:  # process-wide: the bench's TRL and any other torch work share it
            torch.set_num_threads(lc.n_threads)
        self.quantized = resolve_quantize(lc.quantize, self.device)
        if not self.quantized:
            hide_bitsandbytes()
        from peft import LoraConfig, get_peft_model
        from safetensors import SafetensorError
        from transformers import (
            AutoConfig,
            AutoModelForCausalLM,
            AutoModelForSeq2SeqLM,
            AutoTokenizer,
        )

        quiet_transformers()
        self.dtype = resolve_dtype(lc.dtype, self.device)
        # `auto` picked bf16 on this CPU by a matmul probe alone: the first update checks it
        self._check_dtype = (
            lc.dtype == "auto"
            and self.device == "cpu"
            and self.dtype == torch.bfloat16
            and cpu_dtype.update_check_due()
        )
        path = resolve_model_path(lc.model)
        self.name = f"torch:{lc.model}"
        kwargs: dict = {"dtype": self.dtype, "trust_remote_code": lc.trust_remote_code}
        if self.quantized:
            kwargs["quantization_config"] = quantization_config()
            kwargs["device_map"] = {"": torch.cuda.current_device()}
        try:
            self.tok = AutoTokenizer.from_pretrained(path, trust_remote_code=lc.trust_remote_code)
            arch = AutoConfig.from_pretrained(path, trust_remote_code=lc.trust_remote_code)
            # Encoder-decoder models (Flan-T5, the paper's learner) train through the
            # same protocol; only tokenisation, the loss alignment and decoding differ.
            self.seq2seq = bool(getattr(arch, "is_encoder_decoder", False))
            auto = AutoModelForSeq2SeqLM if self.seq2seq else AutoModelForCausalLM
            base = auto.from_pretrained(path, **kwargs)
        except (OSError, ValueError, SafetensorError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(":")
            if isinstance(e, SafetensorError):
                first = f"a weights file is damaged or incomplete ({first})"
            from saie_lite.hub_access import offline_reason

            why = offline_reason(lc.model, str(e)) or (
                f"{first[:200]}; a local model needs config.json, tokenizer files and "
                "complete *.safetensors weights"
            )
            raise UserError(f"could not load learner model {lc.model!r}: {why}") from None
        if not self.quantized:
            base.to(self.device)
        else:
            from peft import prepare_model_for_kbit_training

            base = prepare_model_for_kbit_training(
                base,
                use_gradient_checkpointing=lc.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        if lc.gradient_checkpointing and not self.quantized:
            base.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
            base.enable_input_require_grads()  # frozen embeddings: checkpoints need a grad
        self.chat = Seq2SeqTokens(self.tok) if self.seq2seq else ChatTokens(self.tok)
        self.stop_ids = self.chat.stop_ids
        targets = lc.lora_targets if lc.lora_targets == "all-linear" else lc.lora_targets.split(",")
        lora = LoraConfig(
            r=lc.lora_r,
            lora_alpha=lc.lora_alpha,
            lora_dropout=lc.lora_dropout,
            target_modules=targets,
            task_type="SEQ_2_SEQ_LM" if self.seq2seq else "CAUSAL_LM",
        )
        torch.manual_seed(cfg.train.seed)  # LoRA init is random: same seed, same adapter
        self.model = get_peft_model(base, lora)
        # Adapters train in float32 even on a bf16 base: small updates survive rounding.
        for p in self.model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.split_head = None if self.seq2seq else target_only_head(self.model.get_base_model())
        self.plan_micro_batches = True  # ``levers`` switches it off to measure it
        # Packed rows' attention block by block (backends/packed_attention.py): on a CPU
        # it skips the masked blocks; on a GPU the extra kernel launches would cost more.
        self.blockwise_attention = self.device == "cpu"
        self.pass_overhead = (
            MICRO_BATCH_OVERHEAD if self.device == "cpu" else GPU_MICRO_BATCH_OVERHEAD
        )
        self.opt = torch.optim.AdamW(
            self.params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
        self.step = 0
        self.grad_sync = None  # set by DataParallelLearner under a multi-process launch
        self.tokens_generated = 0
        # Generation levers; the bench switches them all off (``levers``) to measure the
        # path before them. Each leaves greedy answers unchanged (tests/test_generation_speed.py).
        self.stop_on_device = True  # early stop judged from the new token, see _device_stopper
        self.merge_for_generation = True  # adapter folded in, where exact: _merged_adapter
        # The shortcuts of backends/lean_generation.py: head, unmerged adapter, CPU packing.
        self.contiguous_head = True
        self.fused_adapter = True
        self.packed_linears = True
        # A static KV cache, which transformers compiles with torch.compile: CUDA only
        # (on a CPU the compile costs more than it saves); off until measured to pay there.
        self.static_cache = False
        # held by each generate/stream call (torch_generation._one_call): two calls
        # must not swap the merged weights in and out together
        self.generating = threading.Lock()
        self.model_dir = Path(path)
        from saie_lite.tasks import answer_stop

        self.answer_end = answer_stop(cfg)

    # -- levers ---------------------------------------------------------------------
    def current_levers(self) -> Levers:
        return Levers(
            split_head=self.split_head is not None,
            plan_micro_batches=self.plan_micro_batches,
            pass_overhead=self.pass_overhead,
            blockwise_attention=self.blockwise_attention,
            share_prefix=self.cfg.train.share_prefix,
            max_seq_len=self.cfg.learner.max_seq_len,
            stop_on_device=self.stop_on_device,
            merge_for_generation=self.merge_for_generation,
            contiguous_head=self.contiguous_head,
            fused_adapter=self.fused_adapter,
            packed_linears=self.packed_linears,
            answer_end=self.answer_end,
        )

    @contextmanager
    def levers(self, **changes):
        """``with learner.levers(plan_micro_batches=False): ...``: the named levers (fields
        of ``Levers``) switched for the block, every one restored on exit, exception or
        not; yields the levers in effect. The only code that sets them after loading, so
        a measurement cannot leave a lever switched for the next one."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(Levers)}
        if unknown:
            raise TypeError(f"no such learner lever: {', '.join(sorted(unknown))}")
        want = dataclasses.replace(self.current_levers(), **changes)
        kept, head = self.current_levers(), self.split_head
        try:
            self._set_levers(want, head)
            yield self.current_levers()
        finally:
            self._set_levers(kept, head)  # the very head object it had, not a new one

    def _set_levers(self, v: Levers, head) -> None:
        if v.split_head and head is None and not self.seq2seq:  # on where the model allows
            head = target_only_head(self.model.get_base_model())
        self.split_head = head if v.split_head else None
        self.plan_micro_batches = v.plan_micro_batches
        self.pass_overhead = v.pass_overhead
        self.blockwise_attention = v.blockwise_attention
        self.cfg.train.share_prefix = v.share_prefix
        self.cfg.learner.max_seq_len = v.max_seq_len
        self.stop_on_device = v.stop_on_device
        self.merge_for_generation = v.merge_for_generation
        self.contiguous_head = v.contiguous_head
        self.fused_adapter = v.fused_adapter
        self.packed_linears = v.packed_linears
        self.answer_end = v.answer_end

    @torch.no_grad()
    def choice_logprobs(
        self, chats: list[Chat], prefix: str, options: list[list[str]]
    ) -> list[list[float]]:
        """Log-probability of each option's first token right after ``prefix`` in the
        assistant turn: multiple-choice scoring without generating (lm-eval-harness style).

        Each prompt is scored on its own, unpadded, so a choice's score never depends on
        which other items share the call (one forward pass per item; scoring needs no
        decode loop, so batching would save little). With ``eval.loglik_dtype: float32``
        (the default) a bf16/fp16 learner is upcast for the call and put back after
        (bf16 -> fp32 -> bf16 is exact); otherwise the body runs in the learner's dtype and
        only the output head and log-softmax in float32 (bf16 logits make near choices
        tie).
        """
        if self.seq2seq:
            raise UserError(
                "log-likelihood scoring needs a decoder-only learner: use --scoring generate"
            )
        self.model.eval()
        narrow: dict[str, torch.dtype] = {}
        if self.cfg.eval.loglik_dtype == "float32" and not self.quantized:
            narrow = self._widen_base()
        try:
            head_w = head_b = None
            if self.split_head is not None:
                decoder, head = self.split_head
                head_w = head.weight.float()
                head_b = head.bias.float() if head.bias is not None else None
            out = []
            for chat, opts in zip(chats, options):
                ids = torch.tensor(
                    [self.chat.ids(self.chat.render(chat, True) + prefix)], device=self.device
                )
                if head_w is not None:
                    hidden = decoder(input_ids=ids).last_hidden_state[0, -1]
                    logits = torch.nn.functional.linear(hidden.float(), head_w, head_b)
                else:  # a head that scales or soft-caps its logits: the model's own forward
                    logits = self.model(input_ids=ids).logits[0, -1].float()
                logp = torch.log_softmax(logits, dim=-1)
                out.append([float(logp[self.chat.ids(o)[0]]) for o in opts])
            return out
        finally:
            self._narrow_base(narrow)

    @torch.no_grad()
    def nll(self, chats: list[Chat], targets: list[str], batch_size: int = 8) -> list[float]:
        """Per item: negative log-likelihood per token of ``target`` as the assistant's
        reply to ``chat``, teacher-forced, encoded exactly as ``train_step`` encodes a
        training sequence (same chat template, same target tokens incl. the end-of-turn
        marker, same ``max_seq_len`` cut). One forward pass per right-padded batch; the
        log-softmax runs in float32."""
        self.model.eval()
        limit = self.cfg.learner.max_seq_len
        encoded = [
            (i[:limit], lab[:limit])
            for i, lab in (self.chat.encode(TrainSequence(c, t)) for c, t in zip(chats, targets))
        ]
        out: list[float] = []
        for start in range(0, len(encoded), batch_size):
            ids, mask, labels = self._right_padded(encoded[start : start + batch_size])
            if self.seq2seq:
                logits = self.model(input_ids=ids, attention_mask=mask, labels=labels).logits
                logits, nxt = logits.float(), labels
            else:
                logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                nxt = labels[:, 1:]
            ce = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)),
                nxt.reshape(-1),
                ignore_index=IGNORE,
                reduction="none",
            ).view(nxt.shape)
            counts = (nxt != IGNORE).sum(dim=1)
            sums = ce.sum(dim=1)
            out += [float(s / n) if n else float("nan") for s, n in zip(sums, counts)]
        return out

    # -- training -----------------------------------------------------------------
    def reseed(self, seed: int) -> None:
        torch.manual_seed(seed)  # seeds CPU and every CUDA device

    def _right_padded(self, items: list[tuple[list[int], list[int]]]):
        """(ids, attention mask, labels) of (ids, labels) pairs, right-padded; labels pad
        with IGNORE so padding carries no loss (training and teacher-forced NLL)."""
        width = max(len(i) for i, _ in items)
        pad = self.tok.pad_token_id
        ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in items], device=self.device)
        mask = torch.tensor(
            [[1] * len(i) + [0] * (width - len(i)) for i, _ in items], device=self.device
        )
        lw = max(len(lab) for _, lab in items)
        labels = torch.tensor(
            [lab + [IGNORE] * (lw - len(lab)) for _, lab in items], device=self.device
        )
        return ids, mask, labels

    def _micro_loss_sum(self, items: list[tuple[list[int], list[int]]]) -> torch.Tensor:
        """Summed target-token loss of one right-padded micro-batch."""
        ids, mask, labels = self._right_padded(items)
        if self.seq2seq:
            # Decoder logits line up with the labels (the model shifts its own inputs).
            logits = self.model(input_ids=ids, attention_mask=mask, labels=labels).logits.float()
            return torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)),
                labels.reshape(-1),
                ignore_index=IGNORE,
                reduction="sum",
            )
        if self.split_head is None:
            logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
            return masked_ce_sum(logits, labels)
        # Vocabulary logits only where a target token is predicted: the prompt and the
        # partner's turns carry no loss, and a 49k-way softmax over every position was
        # a third of the step time (bench: 156 -> 225 tokens/s on the embedded model).
        decoder, head = self.split_head
        hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
        nxt = labels[:, 1:]
        keep = nxt != IGNORE
        logits = head(hidden[:, :-1][keep]).float()
        return torch.nn.functional.cross_entropy(logits, nxt[keep], reduction="sum")

    def _packed_loss_sum(self, rows: list[PackedRow]) -> torch.Tensor:
        """Summed target-token loss of one micro-batch of packed rows (shared prefix once,
        then each continuation): a block attention mask and restarted position ids make
        every token see exactly what it sees in its own sequence."""
        width = max(len(r.ids) for r in rows)
        pad = self.tok.pad_token_id
        dev = self.device
        ids = torch.tensor([r.ids + [pad] * (width - len(r.ids)) for r in rows], device=dev)
        pos = torch.tensor([r.positions + [0] * (width - len(r.ids)) for r in rows], device=dev)
        # Padding gets segment -1 and sees only itself (a fully masked row would give NaN).
        segments = [r.segments + [-1] * (width - len(r.ids)) for r in rows]
        seg = torch.tensor(segments, device=dev)
        causal = torch.ones(width, width, dtype=torch.bool, device=dev).tril()
        same = seg[:, :, None] == seg[:, None, :]
        allowed = causal & (same | (seg[:, None, :] == 0)) & (seg[:, None, :] >= 0)
        allowed |= torch.eye(width, dtype=torch.bool, device=dev)
        # sdpa takes a boolean mask whatever the activations' dtype (a QLoRA model mixes
        # float32 and bf16); eager attention adds the mask, so it gets a float one.
        mask = allowed[:, None]
        base = self.model.get_base_model()
        if base.config._attn_implementation == "eager":
            mask = torch.zeros(mask.shape, device=dev).masked_fill(~mask, torch.finfo().min)
        decoder, head = self.split_head
        layouts = [row_layout(x) for x in segments]
        if self.attends_blockwise() and all(layouts):
            with packed_forward(base.config):
                out = decoder(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=pos,
                    use_cache=False,
                    packed_layout=layouts,
                )
        else:
            out = decoder(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
        hidden = out.last_hidden_state
        flat = [b * width + i for b, r in enumerate(rows) for i, _ in r.predict]
        targets = torch.tensor([t for r in rows for _, t in r.predict], device=dev)
        picked = hidden.reshape(-1, hidden.size(-1))[torch.tensor(flat, device=dev)]
        logits = head(picked).float()
        return torch.nn.functional.cross_entropy(logits, targets, reduction="sum")

    def shares_prefix(self) -> bool:
        """Whether this step packs each group's sequences (``train.share_prefix``) on a
        model where the block mask is known to be honoured exactly."""
        return (
            self.cfg.train.share_prefix
            # with dropout, one shared prefix would draw one mask for both sequences
            and self.cfg.learner.lora_dropout == 0
            and self.split_head is not None
            and packing_supported(self.model.get_base_model().config)
        )

    def attends_blockwise(self) -> bool:
        """Whether packed rows' attention runs block by block (packed_attention.py)."""
        base = self.model.get_base_model()
        return (
            self.blockwise_attention
            and base.config._attn_implementation == "sdpa"
            # a checkpointed layer would recompute under plain sdpa, whose saved
            # tensors differ from the blockwise forward's (torch refuses that)
            and not checkpointing(base)
        )

    def train_step(self, sequences: list[TrainSequence]) -> StepStats:
        self.model.train()
        encoded, n_target = self.chat.encode_batch(sequences, self.cfg.learner.max_seq_len)
        sync = self.grad_sync  # data-parallel: this rank holds one shard of the batch
        if sync is not None:
            n_target = int(sync.sum_number(n_target))  # scale by the whole batch's count
        if n_target == 0:
            raise UserError("a training batch has no target tokens: raise learner.max_seq_len")
        mb = self.cfg.train.micro_batch_size
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        groups = [s.group for s in sequences]
        if self.shares_prefix() and len(set(g for g in groups if g)) < sum(map(bool, groups)):
            # encode_batch sorted by length; pack in the sequences' own order instead
            limit = self.cfg.learner.max_seq_len
            unsorted = [(i[:limit], lab[:limit]) for i, lab in map(self.chat.encode, sequences)]
            items, loss_fn = pack_shared(unsorted, groups), self._packed_loss_sum
            lengths, sizes = [len(r.ids) for r in items], [r.n_sequences for r in items]
            n_tok = sum(r.n_tokens for r in items)
        else:
            items, loss_fn = encoded, self._micro_loss_sum
            lengths, sizes = [len(i) for i, _ in encoded], None
            n_tok = sum(lengths)
        spans = (
            micro_batches(lengths, mb, sizes=sizes, overhead=self.pass_overhead)
            if self.plan_micro_batches
            else [(s, min(s + mb, len(items))) for s in range(0, len(items), mb)]
        )
        if self._check_dtype:  # once, before the first update
            self._check_dtype = False
            first = items[spans[0][0] : spans[0][1]]
            self._check_update_dtype(lambda: (loss_fn(first) / n_target).backward())
        for start, end in spans:
            loss_sum = loss_fn(items[start:end])
            # Divide by the batch's target-token count, not the micro-batch's, so the
            # accumulated gradient equals the one full-batch gradient.
            (loss_sum / n_target).backward()
            total += loss_sum.item()
        if sync is not None:  # the gradient of the whole batch, on every rank
            sync.sum_grads(self.params)
            total = sync.sum_number(total)
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.train.grad_clip)
        self.opt.step()
        self.step += 1
        return StepStats(total / n_target, len(sequences), n_target, n_tok)

    def _check_update_dtype(self, one_pass) -> None:
        """``learner.dtype: auto`` chose bf16 on this CPU by a matmul probe: time passes
        (forward and backward of the first micro-batch) in bf16 and in float32, back and
        forth, and keep float32 if bf16 is not clearly faster (``cpu_dtype.check_update``,
        cached per machine). The real update after it is exactly what it would have been: gradients
        dropped, the RNG (dropout) put back, and the base back in bf16 unless float32 won
        (bf16 -> float32 -> bf16 is exact); adapters are float32 throughout."""
        if self.grad_sync is not None:
            return  # ranks timing apart could choose apart: data-parallel keeps the probe's
        rng = torch.random.get_rng_state()
        widened: dict[str, torch.dtype] = {}

        def run() -> None:
            torch.random.set_rng_state(rng)
            one_pass()

        verdict = {"choice": "bfloat16"}  # what a failed timing leaves (the probe's)
        try:
            verdict = cpu_dtype.check_update(
                run, lambda: widened.update(self._widen_base()), lambda: self._narrow_base(widened)
            )
        finally:
            if verdict["choice"] == "float32":  # the timing's cast already widened the base
                self.dtype = torch.float32
            else:
                self._narrow_base(widened)
            self.opt.zero_grad(set_to_none=True)
            torch.random.set_rng_state(rng)
        if verdict["choice"] == "float32":
            print(
                f"note: learner.dtype auto: a pass of the first update took "
                f"{verdict['bfloat16_seconds']:.3f} s in bfloat16, "
                f"{verdict['float32_seconds']:.3f} s in float32 on this CPU, so the frozen base "
                f"trains in float32 (cached in {cpu_dtype.cache_path()}; "
                f"{cpu_dtype.ENV}=1 forces bf16)",
                file=sys.stderr,
                flush=True,
            )

    def _widen_base(self) -> dict[str, torch.dtype]:
        """The model in float32; returns the tensors' former dtypes for ``_narrow_base``."""
        tensors = list(self.model.named_parameters()) + list(self.model.named_buffers())
        narrow = {n: t.dtype for n, t in tensors if t.is_floating_point()}
        narrow = {n: d for n, d in narrow.items() if d != torch.float32}
        if narrow:
            self.model.float()
        return narrow

    def _narrow_base(self, narrow: dict[str, torch.dtype]) -> None:
        named = list(self.model.named_parameters()) + list(self.model.named_buffers())
        for n, t in named:
            if n in narrow:
                t.data = t.data.to(narrow[n])

    @torch.no_grad()
    def merged_weights(self, bf16: bool = False) -> dict:
        """The base weights with the adapter folded in, as float32 numpy arrays under
        the base model's own tensor names; the live model is not modified (merging and
        unmerging in place would drift the frozen base by rounding on every refresh).

        ``bf16``: every matrix as bfloat16 bit patterns (uint16) instead, for a bf16
        snapshot: torch rounds to nearest even as ``gguf_writer.bf16_bits`` does, so
        the bits are the same, without a float32 copy of the model (on a bf16 learner,
        most of a refresh's time)."""
        out = self._base_state()
        for key, (a, b) in self._lora_pairs().items():
            out[key] = out[key] + (b @ a).to(out[key].dtype)
        if bf16:
            return {
                k: v.to(torch.bfloat16).cpu().view(torch.int16).numpy().view("uint16")
                if v.ndim > 1
                else v.float().cpu().numpy()
                for k, v in out.items()
            }
        return {k: v.float().cpu().numpy() for k, v in out.items()}

    def base_weights(self) -> dict:
        """The frozen base weights alone (no adapter), like ``merged_weights``."""
        return {k: v.float().cpu().numpy() for k, v in self._base_state().items()}

    def lora_factors(self) -> dict:
        """``{base weight name: (A, B)}`` as float32 numpy arrays with the adapter's
        scaling folded into B, so that the base weight plus ``B @ A`` is the merged one."""
        return {
            k: (a.float().cpu().numpy(), b.float().cpu().numpy())
            for k, (a, b) in self._lora_pairs().items()
        }

    def _base_state(self) -> dict:
        base = self.model.get_base_model()
        out = {
            name.replace(".base_layer.", "."): t.detach()
            for name, t in base.state_dict().items()
            if "lora_" not in name
        }
        if getattr(base.config, "tie_word_embeddings", False):
            out.pop("lm_head.weight", None)  # llama.cpp reuses the embedding
        return out

    def _lora_pairs(self) -> dict:
        from peft.tuners.lora import LoraLayer

        pairs = {}
        for name, module in self.model.get_base_model().named_modules():
            if isinstance(module, LoraLayer) and "default" in module.lora_A:
                a = module.lora_A["default"].weight.detach().float()
                b = module.lora_B["default"].weight.detach().float()
                pairs[f"{name}.weight"] = (a, b * module.scaling["default"])
        return pairs

    # -- persistence --------------------------------------------------------------
    def save_adapter(self, directory: Path) -> None:
        """The adapter alone in PEFT's layout (adapter_config.json + safetensors), which
        servers such as vLLM load as a LoRA module (``learner.generate_on: vllm``)."""
        self.model.save_pretrained(str(directory), safe_serialization=True)

    def save(self, directory: Path) -> None:
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {
            k: v.detach().cpu().contiguous()
            for k, v in get_peft_model_state_dict(self.model).items()
        }
        save_file(state, str(d / "adapter_model.safetensors"))
        self.model.peft_config["default"].save_pretrained(str(d))
        torch.save(self.opt.state_dict(), d / "optimizer.pt")
        (d / "learner.json").write_text(
            json.dumps({"step": self.step, "model": self.cfg.learner.model})
        )

    def load_adapter(self, directory: Path) -> None:
        """Adapter weights only (for evaluation and debate)."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        path = Path(directory) / "adapter_model.safetensors"
        if not path.is_file():
            raise UserError(f"no adapter in {directory}: expected {path.name} (a run checkpoint)")
        set_peft_model_state_dict(self.model, load_file(str(path)))
        for p in self.params:  # keep adapters float32 after loading
            p.data = p.data.float()

    def load(self, directory: Path) -> None:
        d = Path(directory)
        self.load_adapter(d)
        self.opt.load_state_dict(torch.load(d / "optimizer.pt", weights_only=True))
        self.step = json.loads((d / "learner.json").read_text())["step"]


def target_only_head(model):
    """(decoder, output head) when logits can be computed from the decoder's last hidden
    state by the head alone, else None (models that scale or soft-cap their logits keep
    the full forward)."""
    cfg = model.config
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return None
    try:
        decoder, head = model.get_decoder(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if decoder is None or decoder is model or not isinstance(head, torch.nn.Linear):
        return None
    return decoder, head


# Decoder models whose attention takes a custom 4D mask and explicit position ids as
# given (rotary positions, no sliding window), each checked by the packing test.
PACKING_MODELS = ("llama", "qwen2")


def packing_supported(config) -> bool:
    return (
        getattr(config, "model_type", None) in PACKING_MODELS
        and getattr(config, "_attn_implementation", None) in ("sdpa", "eager")
        and not getattr(config, "use_sliding_window", False)
    )


def checkpointing(model) -> bool:
    """Whether activation checkpointing is on (transformers 5 renamed the property)."""
    on = getattr(model, "is_activation_checkpointing", None)
    return bool(model.is_gradient_checkpointing if on is None else on)


def masked_ce_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over positions whose label is not IGNORE."""
    shift_logits = logits[:, :-1, :].reshape(-1, logits.size(-1))
    shift_labels = labels[:, 1:].reshape(-1)
    return torch.nn.functional.cross_entropy(
        shift_logits, shift_labels, ignore_index=IGNORE, reduction="sum"
    )


class SelfPartner:
    """The learner's frozen base as partner: generation with the adapters switched off."""

    def __init__(self, learner: TorchLearner, temperature: float):
        self.learner = learner
        self.temperature = temperature
        self.name = f"self:{learner.cfg.learner.model}"

    def remark(self, chats: list[Chat], max_tokens: int) -> list[str]:
        with self.learner.model.disable_adapter():
            return self.learner.generate(chats, max_tokens, self.temperature)


def create_learner(cfg) -> TorchLearner:
    return TorchLearner(cfg)


def create_self_partner(cfg, learner=None) -> SelfPartner:
    if not isinstance(learner, TorchLearner):
        raise UserError("partner 'self' needs the torch learner backend (--backend torch)")
    return SelfPartner(learner, cfg.partner.temperature)
