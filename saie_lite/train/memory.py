"""A memory plan before anything loads: what a run will need against what is free.

``train``, ``ablate`` and ``eval`` add up, before any weights load: the learner's
weights (by dtype and 4-bit quantisation, counted on an empty "meta" copy of the model
built from its config.json), the LoRA parameters with their gradients and AdamW's two
float32 states, the activations of the largest planned micro-batch at the longest
sequence the data will form (the rows are tokenised first: the tokenizer loads without
weights), the learner's generation cache, the partner's GGUF file with its ``n_ctx`` KV
cache, and the libraries themselves. One line says it (``memory: about 3.1 GB needed,
21.8 GB free``); a plan that clearly does not fit stops the command with the settings
that would make it fit (``run.memory_check: error``), before anything loads.

The constants below were fitted to measured peaks (docs/memory.md has the table): an
estimate is meant to be within about a quarter of the real peak, enough to tell a run
that fits from one that cannot.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from saie_lite.config import Config
from saie_lite.errors import UserError

GB = 1e9
# Tests pretend this much memory is free (GB) on every pool, to reach the refusal
# without a machine that is short of memory.
FREE_ENV = "SAIE_LITE_FREE_MEMORY_GB"
DRY_RUN_ENV = "SAIE_LITE_DRY_RUN_PLAN"
# "Clearly exceeds": the estimate is good to about 25%, so only a plan this much over
# what is free is refused; between 1x and this it is said, and the run goes on.
REFUSE_ABOVE = 1.25

# Resident memory of the libraries themselves (Python, torch, transformers, peft,
# llama.cpp), measured after import on a CPU-only machine; CUDA's host libraries and
# its context on the GPU come on top when the learner is on a GPU.
RUNTIME_HOST = 0.55 * GB
RUNTIME_CUDA_HOST = 1.5 * GB
RUNTIME_CUDA_DEVICE = 0.5 * GB
# Activations kept for the backward pass, per token and decoder layer, in elements of
# the activation dtype: about this many hidden-size vectors and MLP-width vectors
# (norm inputs and outputs, q/k/v, rotary copies, attention output, gate/up/act/product,
# LoRA's float32 copies of its inputs).
ACT_HIDDEN = 10
ACT_MLP = 4
# Attention scores kept per head and token pair where attention materialises them
# (eager attention; sdpa on a CPU with a mask): scores and probabilities.
ACT_SCORES = 2
# Float32 logits over the vocabulary for target tokens: logits, log-softmax, gradient.
LOGIT_COPIES = 3
# What a training step takes beyond its saved activations (allocator caches, kernel
# scratch, the backward pass's gradients in flight), measured.
STEP_WORKSPACE = 0.15 * GB
# llama.cpp's compute buffers (logits of a 512-token batch and the graph's scratch).
LLAMA_SCRATCH_TOKENS = 512
# Bytes per weight of a GGUF of each type (a learner snapshot, an embedded partner built
# once); norms stay float32, a rounding error at these sizes.
GGUF_BYTES = {"f32": 4.0, "bf16": 2.0, "f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


@dataclass
class Shape:
    """What the arithmetic needs of a model, read from its config (no weights)."""

    n_params: int  # every parameter of the base model
    n_linear: int  # parameters in the linear layers LoRA and 4-bit quantisation touch
    n_lora: int  # LoRA parameters for the configured rank and targets
    n_layers: int
    hidden: int
    mlp: int
    heads: int
    kv_dim: int  # key/value width per layer (kv heads x head size)
    vocab: int
    stored_bytes: float = 4.0  # bytes per weight as stored (mlx loads them as stored)


@dataclass
class Lengths:
    """Token counts of the data as the learner's tokenizer sees them."""

    prompt: int  # longest opening chat (system + question) with the generation prompt
    target: int  # longest reference answer (the tokens that carry loss)
    plain: list[int] = field(default_factory=list)  # each example's plain sequence, in order


@dataclass
class PartnerFile:
    size: float  # bytes of the GGUF (or of the one that will be built)
    n_layers: int
    kv_dim: int
    vocab: int


