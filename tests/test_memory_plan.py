"""The memory plan: its arithmetic on a tiny model, the line before anything loads, the
refusal of a run that cannot fit, and the out-of-memory line."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from saie_lite import config as config_mod
from saie_lite.cli import app
from saie_lite.train import memory

pytest.importorskip("transformers")


def _cfg(**sets):
    return config_mod.build(None, {"learner.dtype": "float32", "learner.device": "cpu", **sets})


def test_shape_counts_every_weight_and_lora_factor_of_a_tiny_llama(tiny_model_dir):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model_dir)
    v, h, i, layers, kv = config.vocab_size, 64, 128, 2, 32  # 2 kv heads of 16
    s = memory.shape_of(config, _cfg())
    linear = h * h * 2 + h * kv * 2 + 3 * h * i  # q, o; k, v; gate, up, down
    assert s.n_linear == layers * linear
    assert s.n_params == v * h + layers * (linear + 2 * h) + h  # tied head: counted once
    r = 8
    lora = r * (2 * (h + h) + 2 * (h + kv) + 3 * (h + i))
    assert s.n_lora == layers * lora
    assert (s.n_layers, s.hidden, s.mlp, s.heads, s.kv_dim) == (layers, h, i, 4, kv)


def test_plan_adds_held_parts_and_only_the_largest_passing_one(tiny_model_dir):
    from transformers import AutoConfig

    cfg = _cfg(**{"method.mode": "sft", "train.micro_batch_size": 2, "train.batch_size": 2})
    s = memory.shape_of(AutoConfig.from_pretrained(tiny_model_dir), cfg)
    n = memory.Lengths(prompt=40, target=30, plain=[70, 100])
    f = memory.Facts("torch", "cpu", s, n, dtype_bytes=4.0, quantized=False)
    p = memory.plan(cfg, f, "train")
    assert p.parts["weights"][0] == s.n_params * 4
    assert p.parts["LoRA+AdamW"][0] == s.n_lora * 16  # weights, gradients, 2 AdamW states
    assert memory.passes(cfg, f) == [(2, 100)]  # both plain sequences in one pass
    tokens = 2 * 100
    per_layer = tokens * (memory.ACT_HIDDEN * 64 + memory.ACT_MLP * 128) * 4
    per_layer += 2 * 4 * 100 * 100 * memory.ACT_SCORES * 4  # CPU: scores materialised
    logits = 2 * 31 * s.vocab * 4 * memory.LOGIT_COPIES
    act = memory.STEP_WORKSPACE + 2 * per_layer + logits
    assert p.parts["activations"][0] == pytest.approx(act)
    held = memory.RUNTIME_HOST + s.n_params * 4 + s.n_lora * 16
    assert p.need("host") == pytest.approx(held + act)
    # gradient checkpointing keeps each layer's input and recomputes one layer at a time
    ck = memory.plan(_cfg(**{"method.mode": "sft", "learner.gradient_checkpointing": True,
                             "train.micro_batch_size": 2, "train.batch_size": 2}), f, "train")  # fmt: skip
    assert ck.parts["activations"][0] < p.parts["activations"][0]
    # a bf16 base loaded from float32 weights holds both copies while it loads
    half = memory.Facts("torch", "cpu", s, n, dtype_bytes=2.0, quantized=False)
    assert memory.plan(cfg, half, "train").parts["loading"][0] == s.n_params * 4


def test_generation_cache_is_batch_times_prompt_plus_new_tokens(tiny_model_dir):
    from transformers import AutoConfig

    cfg = _cfg(**{"eval.batch_size": 3, "eval.max_new_tokens": 50})
    s = memory.shape_of(AutoConfig.from_pretrained(tiny_model_dir), cfg)
    f = memory.Facts("torch", "cpu", s, memory.Lengths(40, 30, [70]), 4.0, False)
    kv = 2 * 3 * (40 + 50) * s.n_layers * s.kv_dim * 4
    logits = 3 * s.vocab * 4 * memory.LOGIT_COPIES
    assert memory.plan(cfg, f, "eval").parts["generation"][0] == kv + logits


def _train(tmp_path, monkeypatch, tiny_model_dir, free_gb, *extra):
    monkeypatch.setenv(memory.FREE_ENV, str(free_gb))
    monkeypatch.setenv(memory.DRY_RUN_ENV, "1")  # conftest turns the dry-run plan off
    args = ["train", "--model", str(tiny_model_dir), "--backend", "torch", "--mode", "sft",
            "--limit", "4", "--live", "plain", "--run-dir", str(tmp_path / "run"), *extra]  # fmt: skip
    return CliRunner().invoke(app, args)


def test_a_run_that_cannot_fit_is_refused_before_anything_loads(
    tmp_path, monkeypatch, tiny_model_dir
):
    r = _train(tmp_path, monkeypatch, tiny_model_dir, 0.001)
    assert r.exit_code == 2, r.output
    assert "memory: about" in r.output and "0.0 GB free" in r.output
    line = [x for x in r.output.splitlines() if x.startswith("error:")]
    # the change that saves the most here (its passes are one sequence each already)
    assert len(line) == 1 and "to fit, try --set learner.gradient_checkpointing=true" in line[0]
    assert "run.memory_check=warn" in line[0] and "Traceback" not in r.output
    assert not (tmp_path / "run").exists()  # refused before the run was written


def test_dry_run_says_the_plan_for_the_real_model_before_it_would_load(
    tmp_path, monkeypatch, tiny_model_dir
):
    r = _train(tmp_path, monkeypatch, tiny_model_dir, 0.001, "--dry-run")
    assert r.exit_code == 0, r.output
    out = r.output.splitlines()
    first = next(i for i, x in enumerate(out) if "memory: about" in x)
    header = next(i for i, x in enumerate(out) if x.startswith("saie-lite train:"))
    assert first < header  # said before the models (scripted here) load
    assert any("would not fit" in x and "a real run stops here" in x for x in out)


def test_memory_check_off_and_warn(tmp_path, monkeypatch, tiny_model_dir):
    r = _train(tmp_path, monkeypatch, tiny_model_dir, 0.001, "--dry-run",
               "--set", "run.memory_check=off")  # fmt: skip
    assert r.exit_code == 0 and "memory:" not in r.output
    bad = _train(tmp_path, monkeypatch, tiny_model_dir, 1, "--set", "run.memory_check=maybe")
    assert bad.exit_code == 2 and "run.memory_check: error | warn | off" in bad.output


def test_enough_memory_says_the_plan_and_goes_on(tmp_path, monkeypatch, tiny_model_dir):
    r = _train(tmp_path, monkeypatch, tiny_model_dir, 1000, "--dry-run")
    assert r.exit_code == 0 and "memory: about" in r.output and "1000.0 GB free" in r.output
    assert "would not fit" not in r.output and "is tight" not in r.output


def test_out_of_memory_during_training_is_one_line(tmp_path):
    torch = pytest.importorskip("torch")
    e = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    line = memory.out_of_memory_line(e, tmp_path)
    assert line.startswith("out of memory during training; no update was made yet")
    assert "train.micro_batch_size=1" in line
    assert memory.out_of_memory_line(ValueError("bad value"), tmp_path) is None


def test_the_gguf_header_reader_agrees_with_gguf_s_own():
    """The plan reads a partner's shape with its own header reader (GGUFReader takes 10 s
    and more on the embedded model's vocabulary); both must read the same facts."""
    gguf = pytest.importorskip("gguf")
    from saie_lite.gguf_header import read_header
    from saie_lite.paths import embedded_gguf

    try:
        path = embedded_gguf()
    except Exception:  # noqa: BLE001
        pytest.skip("the embedded model (demo extra) is not installed")
    ours, theirs = read_header(path), gguf.GGUFReader(str(path))
    assert ours.tensor_elements == sum(int(t.n_elements) for t in theirs.tensors)
    for key, fld in theirs.fields.items():
        if key.startswith("GGUF."):  # the reader's own entries for the file header
            continue
        if len(fld.types) == 1 and fld.types[0] not in (gguf.GGUFValueType.STRING,):
            assert ours.fields[key] == fld.parts[fld.data[0]][0], key
        elif fld.types[0] == gguf.GGUFValueType.ARRAY:
            assert ours.fields[key] == len(fld.data), key


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    from saie_lite.gguf_header import read_header

    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x01")  # ends inside the counts
    with pytest.raises(ValueError, match="ends early"):
        read_header(bad)
    bad.write_bytes(b"<html>")
    with pytest.raises(ValueError, match="not a GGUF"):
        read_header(bad)


