"""A run stopped part-way and resumed ends with the same weights as one that never stopped."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from safetensors.torch import load_file  # noqa: E402

from saie_lite import config  # noqa: E402
from saie_lite.backends.scripted import ScriptedPartner  # noqa: E402
from saie_lite.backends.torch_peft import TorchLearner  # noqa: E402
from saie_lite.store import Store  # noqa: E402
from saie_lite.tasks import gsm8k  # noqa: E402
from saie_lite.train import checkpoint  # noqa: E402
from saie_lite.train.loop import train  # noqa: E402


def cfg_for(model_dir, run_dir):
    return config.build(
        overrides={
            "learner.model": str(model_dir),
            "learner.max_new_tokens": 6,
            "learner.max_seq_len": 512,
            "learner.temperature": 0.8,  # sampling draws from torch's RNG ...
            "learner.lora_dropout": 0.1,  # ... and so does dropout: both must resume exactly
            "train.batch_size": 2,
            "train.micro_batch_size": 2,
            "train.save_every": 100,  # only the stop and the end write checkpoints
            "train.lr": 0.005,
            "method.warmup_fraction": 0.25,
            "run.dir": str(run_dir),
        }
    )


def run(cfg, run_dir, examples, stop=lambda: False):
    store = Store(run_dir / "saie.sqlite")
    try:
        return train(cfg, TorchLearner(cfg), ScriptedPartner(), examples, store, run_dir, stop=stop)
    finally:
        store.close()


def test_resumed_run_matches_uninterrupted(tiny_model_dir, tmp_path):
    examples = gsm8k.load("bundled")[0][:8]
    full, part = tmp_path / "full", tmp_path / "part"
    full.mkdir(), part.mkdir()
    a = run(cfg_for(tiny_model_dir, full), full, examples)
    assert a["status"] == "finished" and a["step"] == 4

    checks = {"n": 0}

    def stop():  # two checks per batch; stop after generating batch 3, before its update
        checks["n"] += 1
        return checks["n"] == 6

    b1 = run(cfg_for(tiny_model_dir, part), part, examples, stop)
    assert b1["status"] == "stopped" and b1["step"] == 2
    b2 = run(cfg_for(tiny_model_dir, part), part, examples)
    assert b2["status"] == "finished" and b2["step"] == 4

    wa = load_file(str(checkpoint.latest(full) / "adapter_model.safetensors"))
    wb = load_file(str(checkpoint.latest(part) / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and len(wa) > 0
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    # and the store of the resumed run holds the same turns as the uninterrupted one
    rows = []
    for d in (full, part):
        s = Store(d / "saie.sqlite")
        rows.append(
            s.db.execute("SELECT step, role, stance, text FROM turns ORDER BY step, id").fetchall()
        )
        s.close()
    assert rows[0] == rows[1]
