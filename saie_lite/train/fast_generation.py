"""The fast generation path (``learner.snapshot_every: N``).

Learner answers are the largest cost of an online method on a CPU. Here they come from
a llama.cpp snapshot of the learner (``learner.snapshot_quant``: q8_0, q4_0, f16, f32,
bf16, or auto: the type this CPU runs fastest, as measured for the partner):
the adapter is folded into the base weights (in memory), written as a GGUF with the base
model's tokenizer and template, and loaded into llama.cpp; the snapshot is rebuilt every
N updates. Answers are therefore
up to N-1 updates stale: N=1 is on-policy up to quantization, larger N trades that for
speed. Updates still run on the torch learner; nothing else in the loop changes.

With ``learner.snapshot_refresh: adapter`` the base model is exported once and each
refresh writes only the LoRA adapter (megabytes, milliseconds), which llama.cpp applies
at run time on top of the base weights; decoding pays a little for the unmerged adapter,
so a merged snapshot is cheaper when it is rebuilt rarely (``bench --only generate``:
refresh seconds and tokens/s per snapshot kind).

Snapshots are taken at multiples of N and kept in the run directory, so a resumed run
generates from the same snapshot the uninterrupted run would have used.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from saie_lite.errors import UserError
from saie_lite.protocols import Chat, Snapshots, supports
from saie_lite.tasks import cut_at_answer, reply_finished

# Answers decoded together: train.lookahead hands a snapshot 16 questions at a time
# (4 batches of 4); on a CPU one step of 16 cost 0.8x two of 8 (benchmarks.md).
PARALLEL = 16


def snapshot_quant(cfg) -> str:
    """``learner.snapshot_quant``, with ``auto`` resolved by the partner-weights
    measurement (once per machine, cached): which weight type llama.cpp runs fastest
    depends on the CPU's kernels, not on the model."""
    quant = cfg.learner.snapshot_quant
    if quant != "auto":
        return quant
    from saie_lite.backends.llama_cpp import embedded_weights
    from saie_lite.backends.partner_weights import snapshot_type

    return snapshot_type(embedded_weights, cfg.partner.n_threads)


