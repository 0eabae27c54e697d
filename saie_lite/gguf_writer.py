"""Write a merged Hugging Face llama-family model as a GGUF file (f32, bf16, f16, q8_0 or
q4_0),
with the tokenizer and chat template, using the `gguf` package's writer and tensor-name map.

q4_0 is made by llama.cpp's own quantizer from an f16 file written here first: it
chooses the per-tensor types (the tied embedding/output stays at higher precision),
and on x86 with AVX2 llama.cpp repacks q4_0 weights at load for its fastest CPU kernels.

``write_lora_gguf`` writes a LoRA adapter alone in llama.cpp's adapter format, to be
applied at run time to a GGUF of the base model (the fast generation path refreshes it
after every update for the cost of a few megabytes).

Supported: ``LlamaForCausalLM`` (SmolLM2, Llama, TinyLlama, ...) and
``Qwen2ForCausalLM``. Other architectures are refused with the list of these.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from saie_lite.errors import UserError

SUPPORTED = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
QUANTS = ("f32", "bf16", "f16", "q8_0", "q4_0")
_FILE_TYPES = {"f32": "ALL_F32", "bf16": "MOSTLY_BF16", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}
# quantized by llama.cpp (llama-cpp-python) from an f16 file, not by the gguf package
LLAMA_QUANTS = {"q4_0": 2}  # LLAMA_FTYPE_MOSTLY_Q4_0


# safetensors dtype -> numpy dtype. bfloat16 has no numpy type: its 16 bits are the top
# half of a float32, so it is read as uint16 and widened exactly (see ``read_safetensors``).
_NUMPY = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a numpy array (bfloat16 widened to float32).

    The format is an 8-byte header length, a JSON header (dtype, shape, byte offsets per
    tensor) and the raw little-endian data. ``safetensors.numpy`` refuses bfloat16, which
    is what a model merged on a GPU or on a CPU with bf16 units is saved in.
    """
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        kind = info["dtype"]
        if kind not in _NUMPY:
            raise UserError(
                f"GGUF export: tensor {name} is {kind}; float32, float16 and bfloat16 "
                "weights are supported"
            )
        start, end = info["data_offsets"]
        data = np.frombuffer(
            raw,
            dtype=_NUMPY[kind],
            count=(end - start) // np.dtype(_NUMPY[kind]).itemsize,
            offset=base + start,
        )
        if kind == "BF16":
            data = (data.astype(np.uint32) << 16).view(np.float32)
        out[name] = data.reshape(info["shape"])
    return out


