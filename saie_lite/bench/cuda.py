"""``saie-lite bench --device cuda``: the CUDA path on random-initialised models of real
shapes (weights do not matter for speed, and no hub is needed), with the embedded
model's tokenizer. For each shape and for 4-bit QLoRA and bf16 LoRA: batched generation,
``train_step`` (update tokens/s, shared prefix off and on), checkpoint save/load and the
export merge, TRL ``SFTTrainer`` at the same settings, and peak GPU memory."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from saie_lite.bench.parts import (
    BenchSettings,
    _cfg,
    _sequences,
    _timed_steps,
    in_fresh_process,
    switched,
    trl_rate,
)
from saie_lite.errors import UserError

# Architecture shapes of SmolLM2-135M, Qwen2.5-0.5B and Qwen2.5-1.5B (their configs'
# published sizes); ``tiny`` lets the builder be tested on a CPU.
SHAPES: dict[str, dict] = {
    "smollm2-135m": dict(
        arch="llama",
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        rope_theta=100000.0,
    ),
    "qwen2-0.5b": dict(
        arch="qwen2",
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        rope_theta=1000000.0,
    ),
    "qwen2-1.5b": dict(
        arch="qwen2",
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        rope_theta=1000000.0,
    ),
    "tiny": dict(
        arch="llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
        rope_theta=100000.0,
    ),
}


def require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            f"bench --device cuda needs a CUDA GPU and torch sees none (torch {torch.__version__}"
            f"{', a CPU-only build' if torch.version.cuda is None else ''})"
        )


def shape_config(name: str, tok, dtype: str = "bfloat16"):
    """The transformers config of shape ``name`` for tokenizer ``tok``'s special tokens."""
    from transformers import LlamaConfig, Qwen2Config

    spec = dict(SHAPES[name])
    arch, theta = spec.pop("arch"), spec.pop("rope_theta")
    if len(tok) > spec["vocab_size"]:
        raise UserError(
            f"the tokenizer has {len(tok)} tokens, shape {name} only {spec['vocab_size']}"
        )
    return (LlamaConfig if arch == "llama" else Qwen2Config)(
        **spec,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        dtype=dtype,
    )