@dataclass
class Facts:
    """Everything the plan reads from outside, gathered once: the pure arithmetic in
    ``plan`` can then try other settings without reading anything again."""

    backend: str  # torch | mlx
    device: str  # cpu | cuda | mps | mlx
    shape: Shape
    lengths: Lengths
    dtype_bytes: float  # frozen weights and activations
    quantized: bool
    sdpa: bool = True  # attention without materialised scores on a GPU
    partner: PartnerFile | None = None
    snapshot: str | None = None  # the fast path's GGUF type; None = answers from the learner


@dataclass
class Plan:
    """Parts held for the whole run, and passing ones (loading, a training step's
    activations, a generation's cache) of which only the largest is held at a time."""

    parts: dict[str, tuple[float, str]] = field(default_factory=dict)  # name: (bytes, pool)
    passing: set[str] = field(default_factory=set)

    def add(self, name: str, n: float, pool: str, passing: bool = False) -> None:
        self.parts[name] = (n, pool)
        if passing:
            self.passing.add(name)

    def need(self, pool: str) -> float:
        mine = {k: n for k, (n, p) in self.parts.items() if p == pool}
        held = sum(n for k, n in mine.items() if k not in self.passing)
        return held + max([n for k, n in mine.items() if k in self.passing], default=0.0)

    @property
    def pools(self) -> list[str]:
        return sorted({p for _, p in self.parts.values()}, key=["host", "device"].index)


# -- the arithmetic ---------------------------------------------------------------------


def lora_params(in_out: list[tuple[int, int]], r: int) -> int:
    """LoRA adds A (r x in) and B (out x r) beside every adapted linear layer."""
    return sum(r * (i + o) for i, o in in_out)


def longest_sequence(cfg: Config, mode: str, n: Lengths) -> int:
    """The longest training sequence the run will form, cut at ``max_seq_len``: the
    opening chat and the reference; in a discussion also the answer, each remark and,
    past the first turn, each revision (template tokens between turns: 16 a turn)."""
    lc, m = cfg.learner, cfg.method
    length = n.prompt + n.target + 16
    if mode != "sft":
        length += lc.max_new_tokens + 16
        length += m.turns * (cfg.partner.max_tokens + 16) + (m.turns - 1) * (lc.max_new_tokens + 16)
    return min(length, lc.max_seq_len)


def sequences_per_update(cfg: Config, mode: str) -> int:
    stances = {"sft": 0, "saie": 2}.get(mode, 1)
    per = cfg.train.batch_size * max(1, stances)
    n = per + (round(cfg.method.mix_plain * per) if stances else 0)
    if stances and cfg.method.critique_target:
        # method.critique_target: each remark of every turn also becomes up to
        # ceil(critique_weight) critique sequences (prompts.critique_copies); counted at
        # the discussion's width, which they never exceed (question + answer + remark)
        n += per * cfg.method.turns * math.ceil(cfg.method.critique_weight)
    return n


def passes(cfg: Config, f: Facts) -> list[tuple[int, int]]:
    """(rows, width) of the forward passes the run will make, as the learner splits
    each batch into micro-batches: plain batches (warm-up, sft) from the examples' own
    lengths, discussion batches at the longest sequence a discussion can form."""
    from saie_lite.chat_tokens import GPU_MICRO_BATCH_OVERHEAD, MICRO_BATCH_OVERHEAD, micro_batches
    from saie_lite.train.loop import schedule

    mb, n = cfg.train.micro_batch_size, f.lengths
    overhead = GPU_MICRO_BATCH_OVERHEAD if f.device == "cuda" else MICRO_BATCH_OVERHEAD
    out, limit = [], cfg.learner.max_seq_len
    for batch in schedule(len(n.plain), cfg):
        if batch.phase == "warmup" or not cfg.method.stances:
            lengths = sorted(min(n.plain[i], limit) for i in batch.indices)
        else:
            width = longest_sequence(cfg, cfg.method.mode, n)
            lengths = [width] * sequences_per_update(cfg, cfg.method.mode)
        for a, b in micro_batches(lengths, mb, overhead):
            out.append((b - a, max(lengths[a:b])))
    return sorted(set(out)) or [(1, 1)]


def kv_bytes(tokens: int, layers: int, kv_dim: int, element: float) -> float:
    return 2.0 * tokens * layers * kv_dim * element  # keys and values