def bf16_bits(data: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounded to nearest even as torch and the gguf
    package round; NaN stays NaN. One vectorised pass: the gguf package's quantizer works
    row group by row group and costs the snapshot refresh a second on a 135M model."""
    u = np.ascontiguousarray(data, dtype=np.float32).view(np.uint32)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    # no overflow in uint32: the largest non-NaN pattern (-inf, 0xFF800000) gains 0x8000
    rounded = (u >> 16) & 1
    rounded += u
    rounded += 0x7FFF
    rounded >>= 16
    out = rounded.astype(np.uint16)
    if nan.any():
        out[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)  # quiet NaN, sign kept
    return out


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF stores rotary halves split (rotate_half); GGUF llama expects them interleaved
    per head. Reorders the rows of a q or k projection from one layout to the other."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def pre_tokenizer_name(config: dict, hint: str) -> str:
    """llama.cpp's name for the pre-tokenizer regex; 'default' when we cannot tell."""
    text = (
        f"{hint} {config.get('_name_or_path', '')} {config.get('_model_name_or_path', '')}".lower()
    )
    if "smollm" in text:
        return "smollm"
    if config.get("model_type") == "qwen2" or "qwen" in text:
        return "qwen2"
    if "llama-3" in text or "llama3" in text:
        return "llama-bpe"
    return "default"


def _tokenizer_fields(model_dir: Path, n_vocab: int = 0) -> dict:
    """The GGUF vocabulary; padded to the model's ``n_vocab`` rows where its embedding is
    larger than the tokenizer (Qwen2 pads 151,665 tokens to 151,936): llama.cpp refuses a
    file whose token list and embedding rows differ."""
    data = json.loads((model_dir / "tokenizer.json").read_text())
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise UserError("GGUF export supports byte-level BPE tokenizers (tokenizer.json type BPE)")
    vocab: dict[str, int] = dict(model["vocab"])
    types = {}
    for added in data.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
        types[added["id"]] = 3 if added.get("special") else 4  # control / user-defined
    size = max(max(vocab.values()) + 1, n_vocab)
    tokens = [f"[PAD{i}]" for i in range(size)]
    for tok, i in vocab.items():
        tokens[i] = tok
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    known = set(vocab.values())
    # 1 normal, 5 unused (a padding row no text maps to)
    kinds = [types.get(i, 1 if i in known else 5) for i in range(size)]
    return {"tokens": tokens, "types": kinds, "merges": merges}


def _arch(config: dict) -> str:
    archs = config.get("architectures") or ["?"]
    if archs[0] not in SUPPORTED:
        raise UserError(
            f"GGUF export supports {', '.join(SUPPORTED)}; this model is {archs[0]}: "
            "export --to hf and convert it with llama.cpp's converter"
        )
    return SUPPORTED[archs[0]]


def _tensor_namer(config: dict, arch: str, what: str):
    """``(hf_name, rows) -> (gguf_name, rows)``: the GGUF tensor name, and the rows of a
    llama q or k projection permuted to GGUF's rotary layout (``rows`` is the weight, or
    a LoRA B whose rows are the weight's output rows)."""
    import gguf

    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads", n_head)
    names = gguf.get_tensor_name_map(
        gguf.MODEL_ARCH.LLAMA if arch == "llama" else gguf.MODEL_ARCH.QWEN2,
        config["num_hidden_layers"],
    )

    def name(hf_name: str, rows: np.ndarray) -> tuple[str, np.ndarray]:
        if arch == "llama" and hf_name.endswith("self_attn.q_proj.weight"):
            rows = permute_qk(rows, n_head)
        elif arch == "llama" and hf_name.endswith("self_attn.k_proj.weight"):
            rows = permute_qk(rows, n_kv)
        new = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise UserError(f"GGUF {what}: no GGUF name for tensor {hf_name}")
        return new, rows

    return name


def _finish(w) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_lora_gguf(model_dir: Path, out: Path, factors: dict) -> Path:
    """A LoRA adapter as a llama.cpp adapter GGUF. ``factors`` maps each adapted base
    weight's Hugging Face name to ``(A, B)`` (float32, ``A``: rank x in, ``B``: out x
    rank) with the adapter's scaling already folded into ``B``; llama.cpp then adds
    ``B @ A`` times alpha / rank, so alpha is written as the rank."""
    import gguf

    config = json.loads((model_dir / "config.json").read_text())
    arch = _arch(config)
    name = _tensor_namer(config, arch, "adapter")
    w = gguf.GGUFWriter(str(out), arch)
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    ranks = {a.shape[0] for a, _ in factors.values()}
    if len(ranks) > 1:  # one alpha per file: llama.cpp scales every layer by alpha / rank
        raise UserError(f"GGUF adapter: layers of different LoRA ranks {sorted(ranks)}")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(ranks.pop() if ranks else 1))
    for hf_name, (a, b) in factors.items():
        new, b = name(hf_name, b)  # B's rows are the weight's: permuted as they are
        w.add_tensor(f"{new}.lora_a", np.ascontiguousarray(a, dtype=np.float32))
        w.add_tensor(f"{new}.lora_b", np.ascontiguousarray(b, dtype=np.float32))
    _finish(w)
    return out


