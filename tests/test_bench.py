"""`saie-lite bench` runs and writes a valid report on a tiny setting (no speed thresholds)."""

import json
import os

import pytest
from typer.testing import CliRunner

from saie_lite.cli import app

pytest.importorskip("torch")


def test_bench_tiny_report(tiny_model_dir, tmp_path):
    pytest.importorskip("llama_cpp")
    out = tmp_path / "bench"
    r = CliRunner().invoke(
        app,
        [
            "bench",
            "--model",
            str(tiny_model_dir),
            "--only",
            "update,trl,generate,levers",
            "--steps",
            "1",
            "--batch",
            "2",
            "--max-len",
            "384",
            "--new-tokens",
            "4",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    report = json.loads((out / "bench.json").read_text())
    res = report["results"]
    assert res["update"]["float32"]["tokens_per_s"] > 0
    assert res["update"]["bfloat16"]["tokens_per_s"] > 0
    assert (
        res["generate"]["ours_tokens_per_s"] > 0 and res["generate"]["llama_cpp_tokens_per_s"] > 0
    )
    assert res["generate"]["fast_path_tokens_per_s"] > 0
    assert res["generate"]["fast_path_q4_0_tokens_per_s"] > 0
    assert res["generate"]["fast_path_f32_tokens_per_s"] > 0
    assert res["generate"]["fast_path_f32_adapter_tokens_per_s"] > 0
    assert res["generate"]["fast_path_bf16_tokens_per_s"] > 0
    assert set(res["generate"]["snapshot_refresh_seconds"]) == {
        "q8_0",
        "q4_0",
        "f32",
        "bf16",
        "f32_adapter",
    }
    # merged kinds written here (not q4_0, llama.cpp's quantizer): whole file vs in place
    assert set(res["generate"]["snapshot_refresh_lever"]) == {"q8_0", "f32", "bf16"}
    assert 0 < res["update"]["fraction_of_matmul_bound_fp32"] < 1
    levers = res["levers"]
    for key in (
        "update_tokens_per_s",
        "early_stop_generate_seconds",
        "remark_seconds_each",
        "batched_remark_seconds_each",
        "packed_prompts_remark_seconds_each",
        "refill_remark_seconds_each",
        "partner_q8_0_remark_seconds_each",
        "partner_q4_0_remark_seconds_each",
        "partner_f32_remark_seconds_each",
        "partner_bf16_remark_seconds_each",
        "shared_prefix_update_seconds_per_step",
    ):
        assert levers[key]["before"] > 0 and levers[key]["after"] > 0, key
    # the blockwise attention lever exists for CPU learners only
    blockwise = levers.get("blockwise_attention_update_seconds_per_step")
    if levers["device"] == "cpu":
        assert blockwise["before"] > 0 and blockwise["after"] > 0
    else:
        assert blockwise is None
    _check_trl(res["trl"])
    assert report["versions"]["torch"] and report["peak_rss_mb"] > 0
    md = (out / "bench.md").read_text()
    assert "| update tokens/s, ours fp32 |" in md
    assert "| fast path / llama.cpp (target >= 0.5x) |" in md
    assert "| lever, seconds per remark: shared-prefix KV reuse: before -> after |" in md
    assert "SAIE update seconds per step: stance sequences share their prefix" in md
    if levers["device"] == "cpu":
        assert "packed rows' attention block by block: before -> after" in md


def test_bench_rejects_unknown_part(tmp_path):
    r = CliRunner().invoke(app, ["bench", "--only", "update,warp", "--out", str(tmp_path)])
    assert r.exit_code == 2
    assert (
        r.output.strip()
        == "error: unknown cpu bench part(s) warp; parts: saie, update, trl, mlx, generate, levers"
    )
    r = CliRunner().invoke(app, ["bench", "--only", "saie", "--modes", "saie_fast,warp"])
    assert r.exit_code == 2 and r.output.startswith(
        "error: unknown bench mode(s) warp; modes: sft,"
    )
    assert r.output.count("\n") == 1
    # --device cuda has its own parts (shapes and saie), checked before CUDA is looked for
    r = CliRunner().invoke(app, ["bench", "--device", "cuda", "--only", "update"])
    assert r.exit_code == 2
    assert r.output.strip() == (
        "error: unknown cuda bench part(s) update; "
        "parts: smollm2-135m, qwen2-0.5b, qwen2-1.5b, saie"
    )


def test_bench_settings_and_out_are_checked_before_measuring(tmp_path):
    r = CliRunner().invoke(app, ["bench", "--only", "update", "--steps", "0"])
    assert r.exit_code == 2 and r.output.strip() == "error: --steps must be >= 1, got 0"
    afile = tmp_path / "afile"
    afile.write_text("")
    r = CliRunner().invoke(app, ["bench", "--only", "update", "--out", str(afile)])
    assert r.exit_code == 2 and r.output.count("\n") == 1  # at once, not after measuring
    assert "bench: update" not in r.output and str(afile) in r.output


def _check_trl(part: dict) -> None:
    """TRL measured where it is installed; "skipped" only where it is not."""
    import importlib.util

    if importlib.util.find_spec("trl"):
        assert part.get("tokens_per_s", 0) > 0, part
    else:
        assert "skipped" in part


def test_bench_cuda_refused_in_one_line_without_a_gpu(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # same verdict with a GPU
    r = CliRunner().invoke(app, ["bench", "--device", "cuda", "--out", str(tmp_path)])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: bench --device cuda needs a CUDA GPU and torch sees none")
    assert not (tmp_path / "bench.json").exists()


def test_cuda_bench_shapes_are_the_real_sizes(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from saie_lite.bench.cuda import shape_config

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    sizes = {}
    for name in ("smollm2-135m", "qwen2-0.5b", "qwen2-1.5b"):
        with torch.device("meta"):  # shapes only, no memory
            model = AutoModelForCausalLM.from_config(shape_config(name, tok))
        sizes[name] = sum(p.numel() for p in model.parameters()) / 1e6
    assert sizes["smollm2-135m"] == pytest.approx(134.5, abs=0.5)
    assert sizes["qwen2-0.5b"] == pytest.approx(494.0, abs=1.0)
    assert sizes["qwen2-1.5b"] == pytest.approx(1543.7, abs=2.0)


def test_cuda_bench_builds_a_loadable_tiny_shape(tiny_model_dir, tmp_path):
    from saie_lite import config
    from saie_lite.backends.torch_peft import TorchLearner
    from saie_lite.bench.cuda import build_shape
    from saie_lite.bench.levers import stance_sequences

    model_dir = build_shape("tiny", tmp_path / "tiny", tiny_model_dir, dtype="float32")
    cfg = config.build(overrides={"learner.model": str(model_dir), "learner.backend": "torch"})
    learner = TorchLearner(cfg)
    assert learner.model.get_base_model().config.num_hidden_layers == 2
    assert learner.shares_prefix()
    stats = learner.train_step(stance_sequences(2))
    assert stats.n_sequences == 2 and stats.loss > 0
    assert len(learner.generate([[{"role": "user", "content": "Hi"}]], 3)) == 1


def test_cuda_bench_parts_run_end_to_end_on_the_cpu(tiny_model_dir, tmp_path):
    """The pieces ``bench --device cuda`` runs, on a tiny shape with device cpu: so the
    GPU run is never the first time they execute (the GPU-only lines are the sync and the
    peak-memory reading). Each side of the shape part runs in a process of its own."""
    pytest.importorskip("llama_cpp")
    from saie_lite.bench.cuda import _saie_cuda, _shape_part, build_shape
    from saie_lite.bench.parts import BenchSettings

    s = BenchSettings(examples=4, steps=1, batch=2, max_len=384, new_tokens=4)
    out, reports = {}, []
    _shape_part(s, "tiny", tmp_path, tiny_model_dir, out, lambda: reports.append(1), "cpu")
    # QLoRA needs CUDA: the child's one-line refusal is reported, and bf16 LoRA still runs
    assert "needs a CUDA GPU" in out["tiny qlora-4bit"]["error"]
    ours = out["tiny lora-bf16"]
    assert ours["generate_tokens_per_s"] > 0 and ours["update"]["tokens_per_s"] > 0
    assert ours["saie_update_shared"]["seconds_per_step"] > 0
    assert ours["export_merge_ok"]
    _check_trl(ours["trl"])
    assert ours["ratio_update_over_trl"] > 0
    assert len(reports) == 3  # the refusal, ours, ours + TRL: each rewrites the report
    assert not (tmp_path / "tiny").exists()  # the shape's model and checkpoints are removed
    model_dir = build_shape("tiny", tmp_path / "tiny", tiny_model_dir)
    saie = _saie_cuda(s, model_dir, tmp_path / "saie", device="cpu")
    for run in ("saie", "saie_fast", "saie_fast_overlap"):
        assert saie[f"ratio_{run}_over_sft"] > 0, run
    # 4 examples in batches of 4 is one update: nothing to prepare during an earlier one
    assert saie["saie_fast"]["overlapped_batches"] == 0
    for run in ("sft", "saie", "saie_fast"):
        assert saie[run]["context_policy_notes"] == 0, run
        assert saie[run]["trained_tokens_per_example"] > saie[run]["target_tokens_per_example"]


def test_a_fresh_process_returns_the_result_or_raises_the_error():
    """What ``in_fresh_process`` runs runs elsewhere: another process id, and a refusal
    there comes back as the same one-line error here."""
    from saie_lite.bench.parts import in_fresh_process
    from saie_lite.bench.run import choose_parts
    from saie_lite.errors import UserError

    assert in_fresh_process(os.getpid) != os.getpid()
    assert in_fresh_process(max, 3, 7) == 7
    with pytest.raises(UserError, match="unknown cpu bench part.s. nope"):
        in_fresh_process(choose_parts, "cpu", "nope")
    # an error that cannot be rebuilt here still says what it was
    with pytest.raises(RuntimeError, match="^Odd: 1 2$"):
        in_fresh_process(raise_odd)
    # a process that dies without answering: its exit code
    with pytest.raises(RuntimeError, match="without a result .exit code 3."):
        in_fresh_process(os._exit, 3)


class Odd(Exception):
    def __init__(self, a, b):  # pickles, but cannot be rebuilt from its args
        super().__init__(f"{a} {b}")


def raise_odd():
    raise Odd(1, 2)


def test_saie_part_trains_whole_discussions_and_counts_their_tokens(tiny_model_dir, tmp_path):
    """The SAIE-vs-SFT part trains discussions at the run default's length whatever the
    update part's cut, and reports what each mode trained per example."""
    from saie_lite.bench import parts

    s = parts.BenchSettings(examples=4, steps=1, batch=2, max_len=256, new_tokens=4)
    base = {
        "learner.model": str(tiny_model_dir),
        "learner.dtype": "float32",
        "partner.backend": "scripted",  # fixed remarks: every discussion is trained
    }
    runs = {
        "sft": {"method.mode": "sft"},
        "saie": {"method.mode": "saie"},
        "saie_unshared": {"method.mode": "saie", "train.share_prefix": False},
    }
    out = parts.bench_saie(s, tmp_path / "whole", runs, base)
    for run in runs:
        assert out[run]["context_policy_notes"] == 0, run
    sft, saie, unshared = out["sft"], out["saie"], out["saie_unshared"]
    # both stances train on the reference after their remark: twice the plain targets
    assert saie["target_tokens_per_example"] == 2 * sft["target_tokens_per_example"]
    assert unshared["target_tokens_per_example"] == saie["target_tokens_per_example"]
    # tokens of the trained sequences: packing computes the prefix once, but trains the
    # same sequences
    assert sft["trained_tokens_per_example"] < saie["trained_tokens_per_example"]
    assert saie["trained_tokens_per_example"] == unshared["trained_tokens_per_example"]
    assert out["ratio_saie_trained_tokens_over_sft"] == pytest.approx(
        saie["trained_tokens_per_example"] / sft["trained_tokens_per_example"]
    )
    from saie_lite.bench.report import markdown

    machine = {"system": "Linux", "machine": "x86_64", "cpus": 2, "python": "3"}
    report = {"machine": machine, "versions": {}, "settings": {}, "peak_rss_mb": 1.0}
    md = markdown({**report, "results": {"saie": out}})
    assert "| context-policy notes (turns clipped or examples skipped) | sft 0, saie 0" in md
    assert "| SAIE / SFT tokens of the trained sequences per example |" in md
    assert "| SAIE: its update alone / SFT per example |" in md
    # a whole SAIE example against its update alone: answers and remarks cost something
    own = out["ratio_saie_over_own_update"]
    assert own == pytest.approx(saie["seconds_per_example"] / saie["update_seconds_per_example"])
    assert own > 1.0
    assert f"| SAIE per example / its update alone (target <= 1.5x) | {own:.2f}x |" in md
    lv = {"partner_weights_auto": {"choice": "q8_0", "q4_1": 3.2, "q8_0": 1.8, "f32": 5.3}}
    md = markdown({**report, "results": {"levers": lv}})
    line = "| partner.model embedded-auto: s per remark prompt -> choice | "
    assert line + "q4_1 3.20, q8_0 1.80, f32 5.30 -> q8_0 |" in md
    # at the update part's cut the same discussions would be clipped: the count says so
    parts.DISCUSSION_MAX_LEN, keep = 0, parts.DISCUSSION_MAX_LEN
    try:
        cut = parts.bench_saie(s, tmp_path / "cut", {k: runs[k] for k in ("sft", "saie")}, base)
    finally:
        parts.DISCUSSION_MAX_LEN = keep
    assert cut["saie"]["context_policy_notes"] > 0