def activation_bytes(cfg: Config, f: Facts, rows: int, length: int) -> float:
    """Saved activations of one micro-batch of ``rows`` sequences of ``length``
    tokens, plus its float32 logits over the target tokens."""
    s, b = f.shape, (2.0 if f.quantized else f.dtype_bytes)
    tokens = rows * length
    layer = tokens * (ACT_HIDDEN * s.hidden + ACT_MLP * s.mlp) * b
    if not (f.sdpa and f.device in ("cuda", "mlx")):
        layer += rows * s.heads * length * length * ACT_SCORES * b
    if cfg.learner.gradient_checkpointing:
        # each layer keeps only its input; one layer at a time is recomputed in full
        kept = s.n_layers * tokens * s.hidden * b + layer
    else:
        kept = s.n_layers * layer
    targets = rows * min(length, f.lengths.target + 1)
    return kept + targets * s.vocab * 4.0 * LOGIT_COPIES


def generation_bytes(f: Facts, batch: int, prompt: int, new: int) -> float:
    """The KV cache of a batch decoded together, and its float32 next-token logits."""
    s = f.shape
    element = 2.0 if f.quantized else f.dtype_bytes
    return kv_bytes(batch * (prompt + new), s.n_layers, s.kv_dim, element) + (
        batch * s.vocab * 4.0 * LOGIT_COPIES
    )


def weight_bytes(f: Facts) -> float:
    s = f.shape
    if f.quantized:
        # nf4 with double quantisation: about 4.13 bits a weight in the linear layers;
        # prepare_model_for_kbit_training casts every other weight to float32
        return s.n_linear * 4.13 / 8 + (s.n_params - s.n_linear) * 4.0
    if f.backend == "mlx":
        return s.n_params * s.stored_bytes  # mlx loads the weights as stored
    return s.n_params * f.dtype_bytes


def plan(cfg: Config, f: Facts, purpose: str) -> Plan:
    """What the run needs, by part and pool ("host": RAM; "device": the GPU's memory,
    where the learner is on CUDA). Pure arithmetic on ``cfg`` and ``f``."""
    p = Plan()
    learner = "device" if f.device == "cuda" else "host"
    if f.device == "cuda":
        p.add("libraries", RUNTIME_CUDA_HOST, "host")
        p.add("CUDA context", RUNTIME_CUDA_DEVICE, "device")
    else:
        p.add("libraries", RUNTIME_HOST, "host")
    p.add("weights", weight_bytes(f), learner)
    if f.backend == "torch" and not f.quantized and f.dtype_bytes < f.shape.stored_bytes:
        # weights stored wider than they run: loading holds both copies for a moment
        p.add("loading", f.shape.n_params * f.shape.stored_bytes, learner, passing=True)
    lc, n = cfg.learner, f.lengths
    if purpose == "eval":
        e = cfg.eval
        batch = e.batch_size * (e.k if e.strategy == "self-consistency" else 1)
        gen = generation_bytes(f, batch, n.prompt, e.max_new_tokens)
        p.add("generation", gen, learner, passing=True)
        return p
    mode = cfg.method.mode
    # LoRA weights, their gradients and AdamW's two states: four float32 copies
    p.add("LoRA+AdamW", f.shape.n_lora * 16.0, learner)
    length = longest_sequence(cfg, mode, n)
    act = max(activation_bytes(cfg, f, r, w) for r, w in passes(cfg, f))
    p.add("activations", STEP_WORKSPACE + act, learner, passing=True)
    if mode != "sft":
        bs = cfg.train.batch_size
        revise = cfg.method.turns > 1 or cfg.method.target == "reference_or_revision"
        gen = generation_bytes(f, bs, n.prompt, lc.max_new_tokens)
        if revise:
            many = bs * max(1, len(cfg.method.stances))
            gen = max(gen, generation_bytes(f, many, length, lc.max_new_tokens))
        p.add("generation", gen, learner, passing=True)
        if f.partner is not None:
            pc, g = cfg.partner, f.partner
            where = "device" if f.device == "cuda" and pc.n_gpu_layers != 0 else "host"
            cells = pc.n_ctx * (1 + (min(pc.parallel, 4) if pc.parallel > 1 else 0))
            scratch = LLAMA_SCRATCH_TOKENS * g.vocab * 4.0
            p.add("partner", g.size + kv_bytes(cells, g.n_layers, g.kv_dim, 2.0) + scratch, where)
        if f.snapshot is not None:
            # The fast path's llama.cpp copy of the learner: its GGUF, the KV cache of the
            # answers decoded together (fast_generation.SnapshotAnswers) and scratch; and,
            # while a snapshot is written, the float32 weights it is written from.
            s = f.shape
            cells = 4 * (lc.max_seq_len + lc.max_new_tokens)
            held = s.n_params * GGUF_BYTES[f.snapshot]
            held += (
                kv_bytes(cells, s.n_layers, s.kv_dim, 2.0) + LLAMA_SCRATCH_TOKENS * s.vocab * 4.0
            )
            gpu = f.device == "cuda" and lc.snapshot_gpu_layers != 0
            p.add("snapshot", held, "device" if gpu else "host")
            p.add("snapshot writing", s.n_params * 4.0, "host", passing=True)
    return p