def write_gguf(
    model_dir: Path,
    out: Path,
    quant: str = "f16",
    name: str = "",
    hint: str = "",
    weights: dict | None = None,
    layout: list | None = None,
) -> Path:
    """Convert the merged model in ``model_dir`` (safetensors + tokenizer) to ``out``.

    ``weights`` (name -> numpy array) replaces the directory's safetensors: the fast
    generation path writes a live learner's merged weights with the base model's
    config and tokenizer, without a merged copy on disk first. ``layout``, a list,
    receives (name, bytes) per tensor written, for ``rewrite_tensors``.
    """
    import gguf

    if quant not in QUANTS:
        raise UserError(f"--quant must be one of {', '.join(QUANTS)}, got {quant!r}")
    if quant in LLAMA_QUANTS:
        f16 = out.with_name(out.name + ".f16.tmp")
        try:
            write_gguf(model_dir, f16, "f16", name=name, hint=hint, weights=weights)
            return llama_quantize(f16, out, quant)
        finally:
            f16.unlink(missing_ok=True)
    config = json.loads((model_dir / "config.json").read_text())
    arch = _arch(config)
    n_layer = config["num_hidden_layers"]
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads", n_head)
    hidden = config["hidden_size"]
    head_dim = config.get("head_dim") or hidden // n_head
    rope = config.get("rope_parameters") or {}
    theta = config.get("rope_theta", rope.get("rope_theta", 10000.0))

    w = gguf.GGUFWriter(str(out), arch)
    w.add_name(name or config["architectures"][0])
    w.add_context_length(config.get("max_position_embeddings", 2048))
    w.add_embedding_length(hidden)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(theta))
    w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    w.add_vocab_size(config["vocab_size"])
    w.add_file_type(getattr(gguf.LlamaFileType, _FILE_TYPES[quant]))

    tok = _tokenizer_fields(model_dir, int(config.get("vocab_size", 0)))
    tcfg_path = model_dir / "tokenizer_config.json"
    tcfg = json.loads(tcfg_path.read_text()) if tcfg_path.is_file() else {}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre_tokenizer_name(config, hint))
    w.add_token_list(tok["tokens"])
    w.add_token_types(tok["types"])
    w.add_token_merges(tok["merges"])
    index = {t: i for i, t in enumerate(tok["tokens"])}
    for key, add in (
        ("bos_token", w.add_bos_token_id),
        ("eos_token", w.add_eos_token_id),
        ("pad_token", w.add_pad_token_id),
        ("unk_token", w.add_unk_token_id),
    ):
        value = tcfg.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str) and value in index:
            add(index[value])
    w.add_add_bos_token(False)
    template = tcfg.get("chat_template")
    jinja = model_dir / "chat_template.jinja"
    if template is None and jinja.is_file():
        template = jinja.read_text()
    if template:
        w.add_chat_template(template)

    if weights is None:
        weights = {}
        for f in sorted(model_dir.glob("*.safetensors")):
            weights.update(read_safetensors(f))
    for new, data, raw in gguf_tensors(config, arch, weights, quant):
        w.add_tensor(new, data, raw_dtype=raw)
        if layout is not None:
            layout.append((new, data.nbytes))
    _finish(w)
    return out


