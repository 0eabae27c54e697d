"""The MLX learner (mlx[cpu] on Linux): parity with torch on the same tiny model, resume."""

import pytest

mx = pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")
torch = pytest.importorskip("torch")

from safetensors.numpy import load_file  # noqa: E402

from saie_lite import config  # noqa: E402
from saie_lite.backends.mlx import MLXLearner  # noqa: E402
from saie_lite.backends.scripted import ScriptedPartner  # noqa: E402
from saie_lite.backends.torch_peft import TorchLearner  # noqa: E402
from saie_lite.protocols import TrainSequence  # noqa: E402
from saie_lite.registry import choose_learner  # noqa: E402
from saie_lite.store import Store  # noqa: E402
from saie_lite.tasks import gsm8k  # noqa: E402
from saie_lite.train import checkpoint  # noqa: E402
from saie_lite.train.loop import train  # noqa: E402

CTX = [
    {"role": "system", "content": "Solve it."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "It is 6.\n#### 6"},
    {"role": "user", "content": "A discussion partner replied:\nCheck the sum."},
]
SEQS = [
    TrainSequence(CTX, "2 + 3 = 5\n#### 5"),
    TrainSequence(CTX[:2], "5\n#### 5"),
    TrainSequence(CTX[:2], "The sum is five.\n#### 5"),
]


def cfg_for(model_dir, backend, **over):
    return config.build(
        overrides={
            "learner.backend": backend,
            "learner.model": str(model_dir),
            "learner.max_new_tokens": 6,
            "learner.max_seq_len": 512,
            "train.micro_batch_size": 2,
            "train.lr": 0.01,
            **over,
        }
    )


def test_first_step_loss_matches_torch_and_both_decrease(tiny_model_dir):
    t = TorchLearner(cfg_for(tiny_model_dir, "torch"))
    m = MLXLearner(cfg_for(tiny_model_dir, "mlx"))
    # Same tokenizer and template: identical token ids and loss masks.
    assert [m.encode(s) for s in SEQS] == [t.encode(s) for s in SEQS]
    lt = [t.train_step(SEQS).loss for _ in range(5)]
    lm = [m.train_step(SEQS).loss for _ in range(5)]
    # LoRA B starts at zero in both, so the first loss is the base model's in both.
    assert lm[0] == pytest.approx(lt[0], rel=1e-4)
    assert lt[-1] < lt[0] * 0.95 and lm[-1] < lm[0] * 0.95


def test_generation_and_adapter_shapes(tiny_model_dir):
    m = MLXLearner(cfg_for(tiny_model_dir, "mlx"))
    # transformers 5 stores rope_theta under rope_parameters; mlx-lm must still see it
    assert m.model.model.layers[0].self_attn.rope.base == 100000.0
    outs = m.generate([CTX, CTX[:2]], 6)
    assert len(outs) == 2 and all(isinstance(o, str) for o in outs)
    assert m.tokens_generated > 0
    names = [
        k for k, _ in __import__("mlx.utils").utils.tree_flatten(m.model.trainable_parameters())
    ]
    assert names and all("lora_a" in n or "lora_b" in n for n in names)


def test_qlora_trains_on_quantized_base(tiny_model_dir):
    import mlx.nn as nn

    m = MLXLearner(cfg_for(tiny_model_dir, "mlx", **{"learner.quantize": "4bit"}))
    assert any(isinstance(x, nn.QuantizedLinear) for _, x in m.model.named_modules())
    losses = [m.train_step(SEQS).loss for _ in range(4)]
    assert losses[-1] < losses[0]


def test_save_load_restores_optimizer_and_step(tiny_model_dir, tmp_path):
    a = MLXLearner(cfg_for(tiny_model_dir, "mlx"))
    a.train_step(SEQS)
    a.save(tmp_path)
    b = MLXLearner(cfg_for(tiny_model_dir, "mlx", **{"train.seed": 9}))
    b.load(tmp_path)
    assert b.step == 1
    # the next update is identical: same weights and same Adam moments
    la, lb = a.train_step(SEQS).loss, b.train_step(SEQS).loss
    assert la == pytest.approx(lb, rel=1e-6)


def run(cfg, run_dir, examples, stop=lambda: False):
    store = Store(run_dir / "saie.sqlite")
    try:
        return train(cfg, MLXLearner(cfg), ScriptedPartner(), examples, store, run_dir, stop=stop)
    finally:
        store.close()


def test_mlx_resume_matches_uninterrupted(tiny_model_dir, tmp_path):
    examples = gsm8k.load("bundled")[0][:8]
    over = {
        "learner.temperature": 0.8,
        "learner.lora_dropout": 0.1,
        "train.batch_size": 2,
        "train.save_every": 100,
        "method.warmup_fraction": 0.25,
    }
    full, part = tmp_path / "full", tmp_path / "part"
    full.mkdir(), part.mkdir()
    assert run(cfg_for(tiny_model_dir, "mlx", **over), full, examples)["step"] == 4
    checks = {"n": 0}

    def stop():
        checks["n"] += 1
        return checks["n"] == 6

    assert run(cfg_for(tiny_model_dir, "mlx", **over), part, examples, stop)["step"] == 2
    assert run(cfg_for(tiny_model_dir, "mlx", **over), part, examples)["step"] == 4
    wa = load_file(str(checkpoint.latest(full) / "adapters.safetensors"))
    wb = load_file(str(checkpoint.latest(part) / "adapters.safetensors"))
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        assert (wa[k] == wb[k]).all(), k


def test_auto_backend_choice():
    assert choose_learner("auto", "Darwin", "arm64")[0] == "mlx"
    assert choose_learner("auto", "Linux", "x86_64") == (
        "torch",
        "Linux/x86_64 is not Apple silicon",
    )
    assert choose_learner("mlx", "Linux", "x86_64") == ("mlx", "asked for")


def test_export_of_an_mlx_run(tiny_model_dir, tmp_path):
    """An MLX run exports fused to MLX (loads in mlx-lm) and merged to HF (loads in torch)."""
    from mlx_lm import load
    from transformers import AutoModelForCausalLM

    from saie_lite.export.formats import export

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = cfg_for(
        tiny_model_dir, "mlx", **{"train.batch_size": 2, "train.max_steps": 2, "train.lr": 0.05}
    )
    run(cfg, run_dir, gsm8k.load("bundled")[0][:6])
    from saie_lite import config as config_mod

    config_mod.save(cfg, run_dir / "config.yaml")
    learner = MLXLearner(cfg)
    learner.load_adapter(checkpoint.latest(run_dir))
    ids = learner.chat.prompt_ids(CTX)
    want = learner.model(mx.array([ids]))[0, -1]

    (mlx_dir,) = export(run_dir, "mlx", out=tmp_path / "mlx")
    fused, _ = load(str(mlx_dir))
    got = fused(mx.array([ids]))[0, -1]
    assert mx.allclose(got, want, atol=1e-4).item()

    (hf_dir,) = export(run_dir, "hf", out=tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].numpy()
    import numpy as np

    assert np.allclose(logits, np.array(want), atol=1e-3)