# -- the settings that would make it fit -------------------------------------------------


def remedies(cfg: Config, f: Facts, purpose: str, free: dict[str, float]) -> list[str]:
    """Up to three ``--set`` changes, those that save the most first; the ones that
    alone make the plan fit are named before the others."""
    lc, tc = cfg.learner, cfg.train
    tries: list[tuple[str, Config]] = []

    def alt(key: str, value) -> None:
        c = copy.deepcopy(cfg)
        section, name = key.split(".")
        setattr(getattr(c, section), name, value)
        shown = str(value).lower() if isinstance(value, bool) else value
        tries.append((f"{key}={shown}", c))

    if f.device == "cuda" and not f.quantized:
        alt("learner.quantize", "4bit")
    if purpose == "eval":
        if cfg.eval.batch_size > 1:
            alt("eval.batch_size", max(1, cfg.eval.batch_size // 4))
    else:
        if tc.micro_batch_size > 1:
            alt("train.micro_batch_size", max(1, tc.micro_batch_size // 4))
        if not lc.gradient_checkpointing and lc.backend == "torch":
            alt("learner.gradient_checkpointing", True)
        if lc.max_seq_len > 256:
            alt("learner.max_seq_len", max(256, lc.max_seq_len // 2))
        if cfg.method.stances and cfg.partner.backend == "llama_cpp" and cfg.partner.n_ctx > 1024:
            alt("partner.n_ctx", max(1024, cfg.partner.n_ctx // 2))
    now = plan(cfg, f, purpose)
    scored = []
    for text, c in tries:
        f2 = f
        if text == "learner.quantize=4bit":
            f2 = copy.copy(f)
            f2.quantized = True
        after = plan(c, f2, purpose)
        saved = sum(now.need(pool) - after.need(pool) for pool in now.pools)
        fits = all(after.need(pool) <= free.get(pool, float("inf")) for pool in after.pools)
        if saved > 0:
            scored.append((not fits, -saved, text))
    return [text for *_, text in sorted(scored)[:3]]


# -- reading the facts -------------------------------------------------------------------


class Unknown(Exception):
    """The plan cannot be made without loading more than a config and a tokenizer."""


def _model_dir(name: str) -> str:
    """Where the learner's config.json and tokenizer are, without any download: the
    embedded model's float cache (or its GGUF, read for metadata only), a local
    directory, or a hub id already in the local cache."""
    from saie_lite.paths import EMBEDDED, embedded_learner_dir

    if name == EMBEDDED:
        cached = embedded_learner_dir()
        return str(cached) if (cached / "config.json").is_file() else EMBEDDED
    p = Path(name).expanduser()
    if p.is_dir():
        return str(p)
    if name.startswith((".", "/", "~")):
        raise Unknown("")  # the loader's own line says it is missing, a moment later
    return name  # a hub id: read with local_files_only below


@functools.lru_cache(maxsize=8)
def _config_and_tokenizer(where: str, trust: bool):
    """(config, tokenizer): from a directory or the hub cache, or from the embedded GGUF
    (its metadata and tokenizer, a few seconds; no weights). Kept for the process, so
    that an ablation or a test suite reads each once."""
    import contextlib
    import io

    from saie_lite.paths import EMBEDDED

    try:
        from transformers import AutoConfig, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise Unknown("transformers is not installed") from None
    hf_logging.set_verbosity_error()
    kw: dict = {"trust_remote_code": trust}
    meta = None
    if where == EMBEDDED:
        from saie_lite.paths import embedded_gguf, embedded_learner_dir

        # Reading the GGUF's metadata and tokenizer takes transformers' GGUF parser 10-40
        # s, at every dry run; they are kept beside the model cache after the first read.
        meta = embedded_learner_dir().with_name(embedded_learner_dir().name + "-meta")
        if (meta / "config.json").is_file() and (meta / "tokenizer_config.json").is_file():
            where, meta = str(meta), None
        else:
            try:
                gguf = embedded_gguf()
            except UserError as e:
                raise Unknown(str(e)) from None
            where, kw = str(gguf.parent), {"gguf_file": gguf.name}
    elif not Path(where).is_dir():
        kw["local_files_only"] = True  # never a download just for an estimate
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # the GGUF reader's progress bar
            config = AutoConfig.from_pretrained(where, **kw)
            tokenizer = AutoTokenizer.from_pretrained(where, **kw)
    except Exception as e:  # noqa: BLE001 - any failure only means "no estimate"
        if kw.get("local_files_only"):
            raise Unknown("its config is not in the local hub cache") from None
        raise Unknown(f"its config or tokenizer cannot be read ({type(e).__name__})") from None
    if meta is not None:
        _keep_meta(meta, config, tokenizer)
    return config, tokenizer


def _keep_meta(meta: Path, config, tokenizer) -> None:
    """Save the embedded model's config and tokenizer (a few MB, no weights) for the next
    process; published whole by a rename, and skipped where the cache cannot be written."""
    import shutil
    import tempfile

    try:
        meta.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=meta.parent, prefix=".meta-"))
    except OSError:
        return
    try:
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(meta)  # another process may have published it first: fine
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


@functools.lru_cache(maxsize=16)
def _shape(where: str, trust: bool, lora_r: int, lora_targets: str) -> Shape:
    """:func:`shape_of`, kept for the process (an ablation plans each system)."""
    config, _ = _config_and_tokenizer(where, trust)
    cfg = Config()
    cfg.learner.trust_remote_code, cfg.learner.lora_r = trust, lora_r
    cfg.learner.lora_targets = lora_targets
    return shape_of(config, cfg)


def shape_of(config, cfg: Config) -> Shape:
    """Parameter counts from an empty copy of the model on the meta device (no memory,
    no weights), so every architecture transformers knows is counted exactly."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    config = copy.deepcopy(config)
    if getattr(config, "quantization_config", None) is not None:
        # a pre-quantized hub model: counted as its float shape
        config.quantization_config = None
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else None
    with torch.device("meta"):
        model = (auto or AutoModelForCausalLM).from_config(
            config, trust_remote_code=cfg.learner.trust_remote_code
        )
    targets = cfg.learner.lora_targets
    names = None if targets == "all-linear" else {t.strip() for t in targets.split(",")}
    head = model.get_output_embeddings()
    linear, adapted = 0, []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and mod is not head:
            linear += mod.weight.numel()
            if names is None or name.rsplit(".", 1)[-1] in names:
                adapted.append((mod.in_features, mod.out_features))
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = _first(text, "hidden_size", "d_model", "n_embd")
    heads = _first(text, "num_attention_heads", "num_heads", "n_head")
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    kv_heads = _first(text, "num_key_value_heads", "num_heads", "num_attention_heads")
    layers = _first(text, "num_hidden_layers", "num_layers", "n_layer")
    if getattr(config, "is_encoder_decoder", False):
        layers += getattr(text, "num_decoder_layers", layers) or 0
    stored = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", "float32"))
    return Shape(
        n_params=sum(t.numel() for t in model.parameters()),
        n_linear=linear,
        n_lora=lora_params(adapted, cfg.learner.lora_r),
        n_layers=layers,
        hidden=hidden,
        mlp=_first(text, "intermediate_size", "d_ff", "n_inner") or 4 * hidden,
        heads=heads,
        kv_dim=kv_heads * head_dim,
        vocab=_first(text, "vocab_size"),
        stored_bytes=2.0 if ("bfloat16" in stored or "float16" in stored) else 4.0,
    )


def _first(config, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise Unknown(f"its config has no {names[0]}")


def lengths_of(tok, cfg: Config, examples) -> Lengths:
    """The longest opening chat and reference, tokenised as the learner will."""
    from saie_lite.chat_tokens import IGNORE, ChatTokens
    from saie_lite.tasks import example_chat, get_task
    from saie_lite.train.prompts import plain_sequence

    tok = copy.copy(tok)  # ChatTokens may set a template or pad token: not on the cached one
    chat, task = ChatTokens(tok), get_task(cfg.data)
    out = Lengths(1, 1)
    for ex in examples:
        base = example_chat(task, ex)
        ids, labels = chat.encode(plain_sequence(base, ex))
        out.prompt = max(out.prompt, len(chat.prompt_ids(base)))
        out.target = max(out.target, sum(1 for t in labels if t != IGNORE))
        out.plain.append(len(ids))
    return out


@functools.lru_cache(maxsize=8)
def _gguf_facts(path: str, build_bytes: float | None) -> PartnerFile:
    """Layers, KV width and vocabulary from a GGUF's metadata (its tensors unread)."""
    from saie_lite.gguf_header import read_header

    try:
        header = read_header(path)
    except (OSError, ValueError) as e:
        raise Unknown(f"the partner GGUF's header cannot be read ({e})") from None

    def value(suffix: str) -> int | None:
        for key, v in header.fields.items():
            if key.endswith(suffix) and isinstance(v, int) and not isinstance(v, bool):
                return int(v)
        return None

    layers, width = value(".block_count"), value(".embedding_length")
    heads = value(".attention.head_count")
    kv = value(".attention.head_count_kv") or heads
    vocab = value(".vocab_size")
    if vocab is None:
        tokens = header.fields.get("tokenizer.ggml.tokens")
        vocab = tokens if isinstance(tokens, int) else 32000
    if not (layers and width and heads):
        raise Unknown("the partner GGUF lacks its architecture metadata")
    if build_bytes is not None:  # not built yet: weights x the bytes its type takes
        size = header.tensor_elements * build_bytes
    else:
        size = float(Path(path).stat().st_size)
    return PartnerFile(size, layers, kv * (width // heads), vocab)


def partner_facts(cfg: Config) -> PartnerFile | None:
    pc = cfg.partner
    if pc.backend != "llama_cpp" or not cfg.method.stances:
        return None  # a server's memory is not this machine's; 'self' is the learner
    from saie_lite.paths import EMBEDDED, embedded_gguf

    builds = {f"embedded-{q}": GGUF_BYTES[q] for q in ("q8_0", "q4_0", "f32", "bf16")}
    try:
        model = pc.model
        if model == "embedded-auto":  # the cached choice, else the largest candidate (f32)
            from saie_lite.backends.partner_weights import SHIPPED, planned

            quant = planned(pc.n_threads)
            model = EMBEDDED if quant == SHIPPED else f"embedded-{quant}"
        if model == EMBEDDED or model in builds:
            from saie_lite.paths import embedded_learner_dir

            quant = model.removeprefix("embedded-")
            built = embedded_learner_dir().parent / f"smollm2-135m-instruct-{quant}.gguf"
            if model in builds and built.is_file():
                return _gguf_facts(str(built), None)
            return _gguf_facts(str(embedded_gguf()), builds.get(model))
    except UserError as e:
        raise Unknown(str(e)) from None
    p = Path(pc.model).expanduser()
    if not p.is_file():
        raise Unknown(f"partner file {pc.model} not found")
    return _gguf_facts(str(p), None)


def snapshot_facts(cfg: Config) -> str | None:
    """The GGUF type of the learner's llama.cpp snapshot, or None without one. ``auto``
    is read without measuring: the override or the cached choice, else f32 (the largest),
    so the plan never comes out short."""
    lc = cfg.learner
    if lc.snapshot_every <= 0 or lc.generate_on in ("local", "vllm") or not cfg.method.stances:
        return None  # no snapshot, or no answers to make (sft)
    if lc.snapshot_quant != "auto":
        return lc.snapshot_quant
    from saie_lite.backends.partner_weights import planned_snapshot

    return planned_snapshot(cfg.partner.n_threads)


def gather(cfg: Config, examples, backend: str) -> Facts:
    lc = cfg.learner
    where = _model_dir(lc.model)
    config, tok = _config_and_tokenizer(where, lc.trust_remote_code)
    shape = _shape(where, lc.trust_remote_code, lc.lora_r, lc.lora_targets)
    lengths = lengths_of(tok, cfg, examples)
    if backend == "mlx":
        stored = shape.stored_bytes
        dtype = {"bfloat16": 2.0, "float16": 2.0, "float32": 4.0}.get(lc.dtype, stored)
        bits = (getattr(config, "quantization", None) or {}).get("bits")
        if bits:  # an mlx-community quantized model: its linear layers as stored
            shape = dataclasses.replace(shape, stored_bytes=bits / 8)  # not the cached one
        return Facts("mlx", "mlx", shape, lengths, dtype, False, partner=partner_facts(cfg))
    import importlib.util

    from saie_lite.backends.torch_setup import resolve_device, resolve_dtype

    device = resolve_device(lc.device)
    quantized = lc.quantize == "4bit" or (
        lc.quantize == "auto"
        and device == "cuda"
        and importlib.util.find_spec("bitsandbytes") is not None
    )
    element = resolve_dtype(lc.dtype, device).itemsize
    eager = getattr(config, "_attn_implementation", None) == "eager"
    return Facts(
        "torch",
        device,
        shape,
        lengths,
        float(element),
        quantized,
        sdpa=not eager,
        partner=partner_facts(cfg),
        snapshot=snapshot_facts(cfg),
    )


# -- what is free -----------------------------------------------------------------------


def free_memory(device: str) -> dict[str, float]:
    """Bytes free by pool; a pool that cannot be read is left out (no check on it)."""
    forced = os.environ.get(FREE_ENV, "").strip()
    if forced:
        try:
            n = float(forced) * GB
        except ValueError:
            raise UserError(f"{FREE_ENV} must be a number of GB, got {forced!r}") from None
        return {"host": n, "device": n}
    out: dict[str, float] = {}
    host = _host_available()
    if host is not None:
        out["host"] = host
    if device == "cuda":
        import torch

        out["device"] = float(torch.cuda.mem_get_info()[0])
    elif device in ("mps", "mlx"):
        # unified memory: the GPU's share is Apple's recommended working set
        limit = _apple_working_set(device)
        if limit is not None:
            out["host"] = min(out.get("host", limit), limit)
    return out


def _host_available() -> float | None:
    try:
        import psutil

        return float(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _apple_working_set(device: str) -> float | None:
    try:
        if device == "mlx":
            import mlx.core as mx

            info = mx.device_info() if hasattr(mx, "device_info") else mx.metal.device_info()
            return float(info["max_recommended_working_set_size"])
        import torch

        return float(torch.mps.recommended_max_memory())
    except Exception:  # noqa: BLE001 - no Metal (mlx[cpu] on Linux): RAM alone
        return None


# -- the line ----------------------------------------------------------------------------


def _gb(n: float) -> str:
    return f"{n / GB:.1f} GB"


def summary_line(p: Plan, free: dict[str, float]) -> str:
    """``memory: about 3.1 GB needed, 21.8 GB free (weights 0.5, activations 1.2, ...)``"""
    detail = ", ".join(f"{name} {n / GB:.1f}" for name, (n, _) in p.parts.items())
    if p.pools == ["host"]:
        have = f"{_gb(free['host'])} free" if "host" in free else "free memory unknown"
        return f"memory: about {_gb(p.need('host'))} needed, {have} ({detail} GB)"
    said = []
    for pool, what in (("device", "GPU memory"), ("host", "RAM")):
        have = f"{_gb(free[pool])} free" if pool in free else "free unknown"
        said.append(f"{_gb(p.need(pool))} of {what} ({have})")
    return f"memory: about {' and '.join(said)} needed ({detail} GB)"


def check_memory(
    cfg: Config,
    examples,
    note,
    purpose: str = "train",
    backends: tuple[str, str] | None = None,
    run_dir: Path | None = None,
    dry_run: bool = False,
) -> Plan | None:
    """Say the plan (one line through ``note``) and stop the command, before anything
    loads, when it clearly does not fit and ``run.memory_check`` is ``error``.

    ``purpose``: train | eval | ablate (trained in its heaviest mode). ``backends``: the
    real (learner, partner) backends of a dry run, whose config already says scripted;
    a dry run says the plan and whether it fits, and is never stopped by it.
    ``run_dir``: an evaluated run, whose own learner settings are the ones loaded.
    """
    if cfg.run.memory_check == "off":
        return None
    if dry_run and os.environ.get(DRY_RUN_ENV, "1") == "0":
        # the test suite's switch: its hundreds of dry runs would each import
        # transformers to plan for a model they never load (tests of the plan set it)
        return None
    c = copy.deepcopy(cfg)
    if backends is not None:
        c.learner.backend, c.partner.backend = backends
    if run_dir is not None:
        from saie_lite.config import apply, load_yaml

        # as the evaluation loads it: the run's learner, with a precision asked for now
        asked = {f"learner.{k}": getattr(c.learner, k) for k in ("dtype", "quantize")}
        saved = load_yaml(Path(run_dir) / "config.yaml").get("learner")
        apply(c, {"learner": saved if isinstance(saved, dict) else {}})
        apply(c, {k: v for k, v in asked.items() if v != "auto"})
    if purpose == "ablate":
        systems = cfg.ablate.system_list
        c.method.mode = (
            "saie"
            if "saie" in systems
            else next((s for s in systems if s.startswith("saie")), "sft")
        )
        purpose = "train"
    if c.learner.backend == "auto":
        from saie_lite.registry import choose_learner

        c.learner.backend = choose_learner("auto")[0]
    if c.learner.backend not in ("torch", "mlx") or not examples:
        return None  # a scripted or registered learner: nothing known to plan
    try:
        facts = gather(c, examples, c.learner.backend)
    except Unknown as e:
        if str(e):
            note(f"memory: estimate unknown for {c.learner.model} ({e}); not checked")
        return None
    p = plan(c, facts, purpose)
    free = free_memory(facts.device)
    note(summary_line(p, free))
    over = [pool for pool in p.pools if pool in free and p.need(pool) > free[pool]]
    if not over:
        return p
    fixes = remedies(c, facts, purpose, free)
    fix = (
        f"to fit, try --set {', --set '.join(fixes)}"
        if fixes
        else "free memory or use a smaller model"
    )
    clear = any(p.need(pool) > REFUSE_ABOVE * free[pool] for pool in over)
    where = " and ".join("GPU memory" if pool == "device" else "RAM" for pool in over)
    if clear and cfg.run.memory_check == "error" and not dry_run:
        raise UserError(
            f"memory: this run needs about {' + '.join(_gb(p.need(x)) for x in over)} of "
            f"{where} but {' + '.join(_gb(free[x]) for x in over)} is free: {fix} "
            "(or --set run.memory_check=warn to try anyway); nothing was loaded"
        )
    verdict = "would not fit" if clear else "is tight"
    stops = (
        " (a real run stops here)" if dry_run and clear and cfg.run.memory_check == "error" else ""
    )
    note(f"memory: {verdict} in {where}{stops}: {fix}")
    return p


# -- out of memory while training --------------------------------------------------------


def out_of_memory(e: BaseException) -> bool:
    """A CUDA/MPS (or CPU allocator, or MLX Metal) out-of-memory error."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(e, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(e)
    return isinstance(e, (RuntimeError, MemoryError)) and (
        isinstance(e, MemoryError)
        or "out of memory" in text.lower()
        or "can't allocate memory" in text
        or "metal::malloc" in text
    )


def out_of_memory_line(e: BaseException, run_dir: Path | None) -> str | None:
    """The one line for an out-of-memory error during training, or None for another
    error. The loop has checkpointed the updates made so far."""
    if not out_of_memory(e):
        return None
    from saie_lite.train.checkpoint import latest

    ckpt = latest(run_dir) if run_dir is not None and Path(run_dir).is_dir() else None
    kept = f"checkpoint kept ({ckpt.name})" if ckpt is not None else "no update was made yet"
    again = (
        f"saie-lite train --resume {run_dir} --set train.micro_batch_size=1"
        if ckpt is not None
        else "run it again with --set train.micro_batch_size=1"
    )
    return (
        f"out of memory during training; {kept}: {again} (or --set "
        "learner.gradient_checkpointing=true; a smaller learner.max_seq_len or "
        "learner.quantize=4bit on CUDA needs a new run)"
    )