def gguf_tensors(config: dict, arch: str, weights: dict, quant: str):
    """``(GGUF name, array as written, raw type or None)`` per tensor, in file order.
    A weight may come as float32, or (``quant`` bf16) as bfloat16 bits (uint16)."""
    import gguf

    name = _tensor_namer(config, arch, "export")
    for hf_name, data in weights.items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        new, data = name(hf_name, data)
        if data.dtype == np.uint16 and quant == "bf16" and data.ndim > 1:
            yield new, np.ascontiguousarray(data), gguf.GGMLQuantizationType.BF16
            continue
        data = data.astype(np.float32, copy=False)
        if data.ndim == 1 or quant == "f32":
            # norms and biases stay float32. A whole f32 file is for speed, not size: on
            # an AVX2 CPU llama.cpp evaluates prompts ~1.6x faster from float32 weights
            # than from q8_0 (README, Benchmarks: "Why float32 weights").
            yield new, data, None
        elif quant == "bf16":
            # On a CPU with AVX512-BF16 llama.cpp's bf16 dot products read prompts ~1.6x
            # faster than f32 or q8_0 weights (docs/benchmarks.md); elsewhere they are
            # converted on the fly and lose: ``embedded-auto`` measures which.
            yield new, bf16_bits(data), gguf.GGMLQuantizationType.BF16
        elif quant == "q8_0" and data.shape[-1] % 32 == 0:
            q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            yield new, q, gguf.GGMLQuantizationType.Q8_0
        else:
            yield new, data.astype(np.float16), None


REWRITABLE = ("f32", "f16", "bf16", "q8_0")  # written here, not by llama.cpp's quantizer


def rewrite_tensors(
    path: Path, model_dir: Path, quant: str, weights: dict, layout: list[tuple[str, int]]
) -> bool:
    """Overwrite, in place, the tensor data of a GGUF that ``write_gguf`` wrote for the
    same model and ``quant`` (``layout``: the (name, bytes) it recorded), with
    ``weights``: the header (the vocabulary: about half a second to pack) is kept and no
    new file is made. The bytes come out as a fresh ``write_gguf`` would write them.
    False, with nothing written, when the file or the tensors do not match the layout;
    the caller then writes the file whole."""
    import gguf

    if quant not in REWRITABLE or not path.is_file():
        return False
    config = json.loads((model_dir / "config.json").read_text())
    tensors = list(gguf_tensors(config, _arch(config), weights, quant))
    if [(n, d.nbytes) for n, d, _ in tensors] != list(layout):
        return False
    align = gguf.GGUF_DEFAULT_ALIGNMENT  # each tensor's data is padded to it
    padded = [-(-d.nbytes // align) * align for _, d, _ in tensors]
    start = path.stat().st_size - sum(padded)
    if start <= 0 or start % align:
        return False
    with path.open("r+b") as f:
        f.seek(start)
        for (_, data, _), size in zip(tensors, padded):
            data.tofile(f)
            f.seek(size - data.nbytes, 1)  # the padding is zeros already
    return True


def llama_quantize(src: Path, out: Path, quant: str) -> Path:
    """``src`` (an f16 GGUF) quantized to ``quant`` by llama.cpp's ``llama_model_quantize``."""
    import ctypes
    import os

    try:
        import llama_cpp
        from llama_cpp._utils import suppress_stdout_stderr
    except ImportError:
        raise UserError(
            f"GGUF {quant} is quantized by llama.cpp: pip install 'saie-lite[llamacpp]', "
            "or use --quant q8_0"
        ) from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMA_QUANTS[quant]
    params.nthread = os.cpu_count() or 1
    with suppress_stdout_stderr(disable=False):  # it logs a line per tensor
        rc = llama_cpp.llama_model_quantize(
            str(src).encode(), str(out).encode(), ctypes.byref(params)
        )
    if rc != 0:
        out.unlink(missing_ok=True)
        raise UserError(f"llama.cpp could not quantize {src.name} to {quant} (code {rc})")
    return out


def check_gguf(path: Path) -> None:
    """Fail with one line if a GGUF file is truncated or corrupt (before llama.cpp loads it)."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
        size = path.stat().st_size
        end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    except Exception as e:  # the reader raises many kinds on a damaged file
        detail = (str(e).splitlines() or [type(e).__name__])[0][:80]
        raise UserError(
            f"partner model {path} is truncated or corrupt ({detail}): re-download or re-export it"
        ) from None
    if end > size:
        raise UserError(
            f"partner model {path} is truncated ({size} of {end} bytes): re-download or re-export it"
        )