def test_mlx_weights_are_counted_as_stored(tiny_model_dir):
    """The MLX learner loads weights as stored: 4-bit mlx-community files count 0.5 byte
    a weight, and a plan on MLX facts goes through (it once read a missing attribute)."""
    from transformers import AutoConfig

    cfg = _cfg()
    s = memory.shape_of(AutoConfig.from_pretrained(tiny_model_dir), cfg)
    f = memory.Facts("mlx", "mlx", s, memory.Lengths(40, 30, [70]), 4.0, False)
    assert memory.weight_bytes(f) == s.n_params * s.stored_bytes
    half = memory.Facts("mlx", "mlx", dataclasses.replace(s, stored_bytes=0.5),
                        memory.Lengths(40, 30, [70]), 4.0, False)  # fmt: skip
    assert memory.weight_bytes(half) == s.n_params * 0.5
    assert memory.plan(cfg, f, "train").need("host") > memory.plan(cfg, half, "train").need("host")


def test_critique_sequences_are_counted_in_a_discussion_update():
    # batch 4, both stances: 8 discussion sequences; critique_target adds one critique
    # sequence per remark and copy (weight 1.5: up to 2 copies each, 16 more)
    base = {"train.batch_size": 4, "method.mode": "saie"}
    assert memory.sequences_per_update(_cfg(**base), "saie") == 8
    on = _cfg(**base, **{"method.critique_target": True, "method.critique_weight": 1.5})
    assert memory.sequences_per_update(on, "saie") == 8 + 16
    one = _cfg(**base, **{"method.critique_target": True, "method.critique_weight": 1.0})
    assert memory.sequences_per_update(one, "saie") == 8 + 8
    # plain fine-tuning has no remarks to learn, whatever the setting says
    sft = _cfg(**{"train.batch_size": 4, "method.mode": "sft", "method.critique_target": True})
    assert memory.sequences_per_update(sft, "sft") == 4


