"""Seq2seq learners (a tiny random T5) and the real llama_cpp.server as partner."""

import pytest

pytest.importorskip("torch")

from saie_lite import config  # noqa: E402
from saie_lite.backends.openai_http import OpenAIPartner  # noqa: E402
from saie_lite.backends.scripted import ScriptedLearner, ScriptedPartner  # noqa: E402
from saie_lite.backends.torch_peft import TorchLearner  # noqa: E402
from saie_lite.errors import PartnerError  # noqa: E402
from saie_lite.protocols import TrainSequence  # noqa: E402
from saie_lite.store import Store  # noqa: E402
from saie_lite.tasks import gsm8k  # noqa: E402
from saie_lite.train import checkpoint  # noqa: E402
from saie_lite.train.loop import train  # noqa: E402

CTX = [
    {"role": "system", "content": "Solve it."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "It is 6."},
    {"role": "user", "content": "Check it."},
]


def t5_cfg(model_dir, **over):
    return config.build(
        overrides={
            "learner.backend": "torch",
            "learner.model": str(model_dir),
            "learner.max_new_tokens": 8,
            "learner.max_seq_len": 512,
            "train.lr": 0.01,
            "train.micro_batch_size": 2,
            **over,
        }
    )


def test_t5_learner_masks_trains_and_generates(tiny_t5_dir):
    learner = TorchLearner(t5_cfg(tiny_t5_dir))
    assert learner.seq2seq
    enc, labels = learner.encode(TrainSequence(CTX, "2 + 3 = 5\n#### 5"))
    # the whole discussion is encoder input; the labels are exactly the target + eos
    assert "Check it." in learner.tok.decode(enc)
    assert learner.tok.decode(labels, skip_special_tokens=True).strip() == "2 + 3 = 5\n#### 5"
    assert labels[-1] == learner.tok.eos_token_id
    seqs = [TrainSequence(CTX, "2 + 3 = 5\n#### 5"), TrainSequence(CTX[:2], "#### 5")]
    losses = [learner.train_step(seqs).loss for _ in range(6)]
    assert losses[-1] < losses[0]
    outs = learner.generate([CTX, CTX[:2]], 8)
    assert len(outs) == 2 and learner.tokens_generated > 0
    # each batched reply is the trained model's own greedy reply to that chat alone
    import torch

    for chat, got in zip([CTX, CTX[:2]], outs):
        ids = torch.tensor([learner.chat.prompt_ids(chat)])
        with torch.no_grad():
            ref = learner.model.generate(input_ids=ids, max_new_tokens=8, do_sample=False)
        assert got == learner.tok.decode(ref[0], skip_special_tokens=True).strip()


def test_t5_with_scripted_partner_through_the_loop(tiny_t5_dir, tmp_path):
    cfg = t5_cfg(tiny_t5_dir, **{"train.batch_size": 2, "train.max_steps": 2})
    store = Store(tmp_path / "s.sqlite")
    s = train(
        cfg, TorchLearner(cfg), ScriptedPartner(), gsm8k.load("bundled")[0][:6], store, tmp_path
    )
    store.close()
    assert s["step"] == 2 and (checkpoint.latest(tmp_path) / "adapter_model.safetensors").is_file()


@pytest.mark.real
def test_paper_recipe_tiny_t5_with_real_local_server(tiny_t5_dir, llama_server, tmp_path):
    """recipes/paper-gsm8k.yaml as published, pointed at a tiny T5 and a local server."""
    from typer.testing import CliRunner

    from saie_lite.cli import app

    run = tmp_path / "run"
    r = CliRunner().invoke(
        app,
        [
            "train",
            "--recipe",
            "recipes/paper-gsm8k.yaml",
            "--model",
            str(tiny_t5_dir),
            "--partner-url",
            llama_server.url,
            "--partner-model",
            "smollm2",
            "--data",
            "bundled",
            "--limit",
            "6",
            "--max-steps",
            "2",
            "--live",
            "plain",
            "--run-dir",
            str(run),
            "--set",
            "partner.api_key_env=",
            "--set",
            "learner.max_new_tokens=8",
            "--set",
            "partner.max_tokens=16",
            "--set",
            "train.batch_size=2",
            "--set",
            "learner.lora_targets=all-linear",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "finished: 2 updates" in r.output
    store = Store(run / "saie.sqlite")
    remarks = [t for (t,) in store.db.execute("SELECT text FROM turns WHERE role='partner'")]
    store.close()
    assert len(remarks) == 4 and all(t.strip() for t in remarks)


@pytest.mark.real
def test_real_server_killed_mid_run_then_resumed(llama_server, tmp_path):
    cfg = config.build(
        overrides={
            "learner.backend": "scripted",
            "partner.backend": "openai",
            "partner.url": llama_server.url,
            "partner.model": "smollm2",
            "partner.max_tokens": 12,
            "partner.retries": 1,
            "partner.backoff": 0.05,
            "partner.timeout": 30,
            "train.batch_size": 2,
            "train.save_every": 100,
            "method.warmup_fraction": 0.25,
        }
    )
    exs = gsm8k.load("bundled")[0][:8]

    class StopServerAfterTwo:
        def __getattr__(self, name):
            return lambda *a: None

        def on_step(self, row):
            if row["step"] == 2:
                llama_server.stop()

    store = Store(tmp_path / "saie.sqlite")
    p1 = OpenAIPartner(cfg)
    with pytest.raises(PartnerError, match="checkpoint saved at update 2"):
        train(cfg, ScriptedLearner(), p1, exs, store, tmp_path, StopServerAfterTwo())
    assert checkpoint.latest(tmp_path).name == "step-000002"
    llama_server.start()
    p2 = OpenAIPartner(cfg)
    s = train(cfg, ScriptedLearner(), p2, exs, store, tmp_path)
    assert s["status"] == "finished" and s["step"] == 4
    assert p1.requests_ok + p2.requests_ok == store.count("remark_cache") == 12
    store.close()


@pytest.mark.real
def test_real_server_names_its_model_when_none_is_given(llama_server):
    # no partner.model: the partner asks the server (GET /v1/models) and uses its one model
    cfg = config.build(
        overrides={
            "partner.backend": "openai",
            "partner.url": llama_server.url,
            "partner.max_tokens": 8,
            "partner.api_key_env": "",
        }
    )
    from saie_lite.backends.openai_http import served_model

    assert served_model(cfg.partner, print) == "smollm2"