def build_shape(name: str, out: Path, tokenizer_dir: Path, dtype: str = "bfloat16") -> Path:
    """A random-initialised model of shape ``name`` saved to ``out`` with the tokenizer
    files of ``tokenizer_dir``; a directory any learner backend loads like a real model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(shape_config(name, tok, dtype))
    model = model.to(getattr(torch, dtype))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def _sync(device: str):
    import torch

    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def _shape_run(
    s: BenchSettings, model_dir: Path, quantize: str, work: Path, device: str = "cuda"
) -> dict:
    """Ours on one shape: generation, update, SAIE update unshared/shared, peak memory,
    checkpoint round trip and export merge. ``device`` is cuda but for tests."""
    import torch

    from saie_lite.backends.torch_peft import TorchLearner
    from saie_lite.bench.levers import stance_sequences
    from saie_lite.chat_tokens import MICRO_BATCH_OVERHEAD
    from saie_lite.export.formats import merge_torch
    from saie_lite.tasks import gsm8k

    over = {
        "learner.backend": "torch",
        "learner.model": str(model_dir),
        "learner.device": device,
        "learner.dtype": "bfloat16",
        "learner.quantize": quantize,
    }
    sync = _sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    learner = TorchLearner(_cfg(s, **over))
    out: dict = {}
    # Generation: a batch of GSM8K questions, no early stop (random weights never finish).
    chats = [gsm8k.learner_chat(e.question) for e in gsm8k.load("bundled")[0][: s.batch]]
    with switched(learner, answer_end=None):
        learner.generate(chats[:1], 4)
        sync()
        before, t0 = learner.tokens_generated, time.perf_counter()
        learner.generate(chats, s.new_tokens)
        sync()
        dt = time.perf_counter() - t0
    out["generate_tokens_per_s"] = (learner.tokens_generated - before) / dt

    def timed(seqs):
        def one() -> int:
            n = learner.train_step(seqs).n_tokens
            sync()
            return n

        return _timed_steps(one, s.steps)

    out["update"] = timed(_sequences(s, s.batch))
    # The lever: micro-batches planned with the CPU's per-pass cost (before) on this device.
    with switched(learner, pass_overhead=MICRO_BATCH_OVERHEAD):
        out["update_cpu_planned"] = timed(_sequences(s, s.batch))
    stance = stance_sequences(s.batch)
    # as the CPU lever: whole discussions
    with switched(learner, max_seq_len=max(s.max_len, 1024)):
        for label, share in (("saie_update_unshared", False), ("saie_update_shared", True)):
            with switched(learner, share_prefix=share):
                out[label] = timed(stance)
    if device == "cuda":
        out["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    # Checkpoint save/load round trip, then the export merge of that checkpoint.
    ckpt = work / f"ckpt-{quantize}"
    learner.save(ckpt)
    learner.load(ckpt)
    t0 = time.perf_counter()
    merged = work / f"merged-{quantize}"
    merge_torch(_cfg(s, **{**over, "learner.device": "cpu"}), ckpt, merged)
    out["export_merge_seconds"] = time.perf_counter() - t0
    out["export_merge_ok"] = (merged / "config.json").is_file()
    return out


def _trl_cuda(s: BenchSettings, model_dir: Path, quantize: str, device: str = "cuda") -> dict:
    """TRL ``SFTTrainer`` on the same model, sequences, LoRA, dtype and quantization."""
    import torch

    from saie_lite.backends.torch_setup import quantization_config

    kw: dict = {"dtype": torch.bfloat16, "device_map": {"": 0 if device == "cuda" else "cpu"}}
    if quantize == "4bit":
        kw["quantization_config"] = quantization_config()
    return trl_rate(s, model_dir, kw, sync=_sync(device), bf16=True, use_cpu=device != "cuda")


def _error(e: Exception) -> str:
    """One line for the report, and the traceback on stderr for whoever reads the log."""
    import traceback

    traceback.print_exc()
    return f"{type(e).__name__}: {str(e)[:300]}"


def _free_gpu() -> None:
    import gc

    import torch

    gc.collect()
    torch.cuda.empty_cache()


# What ``bench --device cuda --only`` may name: the shapes, and the SAIE vs SFT part.
CUDA_PARTS = ("smollm2-135m", "qwen2-0.5b", "qwen2-1.5b", "saie")


def _saie_cuda(s: BenchSettings, model_dir: Path, work: Path, device: str = "cuda") -> dict:
    """SAIE vs SFT through the real loop with the learner on the GPU (bf16 LoRA) and the
    partner on the CPU (llama.cpp): exact on-policy, and the fast path with overlap off
    and on. The partner is a q8_0 GGUF of the same random model: weights do not matter
    for speed, but random weights sampled at temperature 1 almost never end an answer or
    a remark early, so every generation runs to its token limit (the slowest case)."""
    from saie_lite.bench.parts import bench_saie
    from saie_lite.gguf_writer import write_gguf

    work.mkdir(parents=True, exist_ok=True)
    partner = write_gguf(model_dir, work / "partner-q8_0.gguf", "q8_0", name="bench partner")
    base = {
        "learner.model": str(model_dir),
        "learner.device": device,
        "learner.dtype": "bfloat16",
        "learner.quantize": "none",
        "partner.model": str(partner),
        # Greedy decoding of random weights repeats one token (or ends at once): the loop
        # rightly skips such remarks as degenerate and nothing would train. Sampling at
        # temperature 1 gives varied text of full length, so every discussion is trained.
        "learner.temperature": 1.0,
        "partner.temperature": 1.0,
    }
    fast = {"method.mode": "saie", "learner.snapshot_every": 4}
    runs = {
        "sft": {"method.mode": "sft"},
        "saie": {"method.mode": "saie"},  # on-policy: answers from the GPU learner
        "saie_fast": {**fast, "train.overlap": "off"},
        "saie_fast_overlap": {**fast, "train.overlap": "on"},
    }
    return bench_saie(s, work / "runs", runs, base)


def _shape_part(
    s: BenchSettings,
    name: str,
    root: Path,
    tokenizer_dir,
    out: dict,
    on_result,
    device: str = "cuda",
):
    """Ours then TRL on shape ``name``, QLoRA 4-bit then bf16 LoRA, into ``out``. Each
    side runs in a process of its own, so neither inherits the other's state (TRL run
    after ours in one process was up to 5x slower on the 1.5B QLoRA shape)."""
    model_dir = build_shape(name, root / name, tokenizer_dir)
    for quantize in ("4bit", "none"):
        label = f"{name} {'qlora-4bit' if quantize == '4bit' else 'lora-bf16'}"
        try:
            ours = in_fresh_process(_shape_run, s, model_dir, quantize, root / name, device)
        except Exception as e:  # noqa: BLE001 - one failing setting must not hide the rest
            out[label] = {"error": _error(e)}
            on_result()
            continue
        out[label] = ours
        on_result()
        try:
            trl = in_fresh_process(_trl_cuda, s, model_dir, quantize, device)
        except Exception as e:  # noqa: BLE001
            trl = {"error": _error(e)}
        if "tokens_per_s" in trl:
            ours["ratio_update_over_trl"] = ours["update"]["tokens_per_s"] / trl["tokens_per_s"]
        out[label] = {**ours, "trl": trl}
        on_result()
    shutil.rmtree(root / name, ignore_errors=True)


def _saie_part(s: BenchSettings, root: Path, tokenizer_dir, name: str = "smollm2-135m") -> dict:
    try:
        model_dir = build_shape(name, root / f"saie-{name}", tokenizer_dir)
        return {"shape": name, **_saie_cuda(s, model_dir, root / f"saie-{name}")}
    except Exception as e:  # noqa: BLE001
        return {"shape": name, "error": _error(e)}


def bench_cuda(
    s: BenchSettings,
    parts: list[str] | None = None,
    work: Path | None = None,
    out: dict | None = None,
    on_result=lambda: None,
) -> dict:
    """The parts in order: a shape runs QLoRA 4-bit and bf16 LoRA, ``saie`` SAIE vs SFT
    on the smallest shape; refuses in one line without CUDA. Results go into ``out`` as
    they come, and ``on_result`` is called after each (the report is rewritten: a later
    failure or a stopped run keeps what was measured)."""
    require_cuda()
    import torch

    from saie_lite.backends.torch_models import resolve_model_path

    # Only the tokenizer of ``s.model`` is used (the embedded model's by default).
    tokenizer_dir = resolve_model_path(s.model)
    root = Path(work or tempfile.mkdtemp(prefix="saie-bench-cuda-"))
    out = {} if out is None else out
    out["gpu"] = torch.cuda.get_device_name(0)
    for part in parts or list(CUDA_PARTS):  # in the order given
        if part == "saie":
            out["saie_vs_sft"] = _saie_part(s, root, tokenizer_dir)
        else:
            _shape_part(s, part, root, tokenizer_dir, out, on_result)
        _free_gpu()
        on_result()
    return out