def test_the_fast_path_snapshot_is_counted_at_its_weight_type(
    tiny_model_dir, tmp_path, monkeypatch
):
    from transformers import AutoConfig

    from saie_lite.backends import partner_weights as pw

    monkeypatch.setenv("SAIE_LITE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(pw.ENV, raising=False)
    over = {"method.mode": "saie", "learner.snapshot_every": 4, "learner.max_seq_len": 512}
    s = memory.shape_of(AutoConfig.from_pretrained(tiny_model_dir), _cfg(**over))
    n = memory.Lengths(prompt=40, target=30, plain=[70, 100])

    def snapshot_part(**sets):
        cfg = _cfg(**{**over, **sets})
        f = memory.Facts("torch", "cpu", s, n, 4.0, False, snapshot=memory.snapshot_facts(cfg))
        return f.snapshot, memory.plan(cfg, f, "train").parts.get("snapshot")

    kv = 2 * 4 * (512 + 192) * s.n_layers * s.kv_dim * 2.0
    scratch = memory.LLAMA_SCRATCH_TOKENS * s.vocab * 4.0
    quant, (size, pool) = snapshot_part(**{"learner.snapshot_quant": "bf16"})
    assert quant == "bf16" and pool == "host"
    assert size == pytest.approx(s.n_params * 2.0 + kv + scratch)
    assert snapshot_part(**{"learner.snapshot_quant": "q8_0"})[1][0] < size
    # auto before any measurement: the largest type, f32; then what the cache says
    assert snapshot_part(**{"learner.snapshot_quant": "auto"})[0] == "f32"
    path = tmp_path / "home" / "machine" / "partner-weights.json"
    path.parent.mkdir(parents=True)
    seconds = {"q4_1": 1.0, "q8_0": 0.6, "f32": 0.7, "bf16": 0.45}
    path.write_text(
        json.dumps({"machine": pw.machine_key(0), "seconds": seconds, "choice": "bf16"})
    )
    assert snapshot_part(**{"learner.snapshot_quant": "auto"})[0] == "bf16"
    monkeypatch.setenv(pw.ENV, "q4_1")
    assert snapshot_part(**{"learner.snapshot_quant": "auto"})[0] == "q8_0"
    # no snapshot: answers from the learner itself, or a plain run with no answers at all
    assert snapshot_part(**{"learner.snapshot_every": 0}) == (None, None)
    assert snapshot_part(**{"method.mode": "sft"}) == (None, None)
    writing = memory.plan(
        _cfg(**over),
        memory.Facts("torch", "cpu", s, n, 4.0, False, snapshot="q8_0"),
        "train",
    )
    assert writing.parts["snapshot writing"] == (s.n_params * 4.0, "host")
    assert "snapshot writing" in writing.passing
