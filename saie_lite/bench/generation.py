"""``saie-lite bench --only generate``: learner generation against llama.cpp, and what
each kind of fast-path snapshot costs to refresh and to decode from."""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from pathlib import Path

from saie_lite.bench.parts import BenchSettings, _cfg, _gen_rate, _sequences, switched


def bench_generate(s: BenchSettings) -> dict:
    """Learner generation against llama.cpp single-stream on the same model: ours batched
    on torch, and ours on the fast path (a llama.cpp snapshot of the learner: q8_0, q4_0,
    f32, bf16 merged, f32 base + adapter), with what one snapshot refresh costs."""
    import os
    import tempfile

    from saie_lite.backends.torch_peft import TorchLearner
    from saie_lite.paths import EMBEDDED, embedded_gguf

    # Both sides get the same job: answers with no early stop, up to new_tokens each.
    cfg = _cfg(s, **{"learner.backend": "torch", "learner.stop_at_answer": False})
    learner = TorchLearner(cfg)
    chats = [q.context for q in _sequences(s, s.batch)]
    learner.generate(chats[:1], 4)
    ours = _gen_rate(learner, chats, s.new_tokens)["tokens_per_s"]
    paths = generation_paths(learner, chats, s.new_tokens, rounds=3)
    try:
        import llama_cpp  # noqa: F401  (installed?)

        from saie_lite.backends.llama_load import open_llama
        from saie_lite.gguf_writer import REWRITABLE
        from saie_lite.train.fast_generation import SnapshotAnswers
    except ImportError:
        return {
            "ours_tokens_per_s": ours,
            "generation_path_tokens_per_s": paths,
            "llama_cpp": "skipped: llama-cpp-python not installed",
        }
    # The snapshots' own settings, in a copy: the learner's config stays as it loaded.
    snap_cfg = copy.deepcopy(cfg)
    snap_cfg.learner.snapshot_every = 1
    later = UpdatesAhead(learner)
    # The snapshot as q8_0 (the default), as q4_0 (llama.cpp's quantizer; repacked at
    # load on AVX2), as f32 and as bf16 (fast where the CPU has AVX512-BF16), merged;
    # and as an f32 base with the adapter applied at run time. Each is built once before it is timed; then one refresh (what every
    # snapshot_every updates costs) is timed apart.
    fast, refresh, whole = {}, {}, {}
    kinds = (("q8_0", "merge"), ("q4_0", "merge"), ("f32", "merge"), ("bf16", "merge"),
             ("f32", "adapter"))  # fmt: skip
    for quant, how in kinds:
        snap_cfg.learner.snapshot_quant, snap_cfg.learner.snapshot_refresh = quant, how
        key = quant if how == "merge" else f"{quant}_adapter"
        # the snapshot files are hundreds of megabytes each: gone with the measurement
        with tempfile.TemporaryDirectory(prefix="saie-bench-") as tmp:
            snap = SnapshotAnswers(later, snap_cfg, Path(tmp) / "snapshot")
            snap.generate(chats[:1], 4)
            fast[key] = _gen_rate(snap, chats, s.new_tokens)["tokens_per_s"]
            with later.updates_later(1):  # the next update's snapshot
                t0 = time.perf_counter()
                snap.refresh_if_due()
                refresh[key] = time.perf_counter() - t0
            if how == "merge" and quant in REWRITABLE:
                # The same refresh written as a new whole file (what a refresh costs
                # when this process did not write the file before: a resumed run).
                snap.layouts.clear()
                with later.updates_later(2):
                    t0 = time.perf_counter()
                    snap.refresh_if_due()
                    whole[key] = time.perf_counter() - t0
            snap._close()
    if s.model == EMBEDDED:
        gguf, label = embedded_gguf(), "Q4_1 (the embedded GGUF)"
    else:
        from saie_lite.backends.torch_models import resolve_model_path
        from saie_lite.gguf_writer import write_gguf

        gguf = Path(tempfile.mkdtemp()) / "ref-f16.gguf"
        write_gguf(Path(resolve_model_path(s.model)), gguf, "f16")
        label = "f16 (exported)"
    # All cores, as the partner and the snapshot use (llama-cpp-python defaults to half).
    llm = open_llama(model_path=str(gguf), n_ctx=2048, n_threads=os.cpu_count(), verbose=False)
    n, t0 = 0, time.perf_counter()
    for chat in chats:
        out = llm.create_chat_completion(messages=chat, max_tokens=s.new_tokens, temperature=0.0)
        n += out["usage"]["completion_tokens"]
    ref = n / (time.perf_counter() - t0)
    llm.close()
    return {
        "ours_tokens_per_s": ours,
        "generation_path_tokens_per_s": paths,
        "fast_path_tokens_per_s": fast["q8_0"],
        "fast_path_model": f"q8_0 snapshot, refreshed in {refresh['q8_0']:.2f} s",
        "fast_path_q4_0_tokens_per_s": fast["q4_0"],
        "fast_path_q4_0_model": f"q4_0 snapshot, refreshed in {refresh['q4_0']:.2f} s",
        "fast_path_f32_tokens_per_s": fast["f32"],
        "fast_path_f32_model": f"f32 snapshot, refreshed in {refresh['f32']:.2f} s",
        "fast_path_bf16_tokens_per_s": fast["bf16"],
        "fast_path_bf16_model": f"bf16 snapshot, refreshed in {refresh['bf16']:.2f} s",
        "fast_path_f32_adapter_tokens_per_s": fast["f32_adapter"],
        "fast_path_f32_adapter_model": (
            f"f32 base + LoRA adapter, refreshed in {refresh['f32_adapter']:.2f} s"
        ),
        "snapshot_refresh_seconds": refresh,
        # merged kinds: a whole new file -> the tensors rewritten in place
        "snapshot_refresh_lever": {k: {"before": whole[k], "after": refresh[k]} for k in whole},
        "llama_cpp_tokens_per_s": ref,
        "llama_cpp_model": label,
        "ratio_ours_over_llama_cpp": ours / ref,
        "ratio_fast_path_over_llama_cpp": fast["q8_0"] / ref,
        "ratio_fast_path_q4_0_over_llama_cpp": fast["q4_0"] / ref,
        "ratio_fast_path_f32_over_llama_cpp": fast["f32"] / ref,
        "ratio_fast_path_bf16_over_llama_cpp": fast["bf16"] / ref,
    }