def due_step(step: int, every: int) -> int:
    """The update whose adapter the snapshot must hold at ``step``."""
    return (step // every) * every


class SnapshotAnswers:
    """Wraps a torch learner: ``generate`` runs on llama.cpp, the rest is the learner's."""

    def __init__(self, learner, cfg, directory: Path):
        if not supports(learner, Snapshots) or learner.seq2seq:
            raise UserError(
                "learner.snapshot_every needs the torch backend with a decoder-only model: "
                "set learner.snapshot_every=0"
            )
        if learner.quantized:
            raise UserError(
                "learner.snapshot_every cannot merge a 4-bit (QLoRA) base: set "
                "learner.quantize=none or learner.snapshot_every=0"
            )
        lc = cfg.learner
        if lc.snapshot_refresh == "adapter":
            import llama_cpp

            if not hasattr(llama_cpp, "llama_set_adapters_lora"):
                raise UserError(
                    "learner.snapshot_refresh=adapter needs a newer llama-cpp-python "
                    f"(this is {getattr(llama_cpp, '__version__', '?')}; 0.3.36 works): "
                    "pip install -U llama-cpp-python, or set learner.snapshot_refresh=merge"
                )
        self.inner = learner
        self.every = lc.snapshot_every
        self.quant = snapshot_quant(cfg)
        self.by_adapter = lc.snapshot_refresh == "adapter"
        self.adapter = None  # the llama.cpp adapter set on the decoder's context
        self.dir = Path(directory)
        self.n_ctx = lc.max_seq_len + lc.max_new_tokens
        self.n_threads = cfg.partner.n_threads or os.cpu_count() or 1
        self.gpu_layers = lc.snapshot_gpu_layers
        self.hint = lc.model + (" smollm2" if lc.model == "embedded" else "")
        self.llm = None
        self.decoder = None
        self.layouts: dict[Path, list] = {}  # file -> tensors this process wrote in it
        self.snap_step: int | None = None
        self.refresh_seconds = 0.0
        self.refreshes = 0
        self.tokens_generated = 0
        # Set by the loop while it prepares a batch during the update before it: the
        # update count that batch's sampled answers are seeded with (see below).
        self.seed_step: int | None = None

    def __getattr__(self, name):
        # Everything but generation (train_step, save, count_tokens, name, ...) is the
        # learner's own. Only reached for attributes this wrapper does not define.
        return getattr(self.inner, name)

    # -- the snapshot -------------------------------------------------------------
    @property
    def path(self) -> Path:
        """The GGUF llama.cpp loads: the merged learner, or the base model alone."""
        kind = "base" if self.by_adapter else "learner"
        return self.dir / f"{kind}-{self.quant}.gguf"

    @property
    def adapter_path(self) -> Path:
        return self.dir / "learner-lora.gguf"

    def _meta(self) -> dict:
        try:
            return json.loads((self.dir / "snapshot.json").read_text())
        except (OSError, ValueError):
            return {}

    def refresh_if_due(self) -> None:
        want = due_step(self.inner.step, self.every)
        if self.llm is not None and self.snap_step == want:
            return
        t0 = time.perf_counter()
        meta = self._meta()
        kept = meta.get("step") == want and meta.get("quant") == self.quant
        if self.by_adapter:
            if self.llm is None:
                if not self.path.is_file():  # written whole or not at all (os.replace)
                    self._write_file(self.path, self.inner.base_weights())
                self._load()
            if not (kept and meta.get("refresh") == "adapter" and self.adapter_path.is_file()):
                self._write_adapter(want)
            self._set_adapter()
        else:
            if not (kept and meta.get("refresh", "merge") == "merge" and self.path.is_file()):
                self._close()  # the file is mapped by llama.cpp: close before replacing
                # bf16: the bits straight from torch, without a float32 copy of the model
                weights = self.inner.merged_weights(bf16=self.quant == "bf16")
                self._write_file(self.path, weights, step=want)
            self._load()
        self.snap_step = want
        self.refreshes += 1
        self.refresh_seconds += time.perf_counter() - t0

    def _record(self, step: int | None, write) -> None:
        """``write()`` puts a finished file in place. The file that holds the learner's
        weights at ``step`` (merged model or adapter) is recorded in snapshot.json; the
        record goes first and comes back last, so a crash in between leaves none and a
        resumed run rebuilds instead of trusting a mismatched file. The adapter mode's
        base (``step`` None) holds no update and needs no record: it is replaced whole."""
        if step is None:
            write()
            return
        meta = self.dir / "snapshot.json"
        meta.unlink(missing_ok=True)
        write()
        refresh = "adapter" if self.by_adapter else "merge"
        meta.write_text(json.dumps({"step": step, "quant": self.quant, "refresh": refresh}))

    def _write_file(self, path: Path, weights: dict, step: int | None = None) -> None:
        """The snapshot file at ``path``. A merged snapshot has the same tensors at
        every refresh, so after this process first wrote it whole, a refresh rewrites
        only their data in place (``rewrite_tensors``: the same bytes, no vocabulary
        to pack, no new 270 MB file); a crash halfway leaves no record (``_record``),
        so the next run writes it whole again."""
        from saie_lite.gguf_writer import rewrite_tensors, write_gguf
        from saie_lite.train.distributed import world_size

        self.dir.mkdir(parents=True, exist_ok=True)
        layout = self.layouts.get(path)

        def write() -> None:
            model_dir = self.inner.model_dir
            # Data-parallel ranks share the run's snapshot folder: each replaces the file
            # whole (os.replace), so none rewrites bytes another may have mapped.
            if (
                world_size() == 1
                and layout
                and rewrite_tensors(path, model_dir, self.quant, weights, layout)
            ):
                return
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            new: list = []
            write_gguf(
                model_dir,
                tmp,
                self.quant,
                name="saie-lite learner snapshot",
                hint=self.hint,
                weights=weights,
                layout=new,
            )
            os.replace(tmp, path)  # written whole or not at all
            self.layouts[path] = new

        self._record(step, write)

    def _write_adapter(self, step: int) -> None:
        from saie_lite.gguf_writer import write_lora_gguf

        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.adapter_path.with_suffix(f".tmp{os.getpid()}")
        write_lora_gguf(self.inner.model_dir, tmp, self.inner.lora_factors())
        self._record(step, lambda: os.replace(tmp, self.adapter_path))

    def _set_adapter(self) -> None:
        """Load the adapter file and put it on the decoder's context in place of the
        previous one (freed once it is off the context)."""
        import ctypes

        import llama_cpp

        new = llama_cpp.llama_adapter_lora_init(
            self.llm._model.model, str(self.adapter_path).encode()
        )
        if not new:
            raise UserError(
                f"llama.cpp could not load the snapshot adapter {self.adapter_path}: "
                "delete the snapshot folder to rebuild it"
            )
        adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(new)
        scales = (ctypes.c_float * 1)(1.0)
        if llama_cpp.llama_set_adapters_lora(self.decoder.ctx.ctx, adapters, 1, scales) != 0:
            llama_cpp.llama_adapter_lora_free(new)
            raise UserError(
                f"llama.cpp refused the snapshot adapter {self.adapter_path}: delete the "
                "snapshot folder to rebuild it"
            )
        if self.adapter is not None:
            llama_cpp.llama_adapter_lora_free(self.adapter)
        self.adapter = new

    def _load(self) -> None:
        from saie_lite.backends.llama_batched import BatchedDecoder
        from saie_lite.backends.llama_load import open_llama

        self._close()
        # The Llama only holds the weights (and vocabulary); generation runs in the
        # decoder's own context, so this one gets the smallest useful KV cache.
        self.llm = open_llama(
            model_path=str(self.path),
            n_ctx=512,
            n_threads=self.n_threads,
            n_batch=512,
            # On a GPU build of llama.cpp the snapshot decodes there (llama.cpp puts a
            # LoRA adapter's tensors with their layers); a CPU build ignores it.
            n_gpu_layers=self.gpu_layers,
            verbose=False,
        )
        # A batch of answers decodes together: one step reads the weights once for all.
        self.decoder = BatchedDecoder(
            self.llm, parallel=PARALLEL, kv_tokens=4 * self.n_ctx, n_threads=self.n_threads
        )

    def _close(self) -> None:
        if self.decoder is not None:
            self.decoder.close()
            self.decoder = None
        if self.adapter is not None:  # off the context now that it is gone
            import llama_cpp

            llama_cpp.llama_adapter_lora_free(self.adapter)
            self.adapter = None
        if self.llm is not None:
            self.llm.close()
            self.llm = None

    def unchanged_by_update(self, step: int) -> bool:
        """Whether answers after update ``step`` come from the snapshot already loaded,
        so they do not depend on that update (the loop may prepare them during it)."""
        return self.llm is not None and self.snap_step == due_step(step, self.every)

    def answers_fixed_through(self, step: int) -> int:
        """After ``step`` updates answers come from the snapshot of update
        due_step(step); it answers until the next multiple of N is reached."""
        return due_step(step, self.every) + self.every - 1

    # -- generation ---------------------------------------------------------------
    def generate(
        self, chats: list[Chat], max_new_tokens: int, temperature: float = 0.0
    ) -> list[str]:
        self.refresh_if_due()
        inner = self.inner
        # The learner's own tokenizer renders the prompts, so the snapshot sees exactly
        # the token ids the torch learner would; its detokenizer reads the replies back.
        prompts = [inner.chat.prompt_ids(chat) for chat in chats]
        end = inner.answer_end

        replies = self.decoder.generate(
            prompts,
            max_new_tokens,
            set(inner.stop_ids),
            temperature,
            # the loop reseeds per batch; sampled answers follow the update count
            seed=inner.step if self.seed_step is None else self.seed_step,
            done=lambda reply: reply_finished(inner.tok, reply, end),
        )
        self.tokens_generated += sum(map(len, replies))
        texts = [inner.tok.decode(r, skip_special_tokens=True) for r in replies]
        return [cut_at_answer(t, end).strip() for t in texts]
