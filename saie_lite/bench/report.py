"""The bench report: machine and library versions, and the JSON + Markdown files."""

from __future__ import annotations

import json
import os
import platform
import resource
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from saie_lite.fsutil import atomic_write_text


def machine() -> dict:
    return {
        "system": platform.system(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        **cpu_kind(),
    }


# The flags that decide what a figure means on this CPU: bf16 matmul units (AMX,
# AVX512-BF16) make bf16 weights fast; without them float32 is, and AVX2 alone halves
# the float32 rate of AVX-512. The same VM has changed form between runs.
CPU_FLAGS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")


def cpu_kind(cpuinfo: str | None = None) -> dict:
    """The CPU's model name and kind from /proc/cpuinfo: ``amx_bf16``, ``avx512_bf16``,
    ``avx512`` or ``avx2`` (the best present), with the flags seen; ``unknown`` where
    there is no /proc/cpuinfo (macOS, Windows)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model, flags = platform.processor() or platform.machine(), set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() in ("flags", "Features") and not flags:
            flags = set(value.split())
    seen = [f for f in CPU_FLAGS if f in flags]
    kind = seen[0].replace("avx512f", "avx512") if seen else ("other" if flags else "unknown")
    return {"cpu_model": model, "cpu_kind": kind, "cpu_flags": seen}


def versions() -> dict:
    out = {}
    for pkg in (
        "saie-lite",
        "torch",
        "transformers",
        "peft",
        "trl",
        "llama-cpp-python",
        "mlx",
        "mlx-lm",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if platform.system() == "Darwin" else rss / 1024


def write_report(report: dict, out_dir: Path) -> None:
    res = report["results"]
    if "update" in res and "tokens_per_s" in res.get("trl", {}):
        res["update"]["ratio_over_trl_fp32"] = (
            res["update"]["float32"]["tokens_per_s"] / res["trl"]["tokens_per_s"]
        )
    report["peak_rss_mb"] = peak_rss_mb()
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "bench.json", json.dumps(report, indent=2))
    atomic_write_text(out_dir / "bench.md", markdown(report))


def _f(x, digits=1) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) else str(x)


def _split(run: dict) -> str:
    return " / ".join(_f(run[f"{k}_seconds_per_step"]) for k in ("generate", "remark", "update"))


def markdown(r: dict) -> str:
    m, v, res = r["machine"], r["versions"], r["results"]
    kind = m.get("cpu_kind", "-")  # beside the figures that depend on it
    lines = [
        f"Machine: {m['system']} {m['machine']}, {m['cpus']} CPUs, Python {m['python']}; "
        f"CPU {m.get('cpu_model', '-')}, kind {m.get('cpu_kind', '-')}; "
        + ", ".join(f"{k} {x}" for k, x in v.items() if x)
        + f"; peak RSS {r['peak_rss_mb']:.0f} MB",
        "",
        "Settings: " + ", ".join(f"{k}={x}" for k, x in r["settings"].items()),
        "",
        f"| measure (CPU {m.get('cpu_model', '-')}, kind {kind}) | value |",
        "|---|---|",
    ]
    row = lines.append
    if "saie" in res:
        sa = res["saie"]
        labels = {
            "saie": "SAIE",
            "saie_fast": "SAIE, fast path (snapshot every 4)",
            "saie_fast_q8": "SAIE, fast path + q8_0 partner",
            "saie_fast_f32": "SAIE, fast path, f32 snapshot + f32 partner",
            "saie_fast_bf16": "SAIE, fast path, bf16 snapshot + bf16 partner",
            "saie_fast_auto": "SAIE, fast path, snapshot and partner weights measured (auto)",
            "saie_fast_auto_per_batch": "same, lookahead off (answers and remarks batch by batch)",
            "saie_fast_auto_overlap": "same + overlap on (partner on 1 thread)",
            "saie_fast_adapter": "SAIE, fast path refreshed every update (f32 base + adapter)",
            "saie_fast_auto_adapter": "SAIE, refreshed every update (auto base + adapter, auto partner)",
            "saie_fast_auto_adapter4": "same, adapter refreshed every 4 updates",
        }
        for run, label in labels.items():
            if run in sa:
                row(f"| {label}: step split (s) generate / remark / update | {_split(sa[run])} |")
        row(f"| SFT examples per minute | {_f(sa['sft']['examples_per_minute'])} |")
        for run, label in labels.items():
            if run in sa:
                row(f"| {label}: examples per minute | {_f(sa[run]['examples_per_minute'])} |")
                row(
                    f"| {label} / SFT wall time per example (target <= 2.5x) | "
                    f"{_f(sa[f'ratio_{run}_over_sft'], 2)}x |"
                )
                if f"ratio_{run}_update_over_sft" in sa:
                    row(
                        f"| {label}: its update alone / SFT per example | "
                        f"{_f(sa[f'ratio_{run}_update_over_sft'], 2)}x |"
                    )
                if f"ratio_{run}_over_own_update" in sa:
                    row(
                        f"| {label} per example / its update alone (target <= 1.5x) | "
                        f"{_f(sa[f'ratio_{run}_over_own_update'], 2)}x |"
                    )
                if f"ratio_{run}_trained_tokens_over_sft" in sa:
                    row(
                        f"| {label} / SFT tokens of the trained sequences per example | "
                        f"{_f(sa[f'ratio_{run}_trained_tokens_over_sft'], 2)}x |"
                    )
        clipped = {
            k: v["context_policy_notes"]
            for k, v in sa.items()
            if isinstance(v, dict) and "context_policy_notes" in v
        }
        if clipped:
            row(
                "| context-policy notes (turns clipped or examples skipped) | "
                + ", ".join(f"{k} {v}" for k, v in clipped.items())
                + " |"
            )
    if "update" in res:
        u = res["update"]
        row(f"| update tokens/s, ours fp32 | {_f(u['float32']['tokens_per_s'])} |")
        reduced = u["bfloat16"].get("reduced")
        row(
            f"| update tokens/s, ours bf16 weights{f' ({reduced})' if reduced else ''} | "
            f"{_f(u['bfloat16']['tokens_per_s'])} |"
        )
        if "loss_bf16_vs_fp32" in u:
            la = u["loss_bf16_vs_fp32"]
            row(
                "| bf16 vs fp32 loss, first step (relative difference) | "
                f"{la['first_step_relative_difference']:.1e} (largest over "
                f"{len(la['float32_losses'])} steps {la['largest_relative_difference']:.1e}; "
                f"{la['sequences']} sequences) |"
            )
        if "dtype_auto_probe" in u:
            pr = u["dtype_auto_probe"]
            row(
                f"| `dtype: auto` probe: 512² matmul bf16 speed-up over fp32 -> choice | "
                f"{_f(pr['bf16_speedup'], 2)}x -> {pr['choice']} |"
            )
        row(
            f"| fp32 matmul peak (GFLOP/s) / bound (tokens/s at 4N FLOPs per token) | "
            f"{_f(u['matmul_peak_gflops_fp32'])} / {_f(u['matmul_bound_tokens_per_s_fp32'])} |"
        )
        row(
            "| ours fp32 / matmul bound (target >= 0.5) | "
            f"{_f(u['fraction_of_matmul_bound_fp32'], 2)} |"
        )
        if "ratio_over_trl_fp32" in u:
            row(
                f"| ours / TRL SFTTrainer, fp32 (target >= 1.5x) | {_f(u['ratio_over_trl_fp32'], 2)}x |"
            )
    if "trl" in res:
        t = res["trl"]
        row(
            f"| update tokens/s, TRL SFTTrainer fp32 | {_f(t.get('tokens_per_s', t.get('skipped')))} |"
        )
    if "mlx" in res:
        x = res["mlx"]
        row(
            "| MLX step time, ours / mlx_lm (target <= 1.1x) | "
            f"{_f(x.get('ratio_ours_over_mlx_lm', x.get('skipped')), 2)} |"
        )
    if "generate" in res:
        g = res["generate"]
        row(
            f"| learner generation tokens/s, ours (torch, batched; CPU {kind}) | "
            f"{_f(g['ours_tokens_per_s'])} |"
        )
        gp = g.get("generation_path_tokens_per_s")
        if gp:
            row(
                "| learner generation tokens/s, torch, early stop on: per-token check, "
                "PEFT's forward -> device check, adapter merged where exact, else added in "
                "place, head read contiguous, weights packed for oneDNN (on a CPU; "
                f"{gp['dtype']}, "
                f"{gp['merged_layers']} layers merged; CPU {kind}) | {_f(gp['before'])} -> "
                f"{_f(gp['after'])} ({_f(gp['ratio'], 2)}x; same answers: "
                f"{'yes' if gp['same_answers'] else 'NO'}) |"
            )
        if "fast_path_tokens_per_s" in g:
            row(
                f"| learner generation tokens/s, fast path ({g['fast_path_model']}) | "
                f"{_f(g['fast_path_tokens_per_s'])} |"
            )
        for quant in ("q4_0", "f32", "bf16", "f32_adapter"):
            if f"fast_path_{quant}_tokens_per_s" in g:
                row(
                    f"| learner generation tokens/s, fast path ({g[f'fast_path_{quant}_model']}) | "
                    f"{_f(g[f'fast_path_{quant}_tokens_per_s'])} |"
                )
        row(
            f"| llama.cpp tokens/s, single stream, {g.get('llama_cpp_model', '-')} | "
            f"{_f(g.get('llama_cpp_tokens_per_s', '-'))} |"
        )
        row(f"| ours (torch) / llama.cpp | {_f(g.get('ratio_ours_over_llama_cpp', '-'), 2)} |")
        row(
            "| fast path / llama.cpp (target >= 0.5x) | "
            f"{_f(g.get('ratio_fast_path_over_llama_cpp', '-'), 2)} |"
        )
        for quant, x in g.get("snapshot_refresh_lever", {}).items():
            row(
                f"| lever, {quant} snapshot refresh seconds: a new whole file -> tensors "
                f"rewritten in place | {_f(x['before'], 2)} -> {_f(x['after'], 2)} |"
            )
    if "levers" in res:
        lv = res["levers"]
        for key, label in (
            ("update_tokens_per_s", "update tokens/s: target-only logits + planned micro-batches"),
            (
                "shared_prefix_update_seconds_per_step",
                "SAIE update seconds per step: stance sequences share their prefix",
            ),
            (
                "blockwise_attention_update_seconds_per_step",
                "SAIE update seconds per step: packed rows' attention block by block",
            ),
            ("early_stop_generate_seconds", "answer batch seconds: early stop at the final answer"),
            ("remark_seconds_each", "seconds per remark: shared-prefix KV reuse"),
            ("batched_remark_seconds_each", "seconds per remark: batched decoding"),
            (
                "packed_prompts_remark_seconds_each",
                "seconds per remark, batched: a decode call per prompt -> prompts packed",
            ),
            (
                "refill_remark_seconds_each",
                "seconds per remark, batched: fixed groups of 8 -> ended places refilled",
            ),
            ("partner_q8_0_remark_seconds_each", "seconds per remark: partner Q4_1 -> q8_0"),
            ("partner_q4_0_remark_seconds_each", "seconds per remark: partner q8_0 -> q4_0"),
            ("partner_f32_remark_seconds_each", "seconds per remark: partner q8_0 -> f32"),
            ("partner_bf16_remark_seconds_each", "seconds per remark: partner f32 -> bf16"),
        ):
            x = lv.get(key)
            if isinstance(x, dict):
                row(
                    f"| lever, {label}: before -> after | {_f(x['before'], 2)} -> {_f(x['after'], 2)} |"
                )
        auto = lv.get("partner_weights_auto")
        if isinstance(auto, dict):
            timed = ", ".join(
                f"{q} {_f(auto[q], 2)}" for q in ("q4_1", "q8_0", "f32", "bf16") if q in auto
            )
            row(
                f"| partner.model embedded-auto: s per remark prompt -> choice | {timed} -> {auto['choice']} |"
            )
    if "cuda" in res:
        _cuda_rows(res["cuda"], row)
    return "\n".join(lines) + "\n"


def _cuda_rows(c: dict, row) -> None:
    row(f"| GPU | {c.get('gpu', '-')} |")
    for label, x in c.items():
        if not isinstance(x, dict) or label == "saie_vs_sft":
            continue
        if "error" in x:
            row(f"| {label} | failed: {x['error']} |")
            continue
        t = x.get("trl", {"skipped": "not run"})
        trl = t.get("tokens_per_s", t.get("skipped", t.get("error")))
        row(
            f"| {label}: update tokens/s ours / TRL SFTTrainer (target >= 1.5x) | "
            f"{_f(x['update']['tokens_per_s'])} / {_f(trl)} = "
            f"{_f(x.get('ratio_update_over_trl', '-'), 2)}x |"
        )
        if "update_cpu_planned" in x:
            row(
                f"| {label}: update tokens/s, micro-batches planned for a CPU -> for a GPU | "
                f"{_f(x['update_cpu_planned']['tokens_per_s'])} -> "
                f"{_f(x['update']['tokens_per_s'])} |"
            )
        row(
            f"| {label}: SAIE update s/step, unshared -> shared prefix | "
            f"{_f(x['saie_update_unshared']['seconds_per_step'], 3)} -> "
            f"{_f(x['saie_update_shared']['seconds_per_step'], 3)} |"
        )
        row(f"| {label}: batched generation tokens/s | {_f(x['generate_tokens_per_s'])} |")
        row(f"| {label}: peak GPU memory (GiB) | {_f(x.get('peak_gpu_memory_gb', '-'), 2)} |")
        row(
            f"| {label}: checkpoint save/load, export merge (s) | "
            f"{'ok' if x['export_merge_ok'] else 'no merged model'}, "
            f"{_f(x['export_merge_seconds'], 1)} |"
        )
    sv = c.get("saie_vs_sft")
    if not sv:
        return
    if "error" in sv:
        row(f"| SAIE vs SFT ({sv['shape']}, GPU learner, CPU partner) | failed: {sv['error']} |")
        return
    for run in [r for r in sv if r.startswith("ratio_")]:
        name = run[len("ratio_") : -len("_over_sft")]
        x = sv[name]
        split = " / ".join(
            _f(x.get(f"{k}_seconds_per_step", 0), 2) for k in ("generate", "remark", "update")
        )
        row(
            f"| SAIE vs SFT ({sv['shape']}, GPU learner, CPU partner): {name} per example / sft "
            f"(target <= 2x with overlap) | {_f(sv[run], 2)}x; generate / remark / update "
            f"s per step {split}; batches overlapped {x.get('overlapped_batches', 0)} |"
        )
    row(
        f"| SAIE vs SFT ({sv['shape']}): sft seconds per example | "
        f"{_f(sv['sft']['seconds_per_example'], 3)} |"
    )