# the learner's generation levers, all off for the 'before' path, all on for 'after'
GENERATION_LEVERS = (
    "stop_on_device", "merge_for_generation", "contiguous_head", "fused_adapter",
    "packed_linears",
)  # fmt: skip


def generation_paths(learner, chats: list, new_tokens: int, rounds: int = 1) -> dict:
    """Torch generation before and after its levers (early stop judged on the device,
    the adapter merged while generating where exact, the head read contiguous, an
    unmerged adapter added in place, on a CPU the weights packed once per call) with
    early stop on, as in a run; the two paths alternate call by call (a shared VM drifts
    between blocks of calls), and their greedy answers are compared round by round."""
    from saie_lite.tasks import gsm8k

    spent = {"before": 0.0, "after": 0.0}
    tokens = {"before": 0, "after": 0}
    answers: dict = {"before": [], "after": []}
    with switched(learner, answer_end=gsm8k.answer_end):
        for _ in range(rounds):
            for label, on in (("before", False), ("after", True)):
                levers = dict.fromkeys(GENERATION_LEVERS, on)
                with switched(learner, **levers):
                    t0, n0 = time.perf_counter(), learner.tokens_generated
                    answers[label].append(learner.generate(chats, new_tokens))
                    spent[label] += time.perf_counter() - t0
                    tokens[label] += learner.tokens_generated - n0
                    if on:  # the layers the 'after' path folds the adapter into
                        merged = len(learner._mergeable_layers())
    before, after = tokens["before"] / spent["before"], tokens["after"] / spent["after"]
    return {
        "before": before,
        "after": after,
        "ratio": after / before,
        "same_answers": answers["before"] == answers["after"],  # every round's
        "dtype": str(learner.dtype).replace("torch.", ""),
        "merged_layers": merged,
    }


class UpdatesAhead:
    """The learner as a snapshot sees it, ``n`` updates later inside ``updates_later(n)``:
    a refresh (what every snapshot_every updates costs) is timed without training, which
    would change the weights the next snapshot kinds are built from. Everything else is
    the learner's own."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self._ahead = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    @property
    def step(self) -> int:
        return self.inner.step + self._ahead

    @contextmanager
    def updates_later(self, n: int):
        self._ahead = n
        try:
            yield
        finally:
            self._ahead = 0
