"""`saie-lite bench` runs and writes a valid report on a tiny setting (no speed thresholds)."""

import json

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
    assert 0 < res["update"]["fraction_of_matmul_bound_fp32"] < 1
    levers = res["levers"]
    for key in (
        "update_tokens_per_s",
        "early_stop_generate_seconds",
        "remark_seconds_each",
        "batched_remark_seconds_each",
        "partner_q8_0_remark_seconds_each",
    ):
        assert levers[key]["before"] > 0 and levers[key]["after"] > 0, key
    assert ("tokens_per_s" in res["trl"]) or ("skipped" in res["trl"])
    assert report["versions"]["torch"] and report["peak_rss_mb"] > 0
    md = (out / "bench.md").read_text()
    assert "| update tokens/s, ours fp32 |" in md
    assert "| fast path / llama.cpp (target >= 0.5x) |" in md
    assert "| lever, seconds per remark: shared-prefix KV reuse: before -> after |" in md


def test_bench_rejects_unknown_part(tmp_path):
    r = CliRunner().invoke(app, ["bench", "--only", "update,warp", "--out", str(tmp_path)])
    assert r.exit_code == 2
    assert (
        r.output.strip()
        == "error: unknown bench part(s) warp; parts: saie, update, trl, mlx, generate, levers"
    )
