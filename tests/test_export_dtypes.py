"""Export works whatever precision the learner was merged in: float32, bfloat16 (a GPU, or
a CPU with bf16 units under `dtype: auto`) and float16. Each dtype is pinned here, so the
verdict is the same on every CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

from typer.testing import CliRunner  # noqa: E402

from saie_lite.cli import app  # noqa: E402
from saie_lite.gguf_writer import read_safetensors  # noqa: E402

runner = CliRunner()
DTYPES = ["float32", "bfloat16", "float16"]
SAFETENSORS_NAME = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


@pytest.fixture(scope="module", params=DTYPES)
def run_in(request, tiny_model_dir, tmp_path_factory):
    dtype = request.param
    run = tmp_path_factory.mktemp(f"export-{dtype}") / "run"
    r = runner.invoke(
        app,
        [
            "train", "--backend", "torch", "--model", str(tiny_model_dir),
            "--partner", "scripted", "--mode", "sft", "--max-steps", "1", "--limit", "4",
            "--live", "quiet", "--run-dir", str(run),
            "--set", f"learner.dtype={dtype}", "--set", "learner.max_new_tokens=8",
            "--set", "train.batch_size=2", "--set", "train.lr=0.05",
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    return dtype, run


def _header_dtypes(path) -> set[str]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def test_hf_then_gguf_from_each_dtype(run_in, tmp_path):
    dtype, run = run_in
    hf = tmp_path / "hf"
    r = runner.invoke(app, ["export", str(run), "--to", "hf", "--out", str(hf)])
    assert r.exit_code == 0, r.output
    (st,) = hf.glob("*.safetensors")
    assert _header_dtypes(st) == {SAFETENSORS_NAME[dtype]}  # merged in the learner's dtype
    merged = {k: v.astype(np.float32) for k, v in read_safetensors(st).items()}
    for quant, tol in (("f16", 2e-3), ("bf16", 8e-3), ("q8_0", 2e-2)):
        out = tmp_path / f"gguf-{quant}"
        r = runner.invoke(
            app, ["export", str(run), "--to", "gguf", "--quant", quant, "--out", str(out)]
        )
        assert r.exit_code == 0, r.output
        (path,) = out.glob("*.gguf")
        reader = gguf.GGUFReader(str(path))
        tensors = {t.name: t for t in reader.tensors}
        # a norm stays float32 in the file: it must equal the merged weight exactly
        norm = np.asarray(tensors["output_norm.weight"].data, dtype=np.float32)
        np.testing.assert_array_equal(norm, merged["model.norm.weight"])
        # a projection (not rotary-permuted) matches within the file type's precision
        w = tensors["blk.0.ffn_down.weight"]
        want = merged["model.layers.0.mlp.down_proj.weight"]
        if quant == "f16":
            got = np.asarray(w.data, dtype=np.float32).reshape(want.shape)
        else:
            got = gguf.quants.dequantize(w.data, w.tensor_type).reshape(want.shape)
        assert np.abs(got - want).max() <= tol * max(1.0, np.abs(want).max())


def test_mlx_from_each_dtype(run_in, tmp_path):
    pytest.importorskip("mlx_lm")
    dtype, run = run_in
    out = tmp_path / "mlx"
    r = runner.invoke(app, ["export", str(run), "--to", "mlx", "--out", str(out)])
    assert r.exit_code == 0, r.output
    hf = tmp_path / "hf"
    assert runner.invoke(app, ["export", str(run), "--to", "hf", "--out", str(hf)]).exit_code == 0
    import mlx.core as mx
    from mlx_lm import load
    from transformers import AutoModelForCausalLM

    model, tok = load(str(out))
    # The same weights in both exports: evaluated in float32 on both sides, the MLX
    # model's logits equal the merged HF model's (a mis-converted tensor would not).
    model.set_dtype(mx.float32)
    ids = tok.encode("What is 12 times 3?")
    got = np.array(model(mx.array([ids]))[0, -1])
    ref = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0, -1].numpy()
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_bf16_bits_round_as_the_gguf_package_does():
    from saie_lite.gguf_writer import bf16_bits

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 96)) * rng.choice([1e-30, 1e-3, 1.0, 1e3, 1e30], (64, 96))
    x = x.astype(np.float32)
    x[0, :6] = [np.inf, -np.inf, np.nan, -0.0, 0.0, 3.4e38]
    x.view(np.uint32)[0, 6] = 0xFFFFFFFF  # a negative NaN at the top of the range
    x.view(np.uint32)[0, 7] = 0x3F808000  # exactly halfway: rounds to even (down)
    x.view(np.uint32)[0, 8] = 0x3F818000  # exactly halfway: rounds to even (up)
    theirs = gguf.quants.quantize(x, gguf.GGMLQuantizationType.BF16).view(np.uint16)
    mine = bf16_bits(x)
    np.testing.assert_array_equal(mine, theirs.reshape(x.shape))
    assert mine[0, 7] == 0x3F80 and mine[0, 8] == 0x3F82
